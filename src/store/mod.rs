//! keyrelay's durable store: one SQLite database under the data dir
//! (`keyrelay.db`) holding the usage ledger, what clients and keys spent
//! per budget period, the client keys made at run time, and the pool's
//! state. It needs no server; WAL mode lets `keyrelay usage` and the
//! report route read while the proxy writes.
//!
//! With `ledger.url = "postgres://..."`, the ledger, the spend and the
//! runtime clients live in Postgres instead ([`pg`]), shared by replicas;
//! the pool's state stays in the local SQLite file.
//!
//! Migrations are the SQL files under `migrations/sqlite/`, applied in
//! order, each in one transaction, and counted in `PRAGMA user_version`.

pub mod clients;
mod handle;
pub mod ledger;
pub mod pg;
pub mod pool_state;
pub mod report;
pub mod retention;
pub mod spend;

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags};

pub use self::handle::{Store, StoreError, StoreResult};

/// The database's file name under the data dir.
pub const DB_FILE: &str = "keyrelay.db";

/// Each migration: the `user_version` it brings the database to, and its SQL.
const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("../../migrations/sqlite/0001_ledger_clients_state.sql"))];

/// Where the database of `data_dir` lives.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A count or a time as SQLite's signed integer (saturating; no real
/// value comes near).
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Opens (creating it and its directory if need be) the database at
/// `path` for writing, and brings its schema up to date.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        // A missing directory is reported by the open below, with the path.
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    // A crash loses at most the last transactions of an fsync interval;
    // a committed transaction is never half there (SQLite's WAL).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens the database at `path` read-only (reports, `keyrelay usage`);
/// it must exist, with a schema this build knows.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&conn)?;
    Ok(conn)
}

/// The ledger's database at `path`, read-only, for a report; `None` while
/// it is not made (or not migrated) yet: no rows.
pub fn open_ledger_for_reading(path: &Path) -> rusqlite::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = open_read_only(path)?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok((version > 0).then_some(conn))
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // Another connection writing (the ledger's batch) makes this one wait
    // a little rather than fail at once.
    conn.busy_timeout(std::time::Duration::from_secs(5))
}

/// Applies the migrations the database has not seen; returns its version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<u32> {
    let mut version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for &(to, sql) in MIGRATIONS {
        if version >= to {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        version = to;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(dir.path());
        let conn = open(&path).unwrap();
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);
        drop(conn);
        let mut again = open(&path).unwrap();
        assert_eq!(migrate(&mut again).unwrap(), version, "nothing left to apply");
        let tables: Vec<String> = again
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["clients", "ledger", "pool_state", "spend"]);
        let reader = open_read_only(&path).unwrap();
        assert!(reader.execute("DELETE FROM ledger", []).is_err(), "a reader cannot write");
    }
}
