//! `GET /v1/ui/recent`: the ledger's last rows, newest first.

use serde::Serialize;

use super::ReadError;
use crate::{config::ledger::LedgerBackend, store};

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recent {
    pub requests: Vec<RecentRow>,
}

/// One finished request, as the ledger has it (no content, no secret).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentRow {
    pub unix_ms: i64,
    pub request_id: String,
    pub client: String,
    pub route: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub key: Option<String>,
    pub status: Option<i64>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub attempts: i64,
    pub duration_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: Option<f64>,
}

const COLUMNS: &str = "unix_ms, request_id, COALESCE(client, 'default'), route, provider, model, key_id, status, \
     outcome, error_code, attempts, duration_ms, ttfb_ms, tokens_in, tokens_out, cost_usd";

impl Recent {
    /// The last `limit` requests.
    pub fn read(ledger: &LedgerBackend, limit: u32) -> Result<Self, ReadError> {
        let requests = match ledger {
            LedgerBackend::Sqlite(path) => {
                let Some(conn) = store::open_ledger_for_reading(path)? else {
                    return Ok(Self { requests: Vec::new() });
                };
                let sql = format!("SELECT {COLUMNS} FROM ledger ORDER BY unix_ms DESC, id DESC LIMIT ?1");
                let mut stmt = conn.prepare(&sql)?;
                let rows = stmt.query_map([limit], |row| {
                    Ok(RecentRow {
                        unix_ms: row.get(0)?,
                        request_id: row.get(1)?,
                        client: row.get(2)?,
                        route: row.get(3)?,
                        provider: row.get(4)?,
                        model: row.get(5)?,
                        key: row.get(6)?,
                        status: row.get(7)?,
                        outcome: row.get(8)?,
                        error_code: row.get(9)?,
                        attempts: row.get(10)?,
                        duration_ms: row.get(11)?,
                        ttfb_ms: row.get(12)?,
                        tokens_in: row.get(13)?,
                        tokens_out: row.get(14)?,
                        cost_usd: row.get(15)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            }
            LedgerBackend::Postgres(url) => {
                let mut client = store::pg::connect(url)?;
                let sql = format!("SELECT {COLUMNS} FROM ledger ORDER BY unix_ms DESC, id DESC LIMIT $1");
                let rows = client.query(&sql, &[&i64::from(limit)])?;
                rows.iter()
                    .map(|row| RecentRow {
                        unix_ms: row.get(0),
                        request_id: row.get(1),
                        client: row.get(2),
                        route: row.get(3),
                        provider: row.get(4),
                        model: row.get(5),
                        key: row.get(6),
                        status: row.get::<_, Option<i32>>(7).map(i64::from),
                        outcome: row.get(8),
                        error_code: row.get(9),
                        attempts: i64::from(row.get::<_, i32>(10)),
                        duration_ms: row.get(11),
                        ttfb_ms: row.get(12),
                        tokens_in: row.get(13),
                        tokens_out: row.get(14),
                        cost_usd: row.get(15),
                    })
                    .collect()
            }
        };
        Ok(Self { requests })
    }
}
