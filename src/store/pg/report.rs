//! Usage reports from the ledger on Postgres: the statement
//! [`crate::store::report`] builds, in Postgres's dialect.

use postgres::Client;

use super::PgError;
use crate::store::report::{Dialect, Totals, UsageQuery, UsageRow, statement};

/// See [`crate::store::report::report`].
pub fn report(pg: &mut Client, query: &UsageQuery) -> Result<Vec<UsageRow>, PgError> {
    let width = query.group_by.len();
    let rows = pg.query(&statement(&query.group_by, Dialect::Postgres), &[&query.start_ms, &query.end_ms])?;
    let count = |row: &postgres::Row, i: usize| -> u64 {
        row.get::<_, Option<i64>>(width + i).and_then(|n| u64::try_from(n).ok()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for row in &rows {
        let totals = Totals {
            requests: count(row, 0),
            errors: count(row, 1),
            tokens_in: count(row, 2),
            tokens_out: count(row, 3),
            tokens_cached: count(row, 4),
            cost_usd: row.get(width + 5),
            unpriced_requests: count(row, 6),
        };
        // An aggregate without GROUP BY answers one row even over nothing.
        if totals.requests > 0 {
            let groups = (0..width).map(|i| row.get::<_, Option<String>>(i)).collect();
            out.push(UsageRow { groups, totals });
        }
    }
    Ok(out)
}
