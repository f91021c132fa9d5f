//! Reading keyrelay's database (`<data dir>/keyrelay.db`) the way an
//! operator's tools would: read-only, while or after the proxy runs.

use std::path::Path;

use keyrelay::store;
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};

/// The database of `data_dir`, read-only.
pub fn open(data_dir: &Path) -> Connection {
    let path = store::db_path(data_dir);
    store::open_read_only(&path).unwrap_or_else(|err| panic!("open {}: {err}", path.display()))
}

/// The pool's saved state document, if any.
pub fn pool_state(data_dir: &Path) -> Option<String> {
    if !store::db_path(data_dir).exists() {
        return None;
    }
    open(data_dir).query_row("SELECT snapshot FROM pool_state WHERE id = 1", [], |r| r.get(0)).optional().unwrap()
}

/// Every ledger row, oldest first, as JSON objects keyed by column.
pub fn ledger_rows(data_dir: &Path) -> Vec<Value> {
    rows(&open(data_dir), "SELECT * FROM ledger ORDER BY id")
}

/// Every row `sql` selects, as JSON objects keyed by column.
pub fn rows(conn: &Connection, sql: &str) -> Vec<Value> {
    let mut select = conn.prepare(sql).unwrap_or_else(|err| panic!("{sql}: {err}"));
    let names: Vec<String> = select.column_names().map(str::to_owned).collect();
    let rows = select
        .query_map([], |row| {
            let mut object = Map::new();
            for (i, name) in names.iter().enumerate() {
                let value = match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => Value::from(n),
                    rusqlite::types::ValueRef::Real(x) => Value::from(x),
                    rusqlite::types::ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                    rusqlite::types::ValueRef::Blob(b) => Value::from(b.to_vec()),
                };
                object.insert(name.clone(), value);
            }
            Ok(Value::Object(object))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    store::now_ms() as i64
}
