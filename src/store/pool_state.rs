//! The key pool's state as one JSON document in the `pool_state` table
//! (a single row), as the state file held it.

use rusqlite::{Connection, OptionalExtension, params};

/// The saved document, if any.
pub fn load(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT snapshot FROM pool_state WHERE id = 1", [], |r| r.get(0)).optional()
}

/// Replaces the saved document.
pub fn save(conn: &Connection, snapshot: &str, saved_ms: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO pool_state (id, snapshot, saved_ms) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, saved_ms = excluded.saved_ms",
        params![snapshot, super::sql_int(saved_ms)],
    )?;
    Ok(())
}
