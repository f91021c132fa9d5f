//! Keys' health shared by replicas on Redis (or Valkey), when
//! `shared.redis_url` is set: a cooldown or invalid mark one replica starts
//! is obeyed by the others within milliseconds.
//!
//! Each event the pool announces ([`PoolEvents`]) is queued without
//! waiting, then one task writes it to Redis (a key per key and model,
//! expiring when the cooldown ends, so nothing outlives its deadline) and
//! publishes it on `<prefix>events`. Another task subscribes there and
//! applies the other replicas' events to the current pool
//! ([`KeyPool::apply`]); when it (re)connects it first reads every live
//! cooldown and mark back, so a replica that starts late, or lost Redis for
//! a while, converges.
//!
//! Redis never takes the proxy down: every call has a short timeout, a
//! replica that cannot reach Redis goes on with its own state (it already
//! applied its own events), says so in the log and in
//! `keyrelay_shared_state_up`, retries with backoff, and on reconnect
//! publishes what it learned meanwhile. Keys written carry the prefix and
//! a hash tag of the key id (`keyrelay:{openai:3f9a1c2e}:cool:gpt-4o`), so a
//! key's data stays in one Redis Cluster slot. Key ids only, never a secret.

pub mod counters;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use futures_util::StreamExt;
use keyrelay_layers::{
    classify::FailureClass,
    pool::{KeyPool, PoolEvent, PoolEvents},
};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{config::shared::SharedSettings, store::now_ms};

mod limits;

/// Events queued for Redis beyond which new ones are dropped (and counted):
/// a replica cut off from Redis keeps working on its own state.
const QUEUE: usize = 4096;
/// Events kept while Redis is away, to publish on reconnect.
const BACKLOG: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events sent in one pipeline at most.
const FLUSH_BATCH: usize = 256;

/// What goes out: the pool's events, and word that the runtime client
/// keys changed (the others read them again from the shared store).
#[derive(Debug)]
enum Outgoing {
    Pool(PoolEvent),
    ClientsChanged { at_ms: u64 },
}

impl Outgoing {
    /// When it stops being worth sending.
    fn until_unix_ms(&self) -> u64 {
        match self {
            Self::Pool(event) => event.until_unix_ms(),
            Self::ClientsChanged { at_ms } => at_ms + 60_000,
        }
    }
}

/// Where the pool's events go: a bounded queue, never waited on.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
}

impl Outbox {
    fn send(&self, message: Outgoing) {
        if self.tx.try_send(message).is_err() {
            metrics::counter!(keyrelay_layers::metrics::SHARED_EVENTS_DROPPED).increment(1);
        }
    }

    /// A client key was made or revoked here: the other replicas read the
    /// runtime clients again from the store they share.
    pub fn clients_changed(&self) {
        self.send(Outgoing::ClientsChanged { at_ms: now_ms() });
    }
}

impl PoolEvents for Outbox {
    fn publish(&self, event: PoolEvent) {
        self.send(Outgoing::Pool(event));
    }
}

/// The Redis side, ready to run once the server serves.
#[derive(Debug)]
pub struct Shared {
    settings: SharedSettings,
    instance: String,
    rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    limits: Arc<limits::RedisLimits>,
    counters: Arc<counters::PoolCounters>,
}

/// The outbox the pool announces to, and the tasks to start with
/// [`Shared::run`]. `data_dir` keeps the replica's id for its counters.
pub fn channel(settings: &SharedSettings, data_dir: &Path) -> (Arc<Outbox>, Arc<Shared>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let instance = format!("{:016x}", replica_id());
    let limits =
        Arc::new(limits::RedisLimits::new(&settings.key_prefix, &instance, settings.slot_lease, settings.call_timeout));
    let counters = Arc::new(counters::PoolCounters::new(settings, data_dir));
    let shared = Shared { settings: settings.clone(), instance, rx: Mutex::new(Some(rx)), limits, counters };
    (Arc::new(Outbox { tx }), Arc::new(shared))
}

fn replica_id() -> u64 {
    let mut bytes = [0u8; 8];
    // A replica id only has to differ between replicas.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ std::process::id() as u64
}

/// One event on the wire: `kind` names the [`PoolEvent`], the rest are
/// its fields (key ids, model names, response ids and times; never a
/// secret).
#[derive(Debug, Default, Deserialize, Serialize)]
struct Wire {
    /// The replica that published it.
    from: String,
    kind: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    until: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_id: Option<String>,
    /// A key's spend over its budget period on every replica, in
    /// nano-dollars (`spent` messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spent: Option<u64>,
    /// A session binding's digest, in hex (never the session's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

impl Wire {
    fn of(event: &PoolEvent, from: &str) -> Option<Self> {
        let wire = Self {
            from: from.to_owned(),
            key: event.key().to_owned(),
            until: event.until_unix_ms(),
            ..Self::default()
        };
        Some(match event {
            PoolEvent::Cooled { model, class, .. } => Self {
                kind: "cooled".to_owned(),
                model: Some(model.clone()),
                class: Some(class.as_str().to_owned()),
                ..wire
            },
            PoolEvent::Invalid { .. } => Self { kind: "invalid".to_owned(), ..wire },
            PoolEvent::Paused { .. } => Self { kind: "paused".to_owned(), ..wire },
            PoolEvent::Owned { id, model, created_unix_ms, response_id, .. } => Self {
                kind: "owned".to_owned(),
                id: Some(id.clone()),
                model: Some(model.clone()),
                created: Some(*created_unix_ms),
                response_id: response_id.clone(),
                ..wire
            },
            PoolEvent::Forgotten { id, .. } => Self { kind: "forgotten".to_owned(), id: Some(id.clone()), ..wire },
            PoolEvent::Stuck { session, .. } => {
                Self { kind: "stuck".to_owned(), session: Some(format!("{session:016x}")), ..wire }
            }
            _ => return None,
        })
    }

    fn event(&self) -> Option<PoolEvent> {
        match self.kind.as_str() {
            "cooled" => Some(PoolEvent::cooled(
                &self.key,
                self.model.as_deref()?,
                self.until,
                FailureClass::parse(self.class.as_deref()?)?,
            )),
            "invalid" => Some(PoolEvent::invalid(&self.key, self.until)),
            "paused" => Some(PoolEvent::paused(&self.key, self.until)),
            "owned" => Some(PoolEvent::owned(
                self.id.as_deref()?,
                &self.key,
                self.model.as_deref()?,
                self.created?,
                self.response_id.as_deref(),
            )),
            "forgotten" => Some(PoolEvent::forgotten(self.id.as_deref()?, &self.key)),
            "stuck" => {
                Some(PoolEvent::stuck(&self.key, u64::from_str_radix(self.session.as_deref()?, 16).ok()?, self.until))
            }
            _ => None,
        }
    }
}

impl Shared {
    /// Where the pool admits attempts against the limits replicas share.
    pub fn admission(&self) -> Arc<dyn keyrelay_layers::pool::SharedAdmission> {
        Arc::new(limits::Admitter(self.limits.clone()))
    }

    /// The day's counters summed over the replicas (`GET /v1/keys`).
    pub fn counters(&self) -> &Arc<counters::PoolCounters> {
        &self.counters
    }

    /// Where an event lives in Redis: under its key's (or provider's) hash
    /// tag, so that one key's data stays in one Redis Cluster slot.
    fn redis_key(&self, event: &PoolEvent) -> String {
        let prefix = &self.settings.key_prefix;
        let tag = event.key();
        match event {
            PoolEvent::Cooled { model, .. } => format!("{prefix}{{{tag}}}:cool:{model}"),
            PoolEvent::Paused { .. } => format!("{prefix}{{{tag}}}:paused"),
            PoolEvent::Owned { id, .. } | PoolEvent::Forgotten { id, .. } => format!("{prefix}{{{tag}}}:resp:{id}"),
            // One Redis key per session, whichever key it moves to.
            PoolEvent::Stuck { session, .. } => format!("{prefix}{{session:{session:016x}}}:key"),
            _ => format!("{prefix}{{{tag}}}:invalid"),
        }
    }

    fn channel_name(&self) -> String {
        format!("{}events", self.settings.key_prefix)
    }

    /// Starts publishing the pool's events and applying the others' to
    /// the pool `pool_now` returns (the current one, across reloads).
    /// `clients_changed` runs when another replica made or revoked a client
    /// key.
    pub fn run(
        self: &Arc<Self>,
        pool_now: impl Fn() -> Arc<KeyPool> + Send + Sync + 'static,
        clients_changed: impl Fn() + Send + Sync + 'static,
    ) -> Vec<JoinHandle<()>> {
        let Some(rx) = self.rx.lock().unwrap_or_else(PoisonError::into_inner).take() else { return Vec::new() };
        let client = match redis::Client::open(self.settings.redis_url.as_str()) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = ?err.kind(), "shared.redis_url cannot be used: each replica keeps its own state");
                return Vec::new();
            }
        };
        set_up(Link::Events, false);
        let pool_now = Arc::new(pool_now);
        let counted = pool_now.clone();
        let released = pool_now.clone();
        let mut tasks = self.limits.run(client.clone(), move || released());
        tasks.push(tokio::spawn(self.counters.clone().write_every(client.clone(), move || counted())));
        tasks.push(tokio::spawn(self.clone().publish(client.clone(), rx)));
        tasks.push(tokio::spawn(self.clone().subscribe(client, move || pool_now(), clients_changed)));
        tasks
    }

    async fn timed<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        timed(self.settings.call_timeout, call).await
    }

    async fn publish(self: Arc<Self>, client: redis::Client, mut rx: mpsc::Receiver<Outgoing>) {
        let mut backlog: VecDeque<Outgoing> = VecDeque::new();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Events wait for Redis: with some waiting, try again after the
            // backoff, or as soon as another event comes.
            let next = match backlog.is_empty() {
                true => Some(rx.recv().await),
                false => tokio::time::timeout(backoff, rx.recv()).await.ok(),
            };
            match next {
                Some(None) => return,
                Some(Some(event)) => {
                    if backlog.len() == BACKLOG {
                        backlog.pop_front();
                    }
                    backlog.push_back(event);
                }
                None => {} // the backoff ended: retry what waits
            }
            let now = now_ms();
            backlog.retain(|e| e.until_unix_ms() > now);
            match self.flush(&client, &mut conn, &mut backlog).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    if conn.take().is_some() || backoff == Duration::from_millis(100) {
                        tracing::warn!(error = %err, queued = backlog.len(), "cannot reach Redis: keys' state stays local until it is back");
                    }
                    set_up(Link::Events, false);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn flush(
        &self,
        client: &redis::Client,
        conn: &mut Option<MultiplexedConnection>,
        backlog: &mut VecDeque<Outgoing>,
    ) -> Result<(), String> {
        if conn.is_none() {
            *conn = Some(self.timed(client.get_multiplexed_async_connection()).await?);
        }
        let con = conn.as_mut().expect("connected above");
        // One pipeline for what waits (a burst, or the backlog of an
        // outage): one round trip, not one per event.
        while !backlog.is_empty() {
            let batch = backlog.len().min(FLUSH_BATCH);
            let mut pipe = redis::pipe();
            for message in backlog.iter().take(batch) {
                self.add_to(&mut pipe, message)?;
            }
            if !pipe.is_empty() {
                self.timed(pipe.query_async::<()>(con)).await?;
            }
            backlog.drain(..batch);
        }
        Ok(())
    }

    /// Writes `message` (an event: kept in Redis until it is over) and
    /// publishes it, in `pipe`.
    fn add_to(&self, pipe: &mut redis::Pipeline, message: &Outgoing) -> Result<(), String> {
        let event = match message {
            Outgoing::Pool(event) => event,
            Outgoing::ClientsChanged { .. } => {
                let wire = Wire { from: self.instance.clone(), kind: "clients".to_owned(), ..Wire::default() };
                let payload = serde_json::to_string(&wire).map_err(|err| err.to_string())?;
                pipe.cmd("PUBLISH").arg(self.channel_name()).arg(payload).ignore();
                return Ok(());
            }
        };
        let Some(wire) = Wire::of(event, &self.instance) else { return Ok(()) };
        let payload = serde_json::to_string(&wire).map_err(|err| err.to_string())?;
        if matches!(event, PoolEvent::Forgotten { .. }) {
            pipe.cmd("DEL").arg(self.redis_key(event)).ignore();
        } else {
            let ttl = event.until_unix_ms().saturating_sub(now_ms()).max(1);
            pipe.cmd("SET").arg(self.redis_key(event)).arg(&payload).arg("PX").arg(ttl).ignore();
        }
        pipe.cmd("PUBLISH").arg(self.channel_name()).arg(&payload).ignore();
        Ok(())
    }

    async fn subscribe(
        self: Arc<Self>,
        client: redis::Client,
        pool_now: impl Fn() -> Arc<KeyPool> + Send + Sync,
        clients_changed: impl Fn() + Send + Sync,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.listen(&client, &pool_now, &clients_changed).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(error = %err, "lost Redis: keys' state stays local until it is back");
                    set_up(Link::Events, false);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Subscribes, reads the live state back, then applies every event
    /// until the connection drops.
    async fn listen(
        &self,
        client: &redis::Client,
        pool_now: &impl Fn() -> Arc<KeyPool>,
        clients_changed: &impl Fn(),
    ) -> Result<(), String> {
        let mut pubsub = self.timed(client.get_async_pubsub()).await?;
        self.timed(pubsub.subscribe(self.channel_name())).await?;
        let mut con = self.timed(client.get_multiplexed_async_connection()).await?;
        let pattern = format!("{}{{*}}:*", self.settings.key_prefix);
        // SCAN, not KEYS: a shared Redis may hold much more than keyrelay's.
        let (mut cursor, mut keys) = (0u64, Vec::new());
        loop {
            let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).to_owned();
            let (next, found): (u64, Vec<String>) = self.timed(scan.query_async(&mut con)).await?;
            keys.extend(found.into_iter().filter(|key| is_event_key(key)));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut applied = 0;
        for chunk in keys.chunks(256) {
            let values: Vec<Option<String>> = self.timed(redis::cmd("MGET").arg(chunk).query_async(&mut con)).await?;
            let pool = pool_now();
            for value in values.into_iter().flatten() {
                applied += usize::from(self.apply(&pool, &value));
            }
        }
        set_up(Link::Events, true);
        tracing::info!(applied, "connected to Redis: keys' cooldowns and marks are shared");
        // What changed while away may include client keys.
        clients_changed();
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else { continue };
            if self.is_clients_news(&payload) {
                clients_changed();
            } else if let Some(news) = limits_news(&payload) {
                match news {
                    LimitsNews::Freed(key) => pool_now().freed_elsewhere(&key),
                    LimitsNews::Spent(key, nanos) => pool_now().spent_elsewhere(&key, nanos),
                };
            } else {
                self.apply(&pool_now(), &payload);
            }
        }
        Err("the subscription ended".to_owned())
    }

    fn is_clients_news(&self, payload: &str) -> bool {
        serde_json::from_str::<Wire>(payload).is_ok_and(|wire| wire.kind == "clients" && wire.from != self.instance)
    }

    fn apply(&self, pool: &KeyPool, payload: &str) -> bool {
        let Ok(wire) = serde_json::from_str::<Wire>(payload) else { return false };
        // Our own events are in our pool already.
        wire.from != self.instance && wire.event().is_some_and(|event| pool.apply(&event))
    }
}

/// Whether a Redis key holds an event (see [`Shared::redis_key`]), not a
/// shared limit or a counter, which are read where they are used.
fn is_event_key(key: &str) -> bool {
    key.contains("}:cool:")
        || key.contains("}:resp:")
        || key.ends_with("}:invalid")
        || key.ends_with("}:paused")
        || (key.contains("{session:") && key.ends_with("}:key"))
}

/// What `lua/release.lua` announces about a key's shared limits.
enum LimitsNews {
    /// A replica ended an attempt on it while another waited for its slot.
    Freed(String),
    /// Its budget is spent: its spend over the period, in nano-dollars.
    Spent(String, u64),
}

fn limits_news(payload: &str) -> Option<LimitsNews> {
    let wire = serde_json::from_str::<Wire>(payload).ok()?;
    match wire.kind.as_str() {
        "freed" => Some(LimitsNews::Freed(wire.key)),
        "spent" => Some(LimitsNews::Spent(wire.key, wire.spent?)),
        _ => None,
    }
}

/// `call` within `timeout`; a failure as the log says it (the error's
/// kind, never the URL with its password).
async fn timed<T>(timeout: Duration, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(format!("{:?}", err.kind())),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// A replica's two ways to Redis: the events' publisher and subscriber,
/// and the shared limits' connection.
#[derive(Clone, Copy, Debug)]
enum Link {
    Events,
    Limits,
}

static EVENTS_UP: AtomicBool = AtomicBool::new(false);
static LIMITS_UP: AtomicBool = AtomicBool::new(false);

/// `keyrelay_shared_state_up` is 1 only while both links are up.
fn set_up(link: Link, up: bool) {
    let flag = match link {
        Link::Events => &EVENTS_UP,
        Link::Limits => &LIMITS_UP,
    };
    flag.store(up, Relaxed);
    let both = EVENTS_UP.load(Relaxed) && LIMITS_UP.load(Relaxed);
    metrics::gauge!(keyrelay_layers::metrics::SHARED_STATE_UP).set(if both { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_event_keys_are_read_back_at_connect() {
        for event in [
            "keyrelay:{openai:3f9a1c2e}:cool:gpt-4o",
            "keyrelay:{openai:3f9a1c2e}:invalid",
            "keyrelay:{openai:3f9a1c2e}:resp:resp_123",
            "keyrelay:{openai}:paused",
            "keyrelay:{session:00ff00ff00ff00ff}:key",
        ] {
            assert!(is_event_key(event), "{event}");
        }
        for other in [
            "keyrelay:{openai:3f9a1c2e}:slots:gpt-4o",
            "keyrelay:{openai:3f9a1c2e}:rpm",
            "keyrelay:{openai:3f9a1c2e}:spent:0",
            "keyrelay:{openai:3f9a1c2e}:day:2026-12-06",
            "keyrelay:{client:ci-bot}:waiting",
        ] {
            assert!(!is_event_key(other), "{other}");
        }
    }

    #[test]
    fn limits_news_reads_freed_and_spent_messages_and_nothing_else() {
        let freed = r#"{"from":"a","kind":"freed","key":"openai:1","until":0}"#;
        assert!(matches!(limits_news(freed), Some(LimitsNews::Freed(key)) if key == "openai:1"));
        let spent = r#"{"from":"a","kind":"spent","key":"openai:1","until":0,"spent":25000000}"#;
        assert!(matches!(limits_news(spent), Some(LimitsNews::Spent(key, 25_000_000)) if key == "openai:1"));
        let cooled = r#"{"from":"a","kind":"cooled","key":"openai:1","until":5,"model":"m","class":"rate_limit"}"#;
        assert!(limits_news(cooled).is_none());
        assert!(limits_news(r#"{"from":"a","kind":"spent","key":"openai:1","until":0}"#).is_none(), "no total");
    }
}
