//! `[ledger]`: where the durable store is and how long the usage ledger
//! keeps its rows. `ledger.url` names the ledger's database: the SQLite
//! file of the data dir by default, or a Postgres database
//! (`postgres://user:password@host:5432/keyrelay`) that several replicas
//! share: the ledger, the spend and the runtime client keys live there,
//! and each replica's pool state stays in its own `keyrelay.db`. Its TLS
//! options (`sslmode`, `sslrootcert`) are [`super::ledger_tls`]'s.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    ConfigError,
    ledger_tls::{PostgresTls, SslMode},
};

/// Days of ledger rows kept by default.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Days of rows to keep (0: forever). Env `KEYRELAY_LEDGER__RETENTION_DAYS`.
    pub retention_days: u32,
    /// The database: absent for `<data_dir>/keyrelay.db`, else
    /// `sqlite://<path>` or a plain path (relative to the working dir), or
    /// `postgres://` / `postgresql://` for a shared Postgres database
    /// (TLS by `sslmode` and `sslrootcert`).
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
    /// The local SQLite database: the pool's state always, and the ledger,
    /// spend and runtime clients unless they are on Postgres.
    pub db_path: PathBuf,
    /// Where the ledger, spend and runtime clients live.
    pub backend: LedgerBackend,
    /// Days of ledger rows kept (0: forever).
    pub retention_days: u32,
}

/// The database of the ledger, the spend and the runtime client keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerBackend {
    /// The SQLite file at this path (the same as [`LedgerSettings::db_path`]).
    Sqlite(PathBuf),
    /// A Postgres database, shared by the replicas that name it.
    Postgres(PostgresUrl),
}

impl LedgerBackend {
    /// Where it is, for logs and notes: a path, or the URL without its
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => url.to_string(),
        }
    }
}

/// A Postgres connection URL. It may hold a password: [`Display`] and
/// [`Debug`] show it as `***`; only [`PostgresUrl::config`] sees it.
///
/// [`Display`]: fmt::Display
/// [`Debug`]: fmt::Debug
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// As written: what is shown (redacted).
    url: String,
    /// Without `sslmode` and `sslrootcert`: what the client parses.
    client_url: String,
    tls: PostgresTls,
}

impl PostgresUrl {
    /// Checks `url` (a `postgres://` or `postgresql://` URL): it must parse
    /// and name a host and a user; its `sslmode` and `sslrootcert` (see
    /// [`super::ledger_tls`]) must be ones keyrelay knows, and the CA file
    /// readable (relative to `working_dir`). The error never repeats the
    /// URL.
    pub fn parse(url: &str, working_dir: &Path) -> Result<Self, ConfigError> {
        let (tls, client_url) = super::ledger_tls::split(url, working_dir)?;
        let config: postgres::Config = client_url
            .parse()
            .map_err(|err| ConfigError(format!("ledger.url: not a Postgres URL keyrelay can use: {err}")))?;
        if config.get_hosts().is_empty() {
            return Err(ConfigError("ledger.url: the Postgres URL names no host (postgres://user@host/db)".to_owned()));
        }
        if config.get_user().is_none() {
            return Err(ConfigError("ledger.url: the Postgres URL names no user (postgres://user@host/db)".to_owned()));
        }
        Ok(Self { url: url.to_owned(), client_url, tls })
    }

    /// The connection's settings, password included, with the client's
    /// own `sslmode`: TLS required or preferred (checking the certificate
    /// is the connector's: see [`crate::store::pg::tls`]).
    pub fn config(&self) -> postgres::Config {
        let mut config: postgres::Config = self.client_url.parse().expect("checked by PostgresUrl::parse");
        config.ssl_mode(match self.tls.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
        });
        config
    }

    /// What TLS it asks for.
    pub fn tls(&self) -> &PostgresTls {
        &self.tls
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.url))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

/// `url` with the password of its user info, and any `password=` option,
/// as `***`.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let options: Vec<String> = query
                .split('&')
                .map(|pair| if pair.starts_with("password=") { "password=***".to_owned() } else { pair.to_owned() })
                .collect();
            format!("{path}?{}", options.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Where the databases are, from `url`, the working dir and the data dir.
pub fn settings(config: &LedgerConfig, working_dir: &Path, data_dir: &Path) -> Result<LedgerSettings, ConfigError> {
    let url = config.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let (db_path, backend) = match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            (crate::store::db_path(data_dir), LedgerBackend::Postgres(PostgresUrl::parse(url, working_dir)?))
        }
        None => (crate::store::db_path(data_dir), LedgerBackend::Sqlite(crate::store::db_path(data_dir))),
        Some(url) => {
            let path = working_dir.join(sqlite_path(url)?);
            (path.clone(), LedgerBackend::Sqlite(path))
        }
    };
    Ok(LedgerSettings { db_path, backend, retention_days: config.retention_days })
}

fn sqlite_path(url: &str) -> Result<&str, ConfigError> {
    let path = match url.split_once("://") {
        None => url,
        Some(("sqlite", path)) => path,
        Some((scheme, _)) => {
            return Err(ConfigError(format!(
                "ledger.url: `{scheme}://` is not a database keyrelay knows: give sqlite://<path>, a file path \
                 or postgres://user:password@host:5432/database"
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
    fn a_postgres_url_keeps_the_pool_state_in_the_data_dir_and_never_shows_its_password() {
        let settings = url(Some("postgres://kr:hunter2@db.internal:5433/keyrelay?sslmode=disable")).unwrap();
        assert_eq!(settings.db_path, Path::new("/work/data/keyrelay.db"), "each replica's own pool state");
        let LedgerBackend::Postgres(pg) = &settings.backend else { panic!("{settings:?}") };
        assert_eq!(pg.to_string(), "postgres://kr:***@db.internal:5433/keyrelay?sslmode=disable");
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(pg.config().get_password(), Some(&b"hunter2"[..]));
        assert!(matches!(url(Some("postgresql://kr@db/k")).unwrap().backend, LedgerBackend::Postgres(_)));
        let shown = redacted("postgres://kr@db/k?password=hunter2&application_name=x");
        assert_eq!(shown, "postgres://kr@db/k?password=***&application_name=x");
    }

    #[test]
    fn bad_postgres_and_other_urls_are_refused_clearly() {
        for bad in [
            "postgres://kr:hunter2@db/k?sslmode=allow",
            "postgres://kr:hunter2@db/k?bogus=1",
            "postgres:///k",
            "postgres://kr:hunter2@db/k?sslmode=verify-full&sslrootcert=/nowhere.pem",
        ] {
            let err = url(Some(bad)).unwrap_err().to_string();
            assert!(err.starts_with("ledger.url:"), "{err}");
            assert!(!err.contains("hunter2"), "the URL's password is not echoed: {err}");
        }
        let err = url(Some("mysql://db/k")).unwrap_err().to_string();
        assert!(err.contains("mysql://"), "{err}");
        assert!(url(Some("sqlite://")).is_err());
        assert!(url(Some("sqlite://k.db?mode=ro")).is_err());
    }

    #[test]
    fn the_client_gets_the_url_without_the_tls_options_and_tls_required_or_preferred() {
        use postgres::config::SslMode as ClientMode;
        let client_mode = |query: &str| {
            let settings = url(Some(&format!("postgres://kr:hunter2@db/k?{query}"))).unwrap();
            let LedgerBackend::Postgres(pg) = settings.backend else { panic!() };
            assert_eq!(pg.config().get_password(), Some(&b"hunter2"[..]));
            assert!(pg.to_string().ends_with(&format!("?{query}")), "shown as written: {pg}");
            (pg.tls().mode, pg.config().get_ssl_mode())
        };
        assert_eq!(client_mode("sslmode=disable"), (SslMode::Disable, ClientMode::Disable));
        assert_eq!(client_mode("application_name=x"), (SslMode::Prefer, ClientMode::Prefer));
        assert_eq!(client_mode("sslmode=require"), (SslMode::Require, ClientMode::Require));
        assert_eq!(client_mode("sslmode=verify-ca"), (SslMode::VerifyCa, ClientMode::Require));
        assert_eq!(client_mode("sslmode=verify-full"), (SslMode::VerifyFull, ClientMode::Require));
    }
}
