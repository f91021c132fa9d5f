//! Limits several replicas hold together: a key's concurrency cap, its
//! `rpm`, `tpm` and `rpd` windows and its budget, admitted by a shared
//! store (the binary's Redis) on top of this replica's own checks.
//!
//! KeySelect still chooses a key with this replica's state, so a key at
//! its limits here is never asked about. The chosen key is then put to the
//! store ([`SharedAdmission::admit`], one round trip, by
//! [`SharedAdmitLayer`](crate::shared_admit::SharedAdmitLayer)), which
//! counts the attempt against every replica's: admitted, it holds a
//! [`SharedTicket`] until the answer ends; refused, the key is marked full
//! here until the moment the store named ([`ProviderPool::refused_elsewhere`])
//! and the request chooses again, with nothing counted for the attempt.
//! A store that cannot answer admits ([`Admission::Local`]): this
//! replica's own limits are the only ones then.
//!
//! A key with none of these limits never costs a round trip.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::time::Instant;

use super::{KeyId, KeyLease, ProviderPool, limits};

/// Where a pool asks whether an attempt fits the limits all replicas share.
/// The answer must come within a short timeout: a store that cannot answer
/// says [`Admission::Local`].
pub trait SharedAdmission: Send + Sync + fmt::Debug + 'static {
    /// Counts the attempt `ask` describes, if it fits.
    fn admit(&self, ask: AdmissionAsk) -> Pin<Box<dyn Future<Output = Admission> + Send>>;
}

/// An attempt on a key, with the limits it must fit.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AdmissionAsk {
    /// The key's id (never its secret).
    pub key: KeyId,
    /// The model, as the provider knows it.
    pub model: Arc<str>,
    /// The (key, model) concurrency cap, when there is one.
    pub max_concurrent: Option<usize>,
    /// The key's requests per minute, tokens per minute and requests per
    /// day, when set.
    pub rpm: Option<u64>,
    /// See [`rpm`](Self::rpm).
    pub tpm: Option<u64>,
    /// See [`rpm`](Self::rpm).
    pub rpd: Option<u64>,
    /// Tokens the attempt reserves in the `tpm` window.
    pub tokens: u64,
    /// The pool's day (for `rpd`) and when it ends, in ms since the Unix
    /// epoch.
    pub day: u64,
    /// See [`day`](Self::day).
    pub day_ends_unix_ms: u64,
    /// The key's budget, when it has one.
    pub budget: Option<BudgetAsk>,
}

impl AdmissionAsk {
    /// A client's request, under the limits of its `policy` that replicas
    /// share (`max_parallel`, `rpm`, `tpm`, its budget), kept under
    /// `client:<name>` in [`key`](Self::key). `None` when it has none.
    pub fn client(policy: &crate::client::ClientPolicy, tokens: u64, budget: Option<BudgetAsk>) -> Option<Self> {
        let max_concurrent = policy.max_parallel.and_then(|max| usize::try_from(max).ok());
        if max_concurrent.is_none() && policy.rpm.is_none() && policy.tpm.is_none() && budget.is_none() {
            return None;
        }
        Some(Self {
            key: KeyId::named(format!("client:{}", policy.name)),
            model: "".into(),
            max_concurrent,
            rpm: policy.rpm,
            tpm: policy.tpm,
            rpd: None,
            tokens,
            day: 0,
            day_ends_unix_ms: 0,
            budget,
        })
    }
}

impl BudgetAsk {
    /// What a request reserving `reserve_usd` asks of a budget `meter`
    /// at `now_ms`.
    pub fn of(meter: &crate::budget::BudgetMeter, now_ms: u64, reserve_usd: f64) -> Self {
        let budget = meter.budget();
        Self {
            limit_nanos: nanos(budget.limit_usd),
            period_start_unix_ms: budget.period.start(now_ms),
            period_end_unix_ms: budget.period.end(now_ms),
            reserve_nanos: nanos(reserve_usd),
            spent_nanos: nanos(meter.spent(now_ms)),
        }
    }
}

/// What an attempt asks of its key's budget, in nano-dollars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetAsk {
    /// The budget over the period.
    pub limit_nanos: u64,
    /// When the period began (0 for a `total` budget), in ms since the
    /// Unix epoch: names the period's spend.
    pub period_start_unix_ms: u64,
    /// When it ends (`None` for `total`).
    pub period_end_unix_ms: Option<u64>,
    /// The attempt's reservation: its maximum cost.
    pub reserve_nanos: u64,
    /// What this replica knows the key spent over the period (restored
    /// from a shared ledger, say): a store that lost the period's spend
    /// starts from it. One that has it keeps its own: this includes the
    /// replica's charges still on their way to it, which would count twice.
    pub spent_nanos: u64,
}

/// The shared store's answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Admission {
    /// Counted: hold the ticket until the answer ends.
    Admitted {
        /// Released when dropped by its holder (see [`SharedTicket`]).
        ticket: Arc<dyn SharedTicket>,
        /// The key's spend over its budget period on every replica, when it
        /// has a budget.
        spent_nanos: Option<u64>,
    },
    /// Full on the other replicas' account.
    Refused(Refusal),
    /// The store did not answer in time: this replica's limits only.
    Local,
}

/// Why, and until when, a key is full elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// Which limit is reached.
    pub reason: RefusalReason,
    /// When to ask again, in ms since the Unix epoch (a slot may free
    /// sooner: the store says so, see [`KeyPool::freed_elsewhere`](super::KeyPool::freed_elsewhere)).
    pub retry_at_unix_ms: u64,
    /// The key's spend on every replica, when it has a budget.
    pub spent_nanos: Option<u64>,
}

impl Refusal {
    /// A refusal for `reason` until `retry_at_unix_ms`.
    pub fn new(reason: RefusalReason, retry_at_unix_ms: u64) -> Self {
        Self { reason, retry_at_unix_ms, spent_nanos: None }
    }

    /// With the key's shared spend.
    pub fn spent(self, spent_nanos: Option<u64>) -> Self {
        Self { spent_nanos, ..self }
    }
}

/// The limit that refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Every (key, model) slot is leased.
    Slots,
    /// A window (`rpm`, `tpm`, `rpd`) is full.
    Window,
    /// What is left of the budget is reserved by attempts in flight.
    BudgetReserved,
    /// The budget is spent until its period ends.
    BudgetSpent,
}

/// An admitted attempt's place in the shared limits.
pub trait SharedTicket: Send + Sync + fmt::Debug {
    /// The answer reported `tokens` (prompt and completion) and cost
    /// `cost_nanos` (unknown for an unpriced model): they replace the
    /// reservation when the ticket is released.
    fn settle(&self, tokens: u64, cost_nanos: Option<u64>);
    /// The attempt ended: its slot and budget reservation are free.
    /// Called once.
    fn release(&self);
}

/// Where a lease keeps its ticket for the usage to settle.
pub(super) type TicketSlot = Arc<OnceLock<Arc<dyn SharedTicket>>>;

/// Releases a ticket when dropped: lives in the response body, so a
/// stream holds its place until it ends.
pub struct TicketRelease(Arc<dyn SharedTicket>);

impl TicketRelease {
    /// Releases `ticket` when dropped.
    pub fn new(ticket: Arc<dyn SharedTicket>) -> Self {
        Self(ticket)
    }
}

impl Drop for TicketRelease {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl fmt::Debug for TicketRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TicketRelease").field(&self.0).finish()
    }
}

/// Nano-dollars, as budgets count.
pub(crate) fn nanos(usd: f64) -> u64 {
    (usd.max(0.0) * 1e9).round() as u64
}

impl KeyLease {
    /// What to ask the shared store for this attempt, when the pool has one
    /// and the key any limit it holds (else the attempt costs no round trip).
    pub fn admission(&self, model: &str) -> Option<(Arc<dyn SharedAdmission>, AdmissionAsk)> {
        let admission = self.pool.admission.clone()?;
        let ask = self.pool.admission_ask(self.index, model, self.reserved_tokens, self.reserved_cost)?;
        Some((admission, ask))
    }

    /// Keeps the ticket the store gave this attempt, for its usage.
    pub fn hold_ticket(&self, ticket: &Arc<dyn SharedTicket>) {
        if let Some(slot) = &self.ticket {
            let _ = slot.set(ticket.clone());
        }
    }

    pub(super) fn settle_ticket(&self, tokens: u64, cost_usd: Option<f64>) {
        if let Some(ticket) = self.ticket.as_ref().and_then(|slot| slot.get()) {
            ticket.settle(tokens, cost_usd.map(nanos));
        }
    }

    /// The store admitted the attempt and says what the key spent on every
    /// replica: this replica's meter learns it.
    pub fn admitted(&self, spent_nanos: Option<u64>) {
        if let Some(spent) = spent_nanos {
            self.pool.observe_spend(self.index, spent);
        }
    }

    /// The store refused the attempt: it is not counted here either, and
    /// the key is full for `model` until the store's time.
    /// `asked_at` is [`freed_seq`](Self::freed_seq) when the store was
    /// asked: a slot another replica freed since makes the refusal stale,
    /// and the key is not marked full.
    pub fn refused(&self, model: &str, refusal: Refusal, asked_at: u64) {
        self.pool.unlease(self.index, model, self.leased_at, self.reserved_tokens);
        self.pool.refused_elsewhere(self.index, model, refusal, asked_at);
    }

    /// How many times the store said a slot of this provider's keys freed:
    /// read before asking, to tell a refusal that raced a freed slot.
    pub fn freed_seq(&self) -> u64 {
        self.pool.freed_seq.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// How long a key refused for want of a slot waits before asking again,
/// at most, when no replica says a slot freed.
const SLOT_RECHECK: Duration = Duration::from_secs(1);

/// How long a refused key waits at least, even when the store's time is
/// already past on this replica's clock (the store's clock runs behind):
/// asked again at once, it would be asked again and again, as fast as the
/// store answers, for as long as it stays full there.
const MIN_RECHECK: Duration = Duration::from_millis(100);

impl ProviderPool {
    /// Whether key `index` has a limit the replicas share: only then is
    /// an attempt on it put to the store (and given a ticket slot).
    pub(super) fn shares_limits(&self, index: usize) -> bool {
        let settings = &self.settings[index];
        self.admission.is_some() && (self.cap_of(index) > 0 || settings.has_limits() || settings.budget.is_some())
    }

    fn admission_ask(&self, index: usize, model: &str, tokens: u64, reserved_cost: f64) -> Option<AdmissionAsk> {
        if !self.shares_limits(index) {
            return None;
        }
        let settings = &self.settings[index];
        let cap = self.cap_of(index);
        let now_ms = self.clock.now_unix_ms();
        let budget = self.keys[index].health().budget.as_ref().map(|meter| BudgetAsk::of(meter, now_ms, reserved_cost));
        let now = Instant::now();
        Some(AdmissionAsk {
            key: self.keys[index].id().clone(),
            model: model.into(),
            max_concurrent: (cap > 0).then_some(cap),
            rpm: settings.rpm,
            tpm: settings.tpm,
            rpd: settings.rpd,
            tokens,
            day: self.clock.day(now),
            day_ends_unix_ms: self.clock.unix_ms(self.clock.next_reset(now)),
            budget,
        })
    }

    /// Takes back what choosing key `index` counted for an attempt that
    /// was never sent.
    fn unlease(&self, index: usize, model: &str, leased_at: Instant, tokens: u64) {
        let key = &self.keys[index];
        let today = self.clock.day(leased_at);
        let mut health = key.health();
        if health.requests_day == today {
            health.requests_today = health.requests_today.saturating_sub(1);
        }
        if let Some(state) = health.models.get_mut(model).filter(|state| state.day == today) {
            state.counters.requests = state.counters.requests.saturating_sub(1);
        }
        let (at, now) = (limits::second(&self.clock, leased_at), limits::second(&self.clock, Instant::now()));
        let settings = &self.settings[index];
        if settings.rpm.is_some() {
            health.windows.requests.adjust(at, now, -1);
        }
        if settings.tpm.is_some() {
            health.windows.tokens.adjust(at, now, -i64::try_from(tokens).unwrap_or(i64::MAX));
        }
        drop(health);
        key.requests
            .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            })
            .ok();
    }

    fn refused_elsewhere(&self, index: usize, model: &str, refusal: Refusal, asked_at: u64) {
        let now = Instant::now();
        if let Some(spent) = refusal.spent_nanos {
            self.observe_spend(index, spent);
        }
        let until = self.clock.instant_at(refusal.retry_at_unix_ms).max(now + MIN_RECHECK);
        let mut health = self.keys[index].health();
        match refusal.reason {
            RefusalReason::Window => {
                health.limits_elsewhere_until = Some(health.limits_elsewhere_until.map_or(until, |u| u.max(until)));
            }
            // Spent: the meter learned it above, and says so until the
            // period ends.
            RefusalReason::BudgetSpent => {}
            RefusalReason::Slots | RefusalReason::BudgetReserved => {
                if self.freed_seq.load(std::sync::atomic::Ordering::Acquire) != asked_at {
                    // A slot freed while the store answered: ask again now.
                    return;
                }
                let today = self.clock.day(now);
                let cap = self.cap_of(index);
                health.model(model, today, cap, now).full_elsewhere_until = Some(until.min(now + SLOT_RECHECK));
            }
        }
    }

    /// What key `index` spent on every replica over its budget's period.
    fn observe_spend(&self, index: usize, spent_nanos: u64) {
        if let Some(meter) = self.keys[index].health().budget.clone() {
            meter.observe_spent(self.clock.now_unix_ms(), spent_nanos);
        }
    }
}

impl super::KeyPool {
    /// Another replica says key `id` spent `spent_nanos` of its budget's
    /// period (all of it): this replica's meter learns it, and skips the
    /// key until the period ends. `false` when the key is not here.
    pub fn spent_elsewhere(&self, id: &str, spent_nanos: u64) -> bool {
        let Some((pool, index)) = self.key(id) else { return false };
        pool.observe_spend(index, spent_nanos);
        true
    }

    /// Another replica ended an attempt on key `id`: a slot (or a budget
    /// reservation) it held is free, so requests waiting here look again.
    /// `false` when the key is not here.
    pub fn freed_elsewhere(&self, id: &str) -> bool {
        let Some((pool, index)) = self.key(id) else { return false };
        let mut health = pool.keys[index].health();
        for state in health.models.values_mut() {
            state.full_elsewhere_until = None;
        }
        drop(health);
        pool.freed_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        pool.slot_freed.notify_waiters();
        true
    }
}
