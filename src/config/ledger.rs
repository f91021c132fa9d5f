//! `[ledger]`: where the durable store is and how long the usage ledger
//! keeps its rows.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Days of ledger rows kept by default.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Days of rows to keep (0: forever). Env `KEYRELAY_LEDGER__RETENTION_DAYS`.
    pub retention_days: u32,
    /// The database: absent for `<data_dir>/keyrelay.db`, else
    /// `sqlite://<path>` or a plain path (relative to the working dir).
    pub url: Option<String>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { retention_days: DEFAULT_RETENTION_DAYS, url: None }
    }
}

/// The validated `[ledger]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerSettings {
    /// The SQLite database: the ledger, spend, runtime clients, pool state.
    pub db_path: PathBuf,
    /// Days of ledger rows kept (0: forever).
    pub retention_days: u32,
}

/// Where the database is, from `url`, the working dir and the data dir.
pub fn settings(config: &LedgerConfig, working_dir: &Path, data_dir: &Path) -> Result<LedgerSettings, ConfigError> {
    let db_path = match config.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        None => crate::store::db_path(data_dir),
        Some(url) => working_dir.join(sqlite_path(url)?),
    };
    Ok(LedgerSettings { db_path, retention_days: config.retention_days })
}

fn sqlite_path(url: &str) -> Result<&str, ConfigError> {
    let path = match url.split_once("://") {
        None => url,
        Some(("sqlite", path)) => path,
        Some(("postgres" | "postgresql", _)) => {
            return Err(ConfigError(
                "ledger.url: the Postgres ledger is not built yet (issue 16); leave ledger.url unset for the \
                 SQLite database in the data dir, or give sqlite://<path>"
                    .to_owned(),
            ));
        }
        Some((scheme, _)) => {
            return Err(ConfigError(format!(
                "ledger.url: `{scheme}://` is not a database keyrelay knows: give sqlite://<path> or a file path"
            )));
        }
    };
    if path.is_empty() || path.contains('?') {
        return Err(ConfigError(
            "ledger.url: sqlite:// needs a file path, without options (e.g. sqlite://data/keyrelay.db)".to_owned(),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(url: Option<&str>) -> Result<LedgerSettings, ConfigError> {
        let config = LedgerConfig { url: url.map(str::to_owned), ..LedgerConfig::default() };
        settings(&config, Path::new("/work"), Path::new("/work/data"))
    }

    #[test]
    fn the_database_is_in_the_data_dir_unless_a_sqlite_url_says_otherwise() {
        assert_eq!(url(None).unwrap().db_path, Path::new("/work/data/keyrelay.db"));
        assert_eq!(url(None).unwrap().retention_days, 90);
        assert_eq!(url(Some("  ")).unwrap().db_path, Path::new("/work/data/keyrelay.db"));
        assert_eq!(url(Some("sqlite:///var/lib/kr.db")).unwrap().db_path, Path::new("/var/lib/kr.db"));
        assert_eq!(url(Some("sqlite://db/kr.db")).unwrap().db_path, Path::new("/work/db/kr.db"));
        assert_eq!(url(Some("kr.db")).unwrap().db_path, Path::new("/work/kr.db"));
    }

    #[test]
    fn postgres_and_other_urls_are_refused_clearly() {
        let err = url(Some("postgres://user:pw@db/keyrelay")).unwrap_err().to_string();
        assert!(err.contains("Postgres ledger is not built yet") && err.contains("issue 16"), "{err}");
        assert!(!err.contains("pw"), "the URL's password is not echoed: {err}");
        assert!(url(Some("postgresql://db/k")).is_err());
        let err = url(Some("mysql://db/k")).unwrap_err().to_string();
        assert!(err.contains("mysql://"), "{err}");
        assert!(url(Some("sqlite://")).is_err());
        assert!(url(Some("sqlite://k.db?mode=ro")).is_err());
    }
}
