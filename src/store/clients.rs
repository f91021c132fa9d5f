//! Client keys made at run time (`POST /v1/admin/clients`), kept across
//! restarts. The key itself is never stored: its SHA-256 to recognise it,
//! and a short prefix to show.
//!
//! ```
//! use keyrelay::store::{self, clients::{self, StoredClient}};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let conn = store::open(&store::db_path(dir.path())).unwrap();
//! let bot = StoredClient {
//!     name: "ci-bot".to_owned(),
//!     key_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
//!     key_prefix: "kr-9f86".to_owned(),
//!     settings: r#"{"budget_usd":25.0}"#.to_owned(),
//!     created_ms: 1_765_022_400_000,
//!     expires_ms: None,
//! };
//! clients::insert(&conn, &bot).unwrap();
//! assert!(matches!(clients::insert(&conn, &bot), Err(clients::InsertError::NameTaken)));
//! assert_eq!(clients::load_all(&conn).unwrap(), [bot]);
//! assert!(clients::delete(&conn, "ci-bot").unwrap());
//! ```

use std::fmt;

use rusqlite::{Connection, OptionalExtension, params};

/// One runtime client as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredClient {
    pub name: String,
    /// The key's SHA-256, lowercase hex.
    pub key_sha256: String,
    /// The key's first characters, to tell keys apart in a list.
    pub key_prefix: String,
    /// The client's settings as a JSON object (models, rpm, tpm,
    /// max_parallel, budget_usd, budget_period).
    pub settings: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// Why a client was not stored.
#[derive(Debug)]
pub enum InsertError {
    /// A client of that name exists (answer 409).
    NameTaken,
    /// Another client has the same key (answer 409; never said to the
    /// caller in a way that confirms someone's key).
    KeyTaken,
    Db(rusqlite::Error),
    /// The shared (Postgres) store refused it or could not be reached.
    Shared(String),
    /// The blocking task did not finish (see [`super::Store`]).
    Task(String),
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTaken => f.write_str("a client of that name exists"),
            Self::KeyTaken => f.write_str("another client has the same key"),
            Self::Db(err) => write!(f, "cannot store the client: {err}"),
            Self::Shared(err) => write!(f, "cannot store the client: {err}"),
            Self::Task(err) => write!(f, "cannot store the client: {err}"),
        }
    }
}

impl std::error::Error for InsertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Db(err) => Some(err),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for InsertError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Db(err)
    }
}

/// Stores `client`; its name and its key must be new.
pub fn insert(conn: &Connection, client: &StoredClient) -> Result<(), InsertError> {
    let taken = |sql: &str, value: &str| -> rusqlite::Result<bool> {
        Ok(conn.query_row(sql, [value], |_| Ok(())).optional()?.is_some())
    };
    if taken("SELECT 1 FROM clients WHERE name = ?1", &client.name)? {
        return Err(InsertError::NameTaken);
    }
    if taken("SELECT 1 FROM clients WHERE key_sha256 = ?1", &client.key_sha256)? {
        return Err(InsertError::KeyTaken);
    }
    conn.execute(
        "INSERT INTO clients (name, key_sha256, key_prefix, settings, created_ms, expires_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            client.name,
            client.key_sha256,
            client.key_prefix,
            client.settings,
            client.created_ms,
            client.expires_ms
        ],
    )
    .map_err(|err| match &err {
        // Another connection got there between the checks and the insert.
        rusqlite::Error::SqliteFailure(e, Some(message)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            if message.contains("key_sha256") {
                InsertError::KeyTaken
            } else {
                InsertError::NameTaken
            }
        }
        _ => InsertError::Db(err),
    })?;
    Ok(())
}

/// Deletes the client `name`; whether there was one.
pub fn delete(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM clients WHERE name = ?1", [name])? > 0)
}

/// Every runtime client, by name.
pub fn load_all(conn: &Connection) -> rusqlite::Result<Vec<StoredClient>> {
    let mut select = conn
        .prepare("SELECT name, key_sha256, key_prefix, settings, created_ms, expires_ms FROM clients ORDER BY name")?;
    let rows = select.query_map([], |r| {
        Ok(StoredClient {
            name: r.get(0)?,
            key_sha256: r.get(1)?,
            key_prefix: r.get(2)?,
            settings: r.get(3)?,
            created_ms: r.get(4)?,
            expires_ms: r.get(5)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, hash: &str) -> StoredClient {
        StoredClient {
            name: name.to_owned(),
            key_sha256: hash.to_owned(),
            key_prefix: "kr-abcd".to_owned(),
            settings: "{}".to_owned(),
            created_ms: 1,
            expires_ms: Some(2),
        }
    }

    #[test]
    fn names_and_keys_are_unique_and_clients_outlive_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::store::db_path(dir.path());
        let conn = crate::store::open(&path).unwrap();
        insert(&conn, &client("a", "11")).unwrap();
        insert(&conn, &client("b", "22")).unwrap();
        assert!(matches!(insert(&conn, &client("a", "33")), Err(InsertError::NameTaken)));
        assert!(matches!(insert(&conn, &client("c", "22")), Err(InsertError::KeyTaken)));
        drop(conn);
        let conn = crate::store::open(&path).unwrap();
        assert_eq!(load_all(&conn).unwrap(), [client("a", "11"), client("b", "22")]);
        assert!(delete(&conn, "a").unwrap());
        assert!(!delete(&conn, "a").unwrap(), "already gone");
        insert(&conn, &client("a", "44")).unwrap();
        assert_eq!(load_all(&conn).unwrap().len(), 2);
    }
}
