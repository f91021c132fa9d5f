//! Each key's counters of the day (requests, successes, failures by class,
//! tokens; per model) summed over the replicas, so that `GET /v1/keys` on
//! any replica shows the pool's totals.
//!
//! The hot path never calls Redis for this: once a second a task writes
//! this replica's own counters of today, as absolute values, into one hash
//! per key and day, `<prefix>{<key id>}:day:<YYYY-MM-DD>` (the hash tag
//! keeps a key's data in one Redis Cluster slot), fields
//! `<replica id>|<model>|<counter>`, expiring two days after the last
//! write. Only keys whose counters changed are written, all of them in one
//! pipelined round trip; absolute values make a retry or a reconnect
//! harmless (the replica writes what it has again, nothing counts twice).
//!
//! `GET /v1/keys` reads the day hashes of every key in one round trip and
//! adds the other replicas' fields to this replica's own live counters.
//! Redis not answering within `call_timeout_ms`: the replica's own
//! counters, and the answer says so (`"counters": "replica"`).
//!
//! The replica id must outlive a restart (the day's counters come back
//! from the state store, and a new id would count them twice): a random id
//! made once and kept in `<data_dir>/replica-id`. Key ids and model names
//! only, never a secret.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use keyrelay_layers::pool::{Counters, KeyPool, KeyStatus};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::config::shared::SharedSettings;

/// How often a replica writes its counters.
const TICK: Duration = Duration::from_secs(1);
/// A day hash outlives its last write by this much: long enough for any
/// daily reset offset and clock skew, short enough to clean up after itself.
const EXPIRY_SECS: u64 = 2 * 24 * 60 * 60;
/// The file in the data dir that keeps the replica's id.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// A counter's name (`requests`, `failures_quota`, ...) and its value.
type Tally = BTreeMap<String, u64>;
/// One key's counters of a day, by model.
type ByModel = BTreeMap<String, Tally>;

/// The writer's and the reader's side of the pool-wide counters.
#[derive(Debug)]
pub struct PoolCounters {
    settings: SharedSettings,
    data_dir: PathBuf,
    /// Set when the writer starts; the reader waits for nothing.
    replica: OnceLock<String>,
    /// The writer's connection, lent to the reader: `None` while Redis is
    /// away (the reader then answers with this replica's counters at once).
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl PoolCounters {
    pub fn new(settings: &SharedSettings, data_dir: &Path) -> Self {
        Self {
            settings: settings.clone(),
            data_dir: data_dir.to_path_buf(),
            replica: OnceLock::new(),
            conn: Mutex::new(None),
        }
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_connection(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }

    async fn timed<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        super::timed(self.settings.call_timeout, call).await
    }

    fn day_key(&self, key: &str, day: u64) -> String {
        format!("{}{{{key}}}:day:{}", self.settings.key_prefix, day_label(day))
    }

    /// Writes this replica's counters every [`TICK`], for the pool
    /// `pool_now` returns, until aborted.
    pub async fn write_every(self: Arc<Self>, client: redis::Client, pool_now: impl Fn() -> Arc<KeyPool>) {
        let dir = self.data_dir.clone();
        let replica = tokio::task::spawn_blocking(move || replica_id(&dir)).await.unwrap_or_else(|_| random_id());
        let replica = self.replica.get_or_init(|| replica).clone();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What Redis holds of ours, as far as we know, and of which day.
        let (mut written, mut written_day) = (BTreeMap::new(), None);
        let mut up = true;
        loop {
            ticks.tick().await;
            let (day, keys) = pool_now().counters_today();
            if written_day != Some(day) {
                written.clear();
                written_day = Some(day);
            }
            let outcome = match self.connection() {
                Some(conn) => Ok(conn),
                None => self.timed(client.get_multiplexed_async_connection()).await.inspect(|conn| {
                    // Redis may have come back empty: write everything.
                    written.clear();
                    self.set_connection(Some(conn.clone()));
                }),
            };
            let outcome = match outcome {
                Ok(mut conn) => {
                    self.timed(self.writes(&replica, day, &keys, &written).query_async::<()>(&mut conn)).await
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(()) => {
                    written = keys;
                    if !up {
                        tracing::info!("Redis is back: /v1/keys shows the pool's counters again");
                        up = true;
                    }
                }
                Err(err) => {
                    self.set_connection(None);
                    written.clear();
                    if up {
                        tracing::warn!(error = %err, "cannot write the day's counters to Redis: /v1/keys shows this replica's own until it is back");
                        up = false;
                    }
                }
            }
        }
    }

    /// One pipeline: the counters of every key that changed since the last
    /// write, or a PING (which finds a dropped connection) when none did.
    fn writes(
        &self,
        replica: &str,
        day: u64,
        keys: &BTreeMap<String, BTreeMap<String, Counters>>,
        written: &BTreeMap<String, BTreeMap<String, Counters>>,
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut changed = 0;
        for (key, models) in keys {
            if models.is_empty() || written.get(key) == Some(models) {
                continue;
            }
            let hash = self.day_key(key, day);
            let mut hset = redis::cmd("HSET");
            hset.arg(&hash);
            for (model, counters) in models {
                for (counter, value) in tally(counters) {
                    hset.arg(field(replica, model, &counter)).arg(value);
                }
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("EXPIRE").arg(&hash).arg(EXPIRY_SECS).ignore();
            changed += 1;
        }
        if changed == 0 {
            pipe.cmd("PING").ignore();
        }
        pipe
    }

    /// Every key's status with its counters of today summed over the
    /// replicas (the others' from Redis, this replica's live), or `None`
    /// when Redis does not answer in time.
    pub async fn key_statuses(&self, pool: &KeyPool) -> Option<Vec<Value>> {
        let replica = self.replica.get()?;
        let mut conn = self.connection()?;
        let statuses = pool.key_statuses();
        let day = pool.clock().day(tokio::time::Instant::now());
        let mut pipe = redis::pipe();
        for status in &statuses {
            pipe.cmd("HGETALL").arg(self.day_key(&status.id, day));
        }
        let hashes = match self.timed(pipe.query_async::<Vec<HashMap<String, String>>>(&mut conn)).await {
            Ok(hashes) if hashes.len() == statuses.len() => hashes,
            Ok(_) => return None,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the pool's counters: /v1/keys shows this replica's");
                // The writer connects again at its next tick.
                self.set_connection(None);
                return None;
            }
        };
        Some(statuses.iter().zip(&hashes).map(|(status, hash)| pooled(status, &others(hash, replica))).collect())
    }
}

/// The pool day's date (`2026-12-06`): the day that starts at the daily
/// reset of that date (UTC), as every replica with the same reset names it.
fn day_label(day: u64) -> String {
    let start = jiff::Timestamp::from_second((day * 86_400) as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    jiff::tz::Offset::UTC.to_datetime(start).date().to_string()
}

/// A day hash's field: model names may hold `|`; replica ids and counter
/// names never do.
fn field(replica: &str, model: &str, counter: &str) -> String {
    format!("{replica}|{model}|{counter}")
}

fn parse_field(field: &str) -> Option<(&str, &str, &str)> {
    let (replica, rest) = field.split_once('|')?;
    let (model, counter) = rest.rsplit_once('|')?;
    Some((replica, model, counter))
}

/// Counters as names and values (the names `/v1/keys` shows).
fn tally(counters: &Counters) -> Tally {
    let value = serde_json::to_value(counters).unwrap_or_default();
    value.as_object().into_iter().flatten().filter_map(|(name, v)| Some((name.clone(), v.as_u64()?))).collect()
}

/// Adds `from` to `into`, counter by counter, leaving out counters this
/// version does not know (a newer replica's): the answer keeps its shape.
fn add(into: &mut Tally, from: &Tally) {
    for (name, value) in into.iter_mut() {
        *value = value.saturating_add(from.get(name).copied().unwrap_or(0));
    }
}

/// One key's day hash summed over every replica but `own`, by model.
fn others(hash: &HashMap<String, String>, own: &str) -> ByModel {
    let mut sums = ByModel::new();
    for (field, value) in hash {
        let Some((replica, model, counter)) = parse_field(field) else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        if replica != own {
            let sum = sums.entry(model.to_owned()).or_default().entry(counter.to_owned()).or_default();
            *sum = sum.saturating_add(value);
        }
    }
    sums
}

/// A key's status with `today` and `models` the sum of its own counters
/// and the other replicas'.
fn pooled(status: &KeyStatus, others: &ByModel) -> Value {
    let zero = tally(&Counters::default());
    let mut models: ByModel = status.models.iter().map(|m| (m.model.clone(), tally(&m.today))).collect();
    for (model, theirs) in others {
        add(models.entry(model.clone()).or_insert_with(|| zero.clone()), theirs);
    }
    let mut today = zero;
    for counters in models.values() {
        add(&mut today, counters);
    }
    let mut value = serde_json::to_value(status).unwrap_or_default();
    value["today"] = json!(today);
    value["models"] = models.into_iter().map(|(model, today)| json!({ "model": model, "today": today })).collect();
    value
}

/// The id kept in the data dir, made on first use; a fresh one (and a
/// warning: a restart will count this run's counters twice for the day)
/// when the file cannot be kept.
fn replica_id(data_dir: &Path) -> String {
    let path = data_dir.join(REPLICA_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return id.to_owned();
        }
    }
    let id = random_id();
    // Written aside, then renamed: a crash never leaves half an id.
    let aside = data_dir.join(format!("{REPLICA_ID_FILE}.new"));
    let kept = std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&aside, format!("{id}\n")))
        .and_then(|()| std::fs::rename(&aside, &path));
    if let Err(err) = kept {
        tracing::warn!(path = %path.display(), error = %err, "cannot keep the replica's id: after a restart, the pool's counters of the day count this replica's twice");
    }
    id
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("{:016x}", u64::from_le_bytes(bytes) ^ u64::from(std::process::id()))
}

#[cfg(test)]
#[path = "counters_tests.rs"]
mod tests;
