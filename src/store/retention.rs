//! The ledger's retention (`ledger.retention_days`): rows older than the
//! cutoff go, and so does the spend of periods that ended before it. The
//! spend of current periods and every `total` stays, so budgets never
//! forget what was spent, whatever the retention.

use keyrelay_layers::budget::BudgetPeriod;
use rusqlite::{Connection, params};

use super::sql_int;

/// Rows deleted per statement: a long retention catching up never holds
/// the write lock for long (readers and the writer's batches go between).
const CHUNK: i64 = 10_000;

const DAY_MS: u64 = 86_400_000;

/// The first millisecond kept: `retention_days` before `now_ms`.
pub(crate) fn cutoff(now_ms: u64, retention_days: u32) -> u64 {
    now_ms.saturating_sub(u64::from(retention_days) * DAY_MS)
}

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows: usize,
    pub spend: usize,
}

/// Deletes ledger rows older than `retention_days` before `now_ms`, and
/// the spend of day, week and month periods that ended by then.
pub fn prune(conn: &Connection, now_ms: u64, retention_days: u32) -> rusqlite::Result<Pruned> {
    let cutoff = cutoff(now_ms, retention_days);
    let mut pruned = Pruned::default();
    let mut delete_rows = conn.prepare_cached(
        "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE unix_ms < ?1 ORDER BY unix_ms LIMIT ?2)",
    )?;
    loop {
        let n = delete_rows.execute(params![sql_int(cutoff), CHUNK])?;
        pruned.rows += n;
        if n < CHUNK as usize {
            break;
        }
    }
    let mut delete_spend = conn.prepare_cached("DELETE FROM spend WHERE period = ?1 AND period_start < ?2")?;
    for period in BudgetPeriod::ALL.into_iter().filter(|p| *p != BudgetPeriod::Total) {
        // A period that began before the one holding the cutoff has ended.
        pruned.spend += delete_spend.execute(params![period.as_str(), sql_int(period.start(cutoff))])?;
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use keyrelay_layers::ledger::LedgerRow;

    use super::*;
    use crate::store::{db_path, ledger::write_batch, open, spend};

    /// 2026-12-06T12:00:00Z, a Sunday.
    const NOON: u64 = 1_796_558_400_000;

    fn row(at: u64, cost: f64) -> LedgerRow {
        let mut row = LedgerRow::default();
        row.unix_ms = at;
        row.request_id = format!("req-{at}");
        row.route = "chat/completions";
        row.outcome = "completed";
        row.client = Some("ci-bot".to_owned());
        row.cost_usd = Some(cost);
        row
    }

    #[test]
    fn retention_deletes_old_rows_and_ended_periods_but_keeps_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&db_path(dir.path())).unwrap();
        let old = NOON - 100 * DAY_MS;
        let recent = NOON - 2 * DAY_MS; // Friday: this week and month
        write_batch(&mut conn, &[row(old, 1.0), row(recent, 2.0), row(NOON, 4.0)]).unwrap();

        let pruned = prune(&conn, NOON, 90).unwrap();
        assert_eq!(pruned.rows, 1, "only the row of 100 days ago");
        let left: Vec<i64> = conn
            .prepare("SELECT unix_ms FROM ledger ORDER BY unix_ms")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, [recent as i64, NOON as i64]);
        // The old row's day, week and month ended long before the cutoff.
        assert_eq!(pruned.spend, 3);
        let periods: Vec<(String, i64, f64)> = conn
            .prepare("SELECT period, period_start, usd FROM spend ORDER BY period, period_start")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let of = |period: &str| periods.iter().filter(|p| p.0 == period).map(|p| p.2).collect::<Vec<_>>();
        assert_eq!(of("total"), [7.0], "the total keeps what the deleted row spent");
        assert_eq!(of("month"), [6.0]);
        assert_eq!(of("week"), [6.0]);
        assert_eq!(of("day"), [2.0, 4.0], "days inside the retention stay");

        let current = spend::current(&conn, NOON).unwrap();
        assert_eq!(current.iter().find(|r| r.period == BudgetPeriod::Total).map(|r| r.usd), Some(7.0));

        // A short retention: yesterday's day is gone, this week's stays.
        let pruned = prune(&conn, NOON, 1).unwrap();
        assert_eq!(pruned, Pruned { rows: 1, spend: 1 });
        assert_eq!(prune(&conn, NOON, 1).unwrap(), Pruned::default(), "nothing left to do");
    }
}
