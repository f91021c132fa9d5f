//! Client keys made at run time, as the store keeps them: the SHA-256 of
//! the key (never the key), a short prefix to recognise it by, and the
//! client's settings as JSON.

use rusqlite::{Connection, params};

/// One runtime client as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredClient {
    pub name: String,
    /// The key's SHA-256, in hex.
    pub key_sha256: String,
    /// The key's first characters, to tell keys apart in listings.
    pub key_prefix: String,
    /// The client's limits as JSON (`config::clients::ClientLimits`).
    pub settings: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// Stores a new client; a name or key already there is an error
/// (`rusqlite::Error::SqliteFailure` with a constraint violation).
pub fn insert(conn: &Connection, client: &StoredClient) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO clients (name, key_sha256, key_prefix, settings, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            client.name,
            client.key_sha256,
            client.key_prefix,
            client.settings,
            client.created_ms,
            client.expires_ms
        ],
    )?;
    Ok(())
}

/// Forgets client `name`; whether it was there.
pub fn delete(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM clients WHERE name = ?1", [name])? > 0)
}

/// Every stored client, by name.
pub fn load_all(conn: &Connection) -> rusqlite::Result<Vec<StoredClient>> {
    let mut statement = conn
        .prepare("SELECT name, key_sha256, key_prefix, settings, created_ms, expires_ms FROM clients ORDER BY name")?;
    let rows = statement.query_map([], |row| {
        Ok(StoredClient {
            name: row.get(0)?,
            key_sha256: row.get(1)?,
            key_prefix: row.get(2)?,
            settings: row.get(3)?,
            created_ms: row.get(4)?,
            expires_ms: row.get(5)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_stored_once_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&crate::store::db_path(dir.path())).unwrap();
        let client = StoredClient {
            name: "ci-bot".into(),
            key_sha256: "ab".repeat(32),
            key_prefix: "kr-1234".into(),
            settings: r#"{"rpm":60}"#.into(),
            created_ms: 1,
            expires_ms: None,
        };
        insert(&conn, &client).unwrap();
        assert!(insert(&conn, &client).is_err(), "a name is taken once");
        assert_eq!(load_all(&conn).unwrap(), [client]);
        assert!(delete(&conn, "ci-bot").unwrap());
        assert!(!delete(&conn, "ci-bot").unwrap());
    }
}
