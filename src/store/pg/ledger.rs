//! The ledger's rows and their spend on Postgres: what
//! [`crate::store::ledger::write_batch`] and
//! [`crate::store::retention::prune`] do on SQLite, in the same shape (one
//! transaction per batch; retention in chunks).

use keyrelay_layers::{budget::BudgetPeriod, ledger::LedgerRow};
use postgres::{Client, types::ToSql};

use super::PgError;
use crate::store::{retention::Pruned, spend, sql_int};

const INSERT_ROW: &str = "INSERT INTO ledger (unix_ms, request_id, client, route, provider, model, key_id, status, \
     outcome, error_code, attempts, tokens_in, tokens_out, tokens_cached, cost_usd, unpriced, ttfb_ms, duration_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

const UPSERT_SPEND: &str = "INSERT INTO spend (kind, name, period, period_start, usd) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (kind, name, period, period_start) DO UPDATE SET usd = spend.usd + excluded.usd";

/// Writes `rows` and what they spent in one transaction.
pub fn write_batch(client: &mut Client, rows: &[LedgerRow]) -> Result<(), PgError> {
    let mut tx = client.transaction()?;
    let insert = tx.prepare(INSERT_ROW)?;
    for row in rows {
        let status = row.status.map(i32::from);
        let attempts = i32::try_from(row.attempts).unwrap_or(i32::MAX);
        let params: [&(dyn ToSql + Sync); 18] = [
            &sql_int(row.unix_ms),
            &row.request_id,
            &row.client,
            &row.route,
            &row.provider,
            &row.model,
            &row.key,
            &status,
            &row.outcome,
            &row.error_code,
            &attempts,
            &sql_int(row.tokens_in),
            &sql_int(row.tokens_out),
            &sql_int(row.tokens_cached),
            &row.cost_usd.filter(|c| c.is_finite()),
            &row.unpriced,
            &row.ttfb_ms.map(sql_int),
            &sql_int(row.duration_ms),
        ];
        tx.execute(&insert, &params)?;
    }
    let sums = spend::sums(rows);
    if !sums.is_empty() {
        let upsert = tx.prepare(UPSERT_SPEND)?;
        for ((kind, name, period, start), usd) in sums {
            tx.execute(&upsert, &[&kind, &name, &period, &sql_int(start), &usd])?;
        }
    }
    Ok(tx.commit()?)
}

/// Rows deleted per statement: a long retention catching up never holds
/// locks for long.
const CHUNK: i64 = 10_000;

/// The retention on Postgres; see [`crate::store::retention::prune`].
pub fn prune(client: &mut Client, now_ms: u64, retention_days: u32) -> Result<Pruned, PgError> {
    let cutoff = sql_int(crate::store::retention::cutoff(now_ms, retention_days));
    let mut pruned = Pruned::default();
    let delete_rows = client.prepare(
        "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE unix_ms < $1 ORDER BY unix_ms LIMIT $2)",
    )?;
    loop {
        let n = client.execute(&delete_rows, &[&cutoff, &CHUNK])?;
        pruned.rows += n as usize;
        if n < CHUNK as u64 {
            break;
        }
    }
    let delete_spend = client.prepare("DELETE FROM spend WHERE period = $1 AND period_start < $2")?;
    for period in BudgetPeriod::ALL.into_iter().filter(|p| *p != BudgetPeriod::Total) {
        let start = sql_int(period.start(cutoff as u64));
        pruned.spend += client.execute(&delete_spend, &[&period.as_str(), &start])? as usize;
    }
    Ok(pruned)
}
