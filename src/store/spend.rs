//! What each client and each upstream key spent per calendar period (the
//! `spend` table): added to by the ledger writer in the transaction of the
//! rows that spent it, read back at start so budgets survive restarts.
//!
//! ```
//! use keyrelay::store::{self, spend};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let conn = store::open(&store::db_path(dir.path())).unwrap();
//! let rows = spend::current(&conn, store::now_ms()).unwrap();
//! assert!(rows.is_empty(), "nothing spent yet");
//! ```

use std::collections::BTreeMap;

use keyrelay_layers::{
    budget::BudgetPeriod,
    ledger::{DEFAULT_CLIENT, LedgerRow},
};
use rusqlite::{Connection, params};

use super::sql_int;

/// Whose spend a row counts.
pub const CLIENT: &str = "client";
/// An upstream key's spend (by key id).
pub const KEY: &str = "key";

/// What one client or key spent in one period.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendRow {
    /// [`CLIENT`] or [`KEY`].
    pub kind: String,
    /// The client's name or the key's id.
    pub name: String,
    pub period: BudgetPeriod,
    /// When the period began, in ms since the Unix epoch (0 for `total`).
    pub period_start: u64,
    pub usd: f64,
}

/// (kind, name, period, period_start)
pub(crate) type SpendKey = (&'static str, String, &'static str, u64);

/// What `rows` spent, summed per client or key, period and period start.
pub(crate) fn sums(rows: &[LedgerRow]) -> BTreeMap<SpendKey, f64> {
    let mut sums = BTreeMap::new();
    for row in rows {
        let Some(cost) = row.cost_usd.filter(|c| c.is_finite() && *c > 0.0) else { continue };
        let client = row.client.clone().unwrap_or_else(|| DEFAULT_CLIENT.to_owned());
        let whose = std::iter::once((CLIENT, client)).chain(row.key.clone().map(|key| (KEY, key)));
        for (kind, name) in whose {
            for period in BudgetPeriod::ALL {
                *sums.entry((kind, name.clone(), period.as_str(), period.start(row.unix_ms))).or_default() += cost;
            }
        }
    }
    sums
}

const UPSERT: &str = "INSERT INTO spend (kind, name, period, period_start, usd) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (kind, name, period, period_start) DO UPDATE SET usd = usd + excluded.usd";

/// Adds what `rows` spent (one upsert per client or key and period), in
/// the caller's transaction.
pub fn add(conn: &Connection, rows: &[LedgerRow]) -> rusqlite::Result<()> {
    let sums = sums(rows);
    if sums.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(UPSERT)?;
    for ((kind, name, period, start), usd) in sums {
        upsert.execute(params![kind, name, period, sql_int(start), usd])?;
    }
    Ok(())
}

/// The spend of the periods that hold `now_ms` (and every `total`), to
/// restore budget meters from.
pub fn current(conn: &Connection, now_ms: u64) -> rusqlite::Result<Vec<SpendRow>> {
    let mut select = conn.prepare_cached(
        "SELECT kind, name, usd FROM spend WHERE period = ?1 AND period_start = ?2 ORDER BY kind, name",
    )?;
    let mut out = Vec::new();
    for period in BudgetPeriod::ALL {
        let start = period.start(now_ms);
        let rows = select.query_map(params![period.as_str(), sql_int(start)], |r| {
            Ok(SpendRow { kind: r.get(0)?, name: r.get(1)?, period, period_start: start, usd: r.get(2)? })
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    /// 2026-12-06T12:00:00Z, a Sunday.
    const NOON: u64 = 1_796_558_400_000;

    fn row(at: u64, client: Option<&str>, key: Option<&str>, cost: Option<f64>) -> LedgerRow {
        let mut row = LedgerRow::default();
        row.unix_ms = at;
        row.client = client.map(str::to_owned);
        row.key = key.map(str::to_owned);
        row.cost_usd = cost;
        row
    }

    fn usd(rows: &[SpendRow], kind: &str, name: &str, period: BudgetPeriod) -> Option<f64> {
        rows.iter().find(|r| r.kind == kind && r.name == name && r.period == period).map(|r| r.usd)
    }

    #[test]
    fn rows_add_to_their_client_and_key_in_every_period_and_read_back_current() {
        assert_eq!(BudgetPeriod::Day.start(NOON), NOON - 12 * 3_600_000, "the constant is noon");
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::open(&super::super::db_path(dir.path())).unwrap();
        let batch = [
            row(NOON, Some("ci-bot"), Some("openai:1111"), Some(0.25)),
            row(NOON + 1, Some("ci-bot"), Some("openai:1111"), Some(0.5)),
            row(NOON, None, Some("openai:2222"), Some(1.0)),
            row(NOON, Some("ci-bot"), None, None), // unpriced: no spend
            row(NOON - DAY, Some("ci-bot"), Some("openai:1111"), Some(2.0)), // yesterday
        ];
        let tx = conn.transaction().unwrap();
        add(&tx, &batch).unwrap();
        tx.commit().unwrap();
        let upserts: i64 = conn.query_row("SELECT COUNT(*) FROM spend", [], |r| r.get(0)).unwrap();
        // ci-bot, openai:1111: today, yesterday, week, month, total; the
        // default client and openai:2222: 4 each.
        assert_eq!(upserts, 5 + 5 + 4 + 4);

        let now = current(&conn, NOON + 60_000).unwrap();
        let close = |got: Option<f64>, want: f64| assert!((got.unwrap() - want).abs() < 1e-9, "{got:?} != {want}");
        close(usd(&now, CLIENT, "ci-bot", BudgetPeriod::Day), 0.75);
        close(usd(&now, CLIENT, "ci-bot", BudgetPeriod::Week), 2.75);
        close(usd(&now, CLIENT, "ci-bot", BudgetPeriod::Total), 2.75);
        close(usd(&now, KEY, "openai:1111", BudgetPeriod::Month), 2.75);
        close(usd(&now, CLIENT, DEFAULT_CLIENT, BudgetPeriod::Day), 1.0);
        close(usd(&now, KEY, "openai:2222", BudgetPeriod::Total), 1.0);
        let tomorrow = current(&conn, NOON + DAY).unwrap();
        assert_eq!(usd(&tomorrow, CLIENT, "ci-bot", BudgetPeriod::Day), None, "a new day");
        close(usd(&tomorrow, CLIENT, "ci-bot", BudgetPeriod::Total), 2.75);

        // A second batch adds to the same rows.
        let tx = conn.transaction().unwrap();
        add(&tx, &[row(NOON + 2, Some("ci-bot"), None, Some(0.25))]).unwrap();
        tx.commit().unwrap();
        close(usd(&current(&conn, NOON).unwrap(), CLIENT, "ci-bot", BudgetPeriod::Day), 1.0);
    }
}
