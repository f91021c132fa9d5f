//! The usage ledger's writer: the request path hands each finished request
//! to a bounded queue ([`LedgerQueue`], never waits; a full queue drops the
//! row and counts it in `keyrelay_ledger_rows_dropped_total`), and one
//! thread of its own ([`LedgerWriter`]) writes the rows in batches, each in
//! one transaction with what they add to the `spend` table. So a crash
//! leaves whole batches or none: the spend always equals the rows' costs.
//!
//! The thread also applies the retention (`ledger.retention_days`): at
//! start and about hourly it deletes older rows and the spend of periods
//! that ended before the cutoff (never the `total`).
//!
//! The database is the local SQLite file or a shared Postgres
//! ([`LedgerDb`]); the queue, the batches and their transactions are the
//! same for both.
//!
//! ```no_run
//! use keyrelay::store::{self, ledger};
//! use keyrelay_layers::ledger::{LedgerRow, LedgerSink};
//!
//! # async fn run() -> rusqlite::Result<()> {
//! let conn = store::open(std::path::Path::new("data/keyrelay.db"))?;
//! let (queue, writer) = ledger::start(conn, ledger::QUEUE_CAPACITY, 90);
//! queue.record(LedgerRow::default()); // returns at once
//! writer.finish().await; // what was queued is committed
//! # Ok(()) }
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use keyrelay_layers::{
    ledger::{LedgerRow, LedgerSink},
    metrics::{LEDGER_DROPPED, LEDGER_ROWS},
};
use rusqlite::{Connection, params};

use super::{
    pg::{self, Reconnecting},
    retention, spend, sql_int,
};

/// The database the writer writes to.
#[derive(Debug)]
pub enum LedgerDb {
    /// Its own connection to the SQLite file.
    Sqlite(Connection),
    /// Its own connection to the shared Postgres (reconnected when lost:
    /// the batches meanwhile are dropped and counted, like refused ones).
    Postgres(Box<Reconnecting>),
}

impl From<Connection> for LedgerDb {
    fn from(conn: Connection) -> Self {
        Self::Sqlite(conn)
    }
}

type DbError = Box<dyn std::error::Error + Send + Sync>;

impl LedgerDb {
    fn write_batch(&mut self, rows: &[LedgerRow]) -> Result<(), DbError> {
        match self {
            Self::Sqlite(conn) => Ok(write_batch(conn, rows)?),
            Self::Postgres(pg) => Ok(pg.with(|client| pg::ledger::write_batch(client, rows))?),
        }
    }

    fn prune(&mut self, now_ms: u64, retention_days: u32) -> Result<retention::Pruned, DbError> {
        match self {
            Self::Sqlite(conn) => Ok(retention::prune(conn, now_ms, retention_days)?),
            Self::Postgres(pg) => Ok(pg.with(|client| pg::ledger::prune(client, now_ms, retention_days))?),
        }
    }
}

/// How many finished requests may wait for the writer: a few seconds of a
/// busy proxy, a couple of MB at most.
pub const QUEUE_CAPACITY: usize = 8192;

/// The most rows one transaction writes.
pub const MAX_BATCH: usize = 512;

/// How long the first row of a batch waits for company: fewer, larger
/// transactions under a trickle of requests.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often the retention runs (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

enum Message {
    Row(Box<LedgerRow>),
    /// The server drained: write what is queued and stop.
    Finish,
}

/// The request path's end of the queue: [`LedgerSink::record`] never
/// waits.
#[derive(Clone, Debug)]
pub struct LedgerQueue {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl LedgerSink for LedgerQueue {
    fn record(&self, row: LedgerRow) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Message::Row(Box::new(row)))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(LEDGER_DROPPED).increment(1);
        }
    }
}

impl LedgerQueue {
    /// Rows lost: refused by this queue (full, or the writer gone) or by
    /// the database.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Row(_) => "Row",
            Self::Finish => "Finish",
        })
    }
}

/// The writer thread; [`finish`](Self::finish) it when the server drained.
/// Dropped unfinished, the thread still ends once every queue end is gone.
#[derive(Debug)]
pub struct LedgerWriter {
    tx: SyncSender<Message>,
    thread: JoinHandle<()>,
}

impl LedgerWriter {
    /// Lets the writer commit what is queued, and waits for its thread.
    pub async fn finish(self) {
        if let Err(err) = tokio::task::spawn_blocking(move || self.finish_blocking()).await {
            tracing::warn!(error = %err, "the ledger writer failed");
        }
    }

    /// [`finish`](Self::finish), for a thread that may block.
    pub fn finish_blocking(self) {
        // Waits for room if the queue is full: the writer is emptying it.
        let _ = self.tx.send(Message::Finish);
        if self.thread.join().is_err() {
            tracing::warn!("the ledger writer panicked");
        }
    }
}

/// A queue of `capacity` rows and the thread that writes them into `db`
/// (a SQLite [`Connection`] or a [`LedgerDb`]), keeping `retention_days`
/// of rows (0: all).
pub fn start(db: impl Into<LedgerDb>, capacity: usize, retention_days: u32) -> (LedgerQueue, LedgerWriter) {
    let (queue, rx) = channel(capacity);
    let dropped = queue.dropped.clone();
    let writer = Writer { db: db.into(), rx, dropped, retention_days, next_prune: now() };
    let thread = std::thread::Builder::new()
        .name("keyrelay-ledger".to_owned())
        .spawn(move || writer.run())
        .expect("the OS starts a thread");
    (queue.clone(), LedgerWriter { tx: queue.tx, thread })
}

fn channel(capacity: usize) -> (LedgerQueue, Receiver<Message>) {
    let (tx, rx) = sync_channel(capacity.max(1));
    (LedgerQueue { tx, dropped: Arc::default() }, rx)
}

struct Writer {
    db: LedgerDb,
    rx: Receiver<Message>,
    /// Shared with the queue: [`LedgerQueue::dropped`] counts both.
    dropped: Arc<AtomicU64>,
    retention_days: u32,
    next_prune: Instant,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut open = true;
        while open {
            self.prune_when_due();
            match self.rx.recv_timeout(self.next_prune.saturating_duration_since(now())) {
                Ok(Message::Row(row)) => batch.push(*row),
                Ok(Message::Finish) | Err(RecvTimeoutError::Disconnected) => open = false,
                Err(RecvTimeoutError::Timeout) => continue,
            }
            let deadline = now() + BATCH_WINDOW;
            while open && batch.len() < MAX_BATCH {
                match self.rx.recv_timeout(deadline.saturating_duration_since(now())) {
                    Ok(Message::Row(row)) => batch.push(*row),
                    Ok(Message::Finish) | Err(RecvTimeoutError::Disconnected) => open = false,
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            if !open {
                // What was queued before the end (and any straggler).
                while let Ok(message) = self.rx.try_recv() {
                    if let Message::Row(row) = message {
                        batch.push(*row);
                        if batch.len() == MAX_BATCH {
                            self.write(&mut batch);
                        }
                    }
                }
            }
            self.write(&mut batch);
        }
    }

    /// Writes and empties `batch`; a batch the database refuses is counted
    /// as dropped, and the writer goes on.
    fn write(&mut self, batch: &mut Vec<LedgerRow>) {
        if batch.is_empty() {
            return;
        }
        match self.db.write_batch(batch) {
            Ok(()) => metrics::counter!(LEDGER_ROWS).increment(batch.len() as u64),
            Err(err) => {
                tracing::warn!(rows = batch.len(), error = %err, "cannot write usage ledger rows; dropped");
                self.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!(LEDGER_DROPPED).increment(batch.len() as u64);
            }
        }
        batch.clear();
    }

    fn prune_when_due(&mut self) {
        let at = now();
        if at < self.next_prune {
            return;
        }
        self.next_prune = at + PRUNE_EVERY;
        if self.retention_days == 0 {
            return;
        }
        match self.db.prune(super::now_ms(), self.retention_days) {
            Ok(pruned) if pruned.rows + pruned.spend > 0 => {
                tracing::info!(rows = pruned.rows, spend = pruned.spend, "usage ledger retention applied");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot apply the usage ledger's retention"),
        }
    }
}

/// The writer's clock. It is a std thread waiting on a std channel with
/// real timeouts, so tokio's (pausable) clock would only disagree with them.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const INSERT_ROW: &str = "INSERT INTO ledger (unix_ms, request_id, client, route, provider, model, key_id, status, \
     outcome, error_code, attempts, tokens_in, tokens_out, tokens_cached, cost_usd, unpriced, ttfb_ms, duration_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// Writes `rows` and what they spent in one transaction.
pub fn write_batch(conn: &mut Connection, rows: &[LedgerRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT_ROW)?;
        for row in rows {
            insert.execute(params![
                sql_int(row.unix_ms),
                row.request_id,
                row.client,
                row.route,
                row.provider,
                row.model,
                row.key,
                row.status,
                row.outcome,
                row.error_code,
                row.attempts,
                sql_int(row.tokens_in),
                sql_int(row.tokens_out),
                sql_int(row.tokens_cached),
                row.cost_usd.filter(|c| c.is_finite()),
                row.unpriced,
                row.ttfb_ms.map(sql_int),
                sql_int(row.duration_ms),
            ])?;
        }
        spend::add(&tx, rows)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> LedgerRow {
        let mut row = LedgerRow::default();
        row.unix_ms = super::super::now_ms();
        row.request_id = id.to_owned();
        row.route = "chat/completions";
        row.outcome = "completed";
        row
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_full_queue_drops_rows_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = super::super::db_path(dir.path());
        let (queue, rx) = channel(2);
        // Nobody reads yet: the third row on finds the queue full.
        for i in 0..5 {
            queue.record(row(&format!("req-{i}")));
        }
        assert_eq!(queue.dropped(), 3);
        let conn = super::super::open(&path).unwrap();
        let writer =
            Writer { db: conn.into(), rx, dropped: queue.dropped.clone(), retention_days: 0, next_prune: now() };
        let thread = std::thread::spawn(move || writer.run());
        LedgerWriter { tx: queue.tx.clone(), thread }.finish_blocking();
        assert_eq!(count(&super::super::open(&path).unwrap()), 2, "the queued rows were written");
        queue.record(row("late"));
        assert_eq!(queue.dropped(), 4, "the writer is gone: dropped too");
    }

    #[test]
    fn finish_commits_everything_queued_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = super::super::db_path(dir.path());
        let (queue, writer) = start(super::super::open(&path).unwrap(), QUEUE_CAPACITY, 90);
        for i in 0..(MAX_BATCH * 2 + 7) {
            queue.record(row(&format!("req-{i}")));
        }
        writer.finish_blocking();
        assert_eq!(queue.dropped(), 0);
        assert_eq!(count(&super::super::open(&path).unwrap()), (MAX_BATCH * 2 + 7) as i64);
    }

    #[test]
    fn a_refused_batch_is_dropped_whole_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&super::super::db_path(dir.path())).unwrap();
        // A batch with a cost cannot be written without the spend table.
        conn.execute_batch("DROP TABLE spend").unwrap();
        let (queue, rx) = channel(1);
        let mut writer =
            Writer { db: conn.into(), rx, dropped: queue.dropped.clone(), retention_days: 0, next_prune: now() };
        let sqlite = |writer: &Writer| match &writer.db {
            LedgerDb::Sqlite(conn) => count(conn),
            LedgerDb::Postgres(_) => unreachable!("a SQLite writer"),
        };
        let mut costly = row("costly");
        costly.cost_usd = Some(0.5);
        writer.write(&mut vec![row("free-1"), costly]);
        assert_eq!(sqlite(&writer), 0, "the whole batch was rolled back");
        assert_eq!(queue.dropped(), 2);
        writer.write(&mut vec![row("free-2")]);
        assert_eq!(sqlite(&writer), 1, "the next batch is written");
    }
}
