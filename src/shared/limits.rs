//! The limits replicas hold together on Redis: each key's concurrency
//! slots (a lease per slot with an expiry, renewed while the attempt runs),
//! its `rpm`/`tpm`/`rpd` windows and its budget, admitted in one Lua script
//! on Redis's clock (see `lua/admit.lua`), so no two replicas can take the
//! same last place.
//!
//! Admission is the only call on the request path, and only for a key
//! with one of these limits. Everything after it goes through a queue to
//! one task, which pipelines the releases (slot and hold freed, cost
//! charged, tokens corrected) and renews the leases of attempts still
//! running every third of the lease. When Redis does not answer within
//! `call_timeout`, or the connection is down, an attempt is admitted on
//! this replica's limits alone ([`Admission::Local`]) at once, and a task
//! reconnects with backoff. A replica that dies holds its slots until
//! their leases expire (`slot_lease_secs`).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use keyrelay_layers::pool::{Admission, AdmissionAsk, KeyPool, Refusal, RefusalReason, SharedAdmission, SharedTicket};
use redis::{Script, aio::MultiplexedConnection};
use tokio::sync::{Notify, mpsc, watch};

use super::MAX_BACKOFF;

/// Releases waiting for Redis beyond which new ones are dropped (their
/// leases expire on their own; their cost is lost to the shared budget).
const QUEUE: usize = 8192;

/// Where one key's shared limits live in Redis (all under its hash tag).
#[derive(Debug)]
struct KeyNames {
    slots: String,
    rpm: String,
    tpm: String,
    rpd: String,
    spent: String,
    holds: String,
    waiting: String,
}

impl KeyNames {
    fn new(prefix: &str, ask: &AdmissionAsk) -> Self {
        let tag = format!("{prefix}{{{}}}", ask.key.as_str());
        let period = ask.budget.map_or(0, |b| b.period_start_unix_ms);
        Self {
            slots: format!("{tag}:slots:{}", ask.model),
            rpm: format!("{tag}:rpm"),
            tpm: format!("{tag}:tpm"),
            rpd: format!("{tag}:rpd:{}", ask.day),
            spent: format!("{tag}:spent:{period}"),
            holds: format!("{tag}:holds"),
            waiting: format!("{tag}:waiting"),
        }
    }
}

/// An admitted attempt's place, as the renewals and the release need it.
#[derive(Debug)]
struct Lease {
    id: String,
    key: String,
    names: KeyNames,
    reserve_nanos: u64,
    limit_nanos: u64,
    reserved_tokens: u64,
    /// Redis's second the attempt's tokens were counted at (set once
    /// admitted).
    counted_second: AtomicU64,
    period_end_unix_ms: u64,
    /// What the answer reported: tokens, and cost in nano-dollars.
    settled: Mutex<Option<(u64, Option<u64>)>>,
}

impl Lease {
    fn hold_member(&self) -> String {
        format!("{}:{}", self.id, self.reserve_nanos)
    }
}

/// Releases an admission's lease unless its answer came (see
/// [`RedisLimits::ask`]).
struct Unanswered<'a> {
    lease: Option<Arc<Lease>>,
    work: &'a mpsc::Sender<Arc<Lease>>,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.work.try_send(lease);
        }
    }
}

/// The ticket an admitted attempt holds.
#[derive(Debug)]
struct Ticket {
    lease: Arc<Lease>,
    limits: Arc<RedisLimits>,
    released: AtomicBool,
}

impl SharedTicket for Ticket {
    fn settle(&self, tokens: u64, cost_nanos: Option<u64>) {
        *self.lease.settled.lock().unwrap_or_else(PoisonError::into_inner) = Some((tokens, cost_nanos));
    }

    fn release(&self) {
        if self.released.swap(true, Relaxed) {
            return;
        }
        self.limits.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.lease.id);
        if self.limits.work.try_send(self.lease.clone()).is_err() {
            metrics::counter!(keyrelay_layers::metrics::SHARED_EVENTS_DROPPED).increment(1);
        }
    }
}

/// Admission on Redis; see the [module docs](self).
#[derive(Debug)]
pub struct RedisLimits {
    prefix: String,
    channel: String,
    instance: String,
    lease: Duration,
    call_timeout: Duration,
    conn: ArcSwapOption<MultiplexedConnection>,
    /// Whether the first connection attempt is over: until then a request
    /// waits for it (within the timeout), so that a replica starting next
    /// to busy ones does not take slots they hold.
    first_attempt: watch::Sender<bool>,
    /// Wakes the connector when a call failed.
    broken: Notify,
    leases: AtomicU64,
    /// The leases of attempts still running, renewed every third of the
    /// lease (a map, not the queue: a full queue must not cost a renewal).
    running: Mutex<HashMap<String, Arc<Lease>>>,
    /// Releases, for the task that pipelines them.
    work: mpsc::Sender<Arc<Lease>>,
    queue: Mutex<Option<mpsc::Receiver<Arc<Lease>>>>,
    admit: Script,
    release: Script,
    renew: Script,
}

impl RedisLimits {
    pub(super) fn new(prefix: &str, instance: &str, lease: Duration, call_timeout: Duration) -> Self {
        let (work, queue) = mpsc::channel(QUEUE);
        Self {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}events"),
            instance: instance.to_owned(),
            lease,
            call_timeout,
            conn: ArcSwapOption::empty(),
            first_attempt: watch::Sender::new(false),
            broken: Notify::new(),
            leases: AtomicU64::new(0),
            running: Mutex::default(),
            work,
            queue: Mutex::new(Some(queue)),
            admit: Script::new(include_str!("lua/admit.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
        }
    }

    /// Starts the connector and the task that releases and renews.
    /// `pool_now` is the current pool (across reloads): its waiters hear
    /// of the slots this replica's releases free.
    pub(super) fn run(
        self: &Arc<Self>,
        client: redis::Client,
        pool_now: impl Fn() -> Arc<KeyPool> + Send + Sync + 'static,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(queue) = self.queue.lock().unwrap_or_else(PoisonError::into_inner).take() else { return Vec::new() };
        vec![tokio::spawn(self.clone().connect(client)), tokio::spawn(self.clone().work(queue, pool_now))]
    }

    async fn connect(self: Arc<Self>, client: redis::Client) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(self.call_timeout, self.connect_once(&client)).await;
            if let Ok(Ok(conn)) = &attempt {
                self.conn.store(Some(Arc::new(conn.clone())));
            }
            self.first_attempt.send_replace(true);
            match attempt {
                Ok(Ok(_)) => {
                    super::set_up(super::Link::Limits, true);
                    backoff = Duration::from_millis(100);
                    self.broken.notified().await;
                    self.conn.store(None);
                    super::set_up(super::Link::Limits, false);
                }
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A connection with the release and renewal scripts loaded, so that
    /// their pipelines can name them by hash (a Redis that restarted or
    /// flushed its scripts breaks a pipeline, and the reconnect loads them
    /// again). Admission loads its own script when Redis lacks it.
    async fn connect_once(&self, client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::pipe().load_script(&self.release).load_script(&self.renew).query_async::<()>(&mut conn).await?;
        Ok(conn)
    }

    /// Runs `call` on the current connection within the timeout; `None`
    /// (and a reconnect) when Redis is away.
    async fn call<T, F>(&self, call: impl FnOnce(MultiplexedConnection) -> F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !*self.first_attempt.borrow() {
            let mut settled = self.first_attempt.subscribe();
            let _ = tokio::time::timeout(self.call_timeout, settled.wait_for(|&done| done)).await;
        }
        let conn = MultiplexedConnection::clone(self.conn.load().as_deref()?);
        match tokio::time::timeout(self.call_timeout, call(conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                tracing::warn!(error = ?err.kind(), "Redis refused a shared-limits call: this replica's limits only until it is back");
                self.broken.notify_one();
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.call_timeout.as_millis() as u64,
                    "Redis did not answer a shared-limits call in time: this replica's limits only until it is back"
                );
                self.broken.notify_one();
                None
            }
        }
    }

    async fn ask(self: Arc<Self>, ask: AdmissionAsk) -> Admission {
        let names = KeyNames::new(&self.prefix, &ask);
        let id = format!("{}-{}", self.instance, self.leases.fetch_add(1, Relaxed));
        let budget = ask.budget;
        let mut invocation = self.admit.prepare_invoke();
        for name in [&names.slots, &names.rpm, &names.tpm, &names.rpd, &names.spent, &names.holds, &names.waiting] {
            invocation.key(name);
        }
        invocation
            .arg(&id)
            .arg(ask.max_concurrent.unwrap_or(0))
            .arg(self.lease.as_millis() as u64)
            .arg(ask.rpm.unwrap_or(0))
            .arg(ask.tpm.unwrap_or(0))
            .arg(ask.rpd.unwrap_or(0))
            .arg(ask.tokens)
            .arg(ask.day_ends_unix_ms)
            .arg(budget.map_or(0, |b| b.limit_nanos))
            .arg(budget.map_or(0, |b| b.reserve_nanos))
            .arg(budget.map_or(0, |b| b.spent_nanos))
            .arg(budget.and_then(|b| b.period_end_unix_ms).unwrap_or(0));
        let lease = Arc::new(Lease {
            id,
            key: ask.key.as_str().to_owned(),
            names,
            reserve_nanos: budget.map_or(0, |b| b.reserve_nanos),
            limit_nanos: budget.map_or(0, |b| b.limit_nanos),
            reserved_tokens: ask.tokens,
            counted_second: AtomicU64::new(0),
            period_end_unix_ms: budget.and_then(|b| b.period_end_unix_ms).unwrap_or(0),
            settled: Mutex::new(None),
        });
        // Redis may run the script after the timeout, or after the request
        // went away: unless an answer came, the lease is released, on the
        // same connection, so after the script whenever it ran.
        let mut unanswered = Unanswered { lease: Some(lease.clone()), work: &self.work };
        let Some(answer) =
            self.call(|mut conn| async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }).await
        else {
            return Admission::Local;
        };
        unanswered.lease = None;
        let spent = |value: Option<&i64>| value.and_then(|&v| u64::try_from(v).ok());
        match answer.as_slice() {
            [1, second, rest @ ..] => {
                lease.counted_second.store(u64::try_from(*second).unwrap_or(0), Relaxed);
                // Renewed while it runs.
                self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(lease.id.clone(), lease.clone());
                let ticket = Ticket { lease, limits: self.clone(), released: AtomicBool::new(false) };
                Admission::Admitted { ticket: Arc::new(ticket), spent_nanos: spent(rest.first()) }
            }
            [0, reason, retry_at, rest @ ..] => {
                let reason = match reason {
                    1 => RefusalReason::Slots,
                    2 => RefusalReason::Window,
                    3 => RefusalReason::BudgetReserved,
                    _ => RefusalReason::BudgetSpent,
                };
                let retry_at = u64::try_from(*retry_at).unwrap_or(0);
                Admission::Refused(Refusal::new(reason, retry_at).spent(spent(rest.first())))
            }
            _ => Admission::Local,
        }
    }

    /// Releases and renews: the only writes after admission, pipelined.
    async fn work(self: Arc<Self>, mut queue: mpsc::Receiver<Arc<Lease>>, pool_now: impl Fn() -> Arc<KeyPool>) {
        let mut releases: Vec<Arc<Lease>> = Vec::new();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                lease = queue.recv() => match lease {
                    None => return,
                    Some(lease) => releases.push(lease),
                },
                _ = renew.tick() => {
                    let running: Vec<Arc<Lease>> =
                        self.running.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
                    if !running.is_empty() && !self.renew_all(running.iter()).await {
                        tracing::debug!(leases = running.len(), "cannot renew slot leases now");
                    }
                }
            }
            // Take whatever else is queued, so one pipeline carries it.
            while let Ok(lease) = queue.try_recv() {
                releases.push(lease);
            }
            if releases.is_empty() {
                continue;
            }
            if self.release_all(&releases).await {
                // A request here may wait on a slot this replica's own
                // release just freed in Redis: no `freed` message is
                // published for it unless another replica waited.
                let pool = pool_now();
                let mut keys: Vec<&str> = releases.iter().map(|lease| lease.key.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    pool.freed_elsewhere(key);
                }
                releases.clear();
                backoff = Duration::ZERO;
            } else {
                // Leases expire on their own; the costs are worth a retry.
                releases.truncate(QUEUE);
                backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
        }
    }

    async fn release_all(&self, releases: &[Arc<Lease>]) -> bool {
        let mut pipe = redis::pipe();
        for lease in releases {
            let (tokens, cost) = lease.settled.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or_default();
            // An answer that reported nothing keeps its reservation.
            let delta = if tokens == 0 { 0 } else { tokens as i64 - lease.reserved_tokens as i64 };
            let freed = serde_json::json!({"from": self.instance, "kind": "freed", "key": lease.key, "until": 0});
            let spent = serde_json::json!({"from": self.instance, "kind": "spent", "key": lease.key, "until": 0});
            // The script ends it with `,"spent":<total>}`.
            let spent = format!("{},\"spent\":", spent.to_string().trim_end_matches('}'));
            let n = &lease.names;
            pipe.invoke_script(
                self.release
                    .key(&n.slots)
                    .key(&n.holds)
                    .key(&n.spent)
                    .key(&n.tpm)
                    .key(&n.waiting)
                    .arg(&lease.id)
                    .arg(lease.reserve_nanos)
                    .arg(cost.unwrap_or(0))
                    .arg(delta)
                    .arg(lease.counted_second.load(Relaxed))
                    .arg(lease.period_end_unix_ms)
                    .arg(&self.channel)
                    .arg(freed.to_string())
                    .arg(lease.limit_nanos)
                    .arg(spent),
            )
            .ignore();
        }
        self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await }).await.is_some()
    }

    async fn renew_all(&self, leases: impl Iterator<Item = &Arc<Lease>>) -> bool {
        let mut pipe = redis::pipe();
        let lease_ms = self.lease.as_millis() as u64;
        for lease in leases {
            let n = &lease.names;
            pipe.invoke_script(
                self.renew.key(&n.slots).key(&n.holds).arg(&lease.id).arg(lease.hold_member()).arg(lease_ms),
            )
            .ignore();
        }
        self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await }).await.is_some()
    }
}

/// What the pool holds: [`RedisLimits`] as its [`SharedAdmission`].
#[derive(Clone, Debug)]
pub(super) struct Admitter(pub(super) Arc<RedisLimits>);

impl SharedAdmission for Admitter {
    fn admit(&self, ask: AdmissionAsk) -> Pin<Box<dyn Future<Output = Admission> + Send>> {
        Box::pin(self.0.clone().ask(ask))
    }
}
