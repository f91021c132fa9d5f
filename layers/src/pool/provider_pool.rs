//! [`ProviderPool`]: one provider's keys, and choosing and recording them.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};

use super::{
    Affinity, InFlight, KeyEntry, KeyId, KeyLease, KeySettings, PoolClock, ProviderOptions, ProviderPause,
    ResponseOwners, Selection, SessionAffinity,
    health::Availability,
    key_budget::BudgetRoom,
    labels::ModelLabels,
    limits,
    select::{self, Candidate},
    unavailable::Unavailable,
};
use crate::{
    classify::{Failure, FailureClass},
    metrics::HandleCache,
    provider::Provider,
};

#[derive(Debug, Default)]
pub(super) struct PauseState {
    recent: VecDeque<(usize, Instant)>,
    pub(super) until: Option<Instant>,
}

/// One provider and its keys.
pub struct ProviderPool {
    pub(super) provider: Arc<Provider>,
    pub(super) options: ProviderOptions,
    pub(super) keys: Box<[Arc<KeyEntry>]>,
    /// Each key's settings, by the keys' index.
    pub(super) settings: Box<[KeySettings]>,
    /// Whether any key has a budget: without one, no request prices itself
    /// before it is sent.
    pub(super) budgeted: bool,
    pub(super) cursor: AtomicUsize,
    pub(super) clock: PoolClock,
    pub(super) pause: ProviderPause,
    pub(super) pause_state: Mutex<PauseState>,
    /// Set with `pause_state.until`: choosing a key looks here first, so the
    /// common case (no pause) takes no lock.
    pub(super) maybe_paused: AtomicBool,
    pub(super) slot_freed: Notify,
    /// Counts the shared store's word that a slot freed elsewhere (see
    /// `admission.rs`).
    pub(super) freed_seq: std::sync::atomic::AtomicU64,
    /// The models that are metric labels, not `other`.
    pub(super) labels: ModelLabels,
    /// `keyrelay_upstream_attempts_total` by (key index, outcome).
    pub(super) attempt_counters: HandleCache<(usize, &'static str), metrics::Counter>,
    /// `keyrelay_tokens_total` (prompt, completion) by model label.
    pub(super) token_counters: HandleCache<Arc<str>, [metrics::Counter; 2]>,
    /// The pool's memory of which key made which response.
    pub(super) responses: Arc<ResponseOwners>,
    /// The pool's prices (shared): what an answer costs, priced where it is
    /// read, and what keys' budgets are charged.
    pub(super) prices: Arc<crate::price::PriceTable>,
    /// Which key served each session last (this provider's, kept over reloads).
    pub(super) sessions: Arc<SessionAffinity>,
    /// Where cooldowns and invalid marks are announced to other replicas.
    pub(super) events: Option<Arc<dyn super::PoolEvents>>,
    /// Where limits shared with other replicas are admitted.
    pub(super) admission: Option<Arc<dyn super::SharedAdmission>>,
}

/// The answer of [`ProviderPool::choose`].
#[derive(Debug)]
pub enum Choice {
    /// A key, counted in flight until the guard drops.
    Leased(KeyLease, InFlight),
    /// No key now; why, and when one might be.
    Unavailable(Unavailable),
}

/// What a request reserves of the key it is given: tokens of its `tpm`
/// window, USD of its budget.
#[derive(Clone, Copy, Debug, Default)]
struct Ask {
    tokens: u64,
    max_cost: f64,
}

/// Scans one choice may make when other requests keep taking the last of
/// the budget of the key it chose.
const BUDGET_RACES: usize = 3;

impl ProviderPool {
    /// The settings of the key at `index` (see [`keys`](Self::keys)).
    pub fn settings(&self, index: usize) -> &KeySettings {
        &self.settings[index]
    }

    /// Whether any of the provider's keys has a budget.
    pub fn has_budgets(&self) -> bool {
        self.budgeted
    }

    /// The concurrency cap per model of the key at `index`: its own, else
    /// the provider's (0: none).
    pub(crate) fn cap_of(&self, index: usize) -> usize {
        self.settings[index].max_concurrent.unwrap_or(self.options.max_concurrent_per_key)
    }

    /// Which key made each Responses API response (the pool's, shared).
    pub fn responses(&self) -> &Arc<ResponseOwners> {
        &self.responses
    }

    /// What requests cost: the pool's prices (see
    /// [`KeyPoolBuilder::prices`](super::KeyPoolBuilder::prices)).
    pub fn prices(&self) -> &Arc<crate::price::PriceTable> {
        &self.prices
    }

    /// Which key served each session last (see [`choose_for`](Self::choose_for)).
    pub fn sessions(&self) -> &Arc<SessionAffinity> {
        &self.sessions
    }

    /// The provider's spec.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
    /// The provider's options.
    pub fn options(&self) -> ProviderOptions {
        self.options
    }
    /// The provider's strategy.
    pub fn selection(&self) -> Selection {
        self.options.selection
    }
    /// The keys, in the order they were configured (duplicates dropped).
    pub fn keys(&self) -> &[Arc<KeyEntry>] {
        &self.keys
    }
    /// The pool's clock.
    pub fn clock(&self) -> &PoolClock {
        &self.clock
    }

    /// Notified whenever a concurrency slot frees or a key comes back.
    pub fn slot_freed(&self) -> &Notify {
        &self.slot_freed
    }

    /// Chooses a key for `model` by the provider's strategy among keys that
    /// are not excluded, disabled, invalid (unless due for their one probe),
    /// cooling for this model, or full. `pinned` is taken when available
    /// (same-key retries). The chosen key counts in flight until the
    /// returned guard drops.
    pub fn choose(self: &Arc<Self>, model: &str, excluded: &[KeyId], pinned: Option<&KeyId>) -> Choice {
        self.choose_preferring(model, excluded, pinned, None, Ask::default())
    }

    /// [`choose`](Self::choose) for a request of `session` (when it carries
    /// a session signal and the provider's [`Affinity`] is `session`): the
    /// key that served the session last is taken when it can take the
    /// request now — not excluded, bound to the model, not disabled,
    /// invalid or cooling for the model, with a free slot, and in the
    /// lowest priority tier that has a key ready (tiers come first: a
    /// session that spilled into a paid tier comes back to the free one).
    /// Otherwise the strategy chooses as usual. Either way the key leased
    /// becomes the session's key. A `pinned` key (a same-key retry) still
    /// comes first.
    ///
    /// ```
    /// use keyrelay_layers::pool::{Choice, KeyPool, Secret, Selection};
    /// use keyrelay_layers::provider::Provider;
    ///
    /// # tokio_test::block_on(async {
    /// let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    /// let keys = vec![Secret::new("sk-a"), Secret::new("sk-b"), Secret::new("sk-c")];
    /// let pool = KeyPool::builder().provider(openai, Selection::RoundRobin, keys).build().unwrap();
    /// let provider = pool.provider("openai").unwrap();
    /// let key_of = |choice| match choice {
    ///     Choice::Leased(lease, _) => lease.key_id().clone(),
    ///     Choice::Unavailable(why) => panic!("{why:?}"),
    /// };
    /// let first = key_of(provider.choose_for("gpt-4o", &[], None, Some("chat-1")));
    /// for _ in 0..5 {
    ///     assert_eq!(key_of(provider.choose_for("gpt-4o", &[], None, Some("chat-1"))), first);
    /// }
    /// // Without a session, round robin goes on turning.
    /// assert_ne!(key_of(provider.choose("gpt-4o", &[], None)), key_of(provider.choose("gpt-4o", &[], None)));
    /// # });
    /// ```
    pub fn choose_for(
        self: &Arc<Self>,
        model: &str,
        excluded: &[KeyId],
        pinned: Option<&KeyId>,
        session: Option<&str>,
    ) -> Choice {
        self.choose_reserving(model, excluded, pinned, session, 0)
    }

    /// [`choose_for`](Self::choose_for) for a request estimated to use
    /// `tokens` (prompt and completion): a key with a `tpm` limit is taken
    /// only when its last minute has room for them, and holds them
    /// reserved until the answer reports its usage
    /// ([`KeyLease::count_usage`]). Keys at their `rpm`, `tpm` or `rpd`
    /// limit are skipped like cooling keys, rate limited until their
    /// window frees ([`Unavailable::cooling_until`]).
    pub fn choose_reserving(
        self: &Arc<Self>,
        model: &str,
        excluded: &[KeyId],
        pinned: Option<&KeyId>,
        session: Option<&str>,
        tokens: u64,
    ) -> Choice {
        self.choose_reserving_cost(model, excluded, pinned, session, tokens, 0.0)
    }

    /// [`choose_reserving`](Self::choose_reserving) for a request that may
    /// cost up to `max_cost` USD (its
    /// [`RouteTarget::max_cost`](crate::extensions::RouteTarget::max_cost);
    /// 0 for a model with no price): a key with a budget
    /// ([`KeySettings::budget`]) is taken only while its spend and the
    /// reservations of requests in flight on it leave anything, and holds
    /// `max_cost` reserved until the answer ends (the [`InFlight`] guard
    /// frees it; [`KeyLease::count_usage`] charges the real cost). A key
    /// over budget is skipped and never waited for
    /// ([`Unavailable::over_budget`]).
    pub fn choose_reserving_cost(
        self: &Arc<Self>,
        model: &str,
        excluded: &[KeyId],
        pinned: Option<&KeyId>,
        session: Option<&str>,
        tokens: u64,
        max_cost: f64,
    ) -> Choice {
        let ask = Ask { tokens, max_cost };
        let session = session.filter(|_| self.options.affinity == Affinity::Session);
        let Some(session) = session else { return self.choose_preferring(model, excluded, pinned, None, ask) };
        let now = Instant::now();
        let preferred = pinned.is_none().then(|| self.sessions.key_for(session, model, now)).flatten();
        let choice = self.choose_preferring(model, excluded, pinned, preferred.as_ref(), ask);
        if let Choice::Leased(lease, _) = &choice
            && let Some(digest) = self.sessions.bind(session, model, lease.key_id(), now)
        {
            let ttl = self.sessions.ttl();
            self.announce(|clock| super::PoolEvent::stuck(lease.key_id().as_str(), digest, clock.unix_ms(now + ttl)));
        }
        choice
    }

    fn choose_preferring(
        self: &Arc<Self>,
        model: &str,
        excluded: &[KeyId],
        pinned: Option<&KeyId>,
        preferred: Option<&KeyId>,
        ask: Ask,
    ) -> Choice {
        // Another request may take a key's last budget between the scan and
        // the lease: look again, when that key is over budget and skipped.
        let mut raced = Unavailable::default();
        for _ in 0..BUDGET_RACES {
            match self.choose_once(model, excluded, pinned, preferred, ask) {
                Ok(choice) => return choice,
                Err(why) => raced = why,
            }
        }
        Choice::Unavailable(raced)
    }

    /// One scan and lease; `Err` when the key chosen lost its budget to
    /// another request in between.
    fn choose_once(
        self: &Arc<Self>,
        model: &str,
        excluded: &[KeyId],
        pinned: Option<&KeyId>,
        preferred: Option<&KeyId>,
        ask: Ask,
    ) -> Result<Choice, Unavailable> {
        let tokens = ask.tokens;
        let now = Instant::now();
        let now_ms = self.clock.unix_ms(now);
        let today = self.clock.day(now);
        let mut why = Unavailable { no_keys: self.keys.is_empty(), ..Unavailable::default() };
        let paused = self.paused_until(now);
        let mut candidates: Vec<Candidate> = Vec::with_capacity(self.keys.len());
        let mut bound = 0;
        // The session's key, when it is ready now (a probe of an invalid key
        // is no place to keep a conversation).
        let mut preferred_ready = None;
        for (index, key) in self.keys.iter().enumerate() {
            // A key bound to other models is never chosen (a request with no
            // model, a model list, may use any).
            if !model.is_empty() && !self.settings[index].serves(model) {
                continue;
            }
            bound += 1;
            if excluded.contains(key.id()) {
                why.excluded = true;
                continue;
            }
            let health = key.health();
            let mut availability = health.availability(model, now, today);
            if let Availability::Ready { .. } = availability {
                match health.budget_room(now_ms) {
                    BudgetRoom::Free => {}
                    // Freed when a request on the key ends, like a slot.
                    BudgetRoom::Reserved => availability = Availability::Full,
                    // Not a cooldown: nothing short of the period's end
                    // brings it back, and nobody waits for that.
                    BudgetRoom::Spent { resets_at } => {
                        why.budget_spent(self.budget_reset(resets_at));
                        continue;
                    }
                }
            }
            if let Availability::Ready { .. } = availability
                && let Some(until) = self.limits_free_at(index, &health, now, tokens)
            {
                // At its configured limits: as good as a rate limit's cooldown.
                availability = Availability::Cooling { until, rate_limited: true };
            }
            match availability {
                Availability::Ready { probe, .. } => {
                    if !probe && preferred == Some(key.id()) {
                        preferred_ready = Some(index);
                    }
                    let reliability = match self.options.selection {
                        // Decay costs a few float operations: only when asked.
                        Selection::Reliability => health.reliability.score(now),
                        _ => 1.0,
                    };
                    let candidate = Candidate {
                        index,
                        in_flight: key.in_flight(),
                        requests: health.requests_on(today),
                        last_used_unix_ms: key.last_used_unix_ms(),
                        weight: self.settings[index].weight,
                        reliability,
                    };
                    if pinned == Some(key.id()) {
                        candidates.clear();
                        candidates.push(candidate);
                        break;
                    }
                    candidates.push(candidate);
                }
                Availability::Full => why.full = true,
                Availability::FullUntil(until) => why.full_until(until),
                Availability::Cooling { until, rate_limited } => why.cooling(until, rate_limited),
                Availability::Unusable => {
                    if let Some(invalid) = health.invalid.filter(|_| !health.disabled) {
                        let until = invalid.until.max(now);
                        why.invalid_until = Some(why.invalid_until.map_or(until, |t| t.min(until)));
                    }
                }
            }
        }
        why.no_key_for_model = bound == 0 && !self.keys.is_empty();
        // Priority tiers: only the lowest tier that has a key ready now.
        if let Some(tier) = candidates.iter().map(|c| self.settings[c.index].priority).min() {
            candidates.retain(|c| self.settings[c.index].priority == tier);
        }
        if let Some(pause) = paused {
            // Usable again when both the pause and the first key's cooldown
            // are over; with every key invalid or disabled, the pause is moot.
            let key_ready = if candidates.is_empty() { why.cooling_until } else { Some(now) };
            if let Some(ready) = key_ready.or(why.full.then_some(now)) {
                // Rate limits on several keys started the pause.
                why.cooling_until = Some(pause.max(ready));
                why.rate_limited = true;
            }
            return Ok(Choice::Unavailable(why));
        }
        // Still there after the tier cut: the session stays on its key.
        let preferred = preferred_ready.filter(|&index| candidates.iter().any(|c| c.index == index));
        let Some(index) = preferred.or_else(|| {
            select::pick(self.options.selection, &candidates, self.keys.len(), &self.cursor, fastrand::f64())
        }) else {
            return Ok(Choice::Unavailable(why));
        };
        let key = &self.keys[index];
        let mut health = key.health();
        // Checked again under the lock: another request may have taken the
        // last slot, the probe or the last room in a window since the scan.
        // Full either way: the caller waits for the next freed slot, not
        // for this key's window alone (other keys may be ready).
        let probe = match health.availability(model, now, today) {
            Availability::Ready { probe, .. } => match self.limits_free_at(index, &health, now, tokens) {
                None => probe,
                Some(until) => {
                    drop(health);
                    why.full = true;
                    why.cooling(until, true);
                    return Ok(Choice::Unavailable(why));
                }
            },
            _ => {
                drop(health);
                why.full = true;
                return Ok(Choice::Unavailable(why));
            }
        };
        let budget = match health.reserve_budget(now_ms, ask.max_cost) {
            Ok(hold) => hold,
            // Another request took what was left since the scan: the next
            // scan sees the key full or spent.
            Err(_) => {
                why.full = true;
                return Err(why);
            }
        };
        health.probing |= probe;
        health.count_request(today);
        health.model(model, today, self.cap_of(index), now).counters.requests += 1;
        health.windows.count(&self.settings[index], limits::second(&self.clock, now), tokens);
        drop(health);
        key.in_flight.fetch_add(1, Relaxed);
        key.requests.fetch_add(1, Relaxed);
        key.last_used_unix_ms.store(self.clock.now_unix_ms(), Relaxed);
        let reserved_cost = budget.as_ref().map_or(0.0, crate::budget::BudgetHold::reserved);
        let lease = KeyLease {
            pool: self.clone(),
            index,
            leased_at: now,
            reserved_tokens: tokens,
            reserved_cost,
            ticket: self.shares_limits(index).then(Arc::default),
        };
        let guard = InFlight { pool: self.clone(), index, model: model.into(), probe, budget };
        Ok(Choice::Leased(lease, guard))
    }

    /// When the first key cooling for `model` comes back, if any is cooling.
    pub fn earliest_cooldown(&self, model: &str) -> Option<Instant> {
        let now = Instant::now();
        let today = self.clock.day(now);
        let keys = self.keys.iter().filter_map(|key| match key.health().availability(model, now, today) {
            Availability::Cooling { until, .. } => Some(until),
            _ => None,
        });
        keys.chain(self.paused_until(now)).min()
    }

    /// [`choose`](Self::choose) for a request without a model, excluding nothing.
    pub fn lease(self: &Arc<Self>) -> Option<(KeyLease, InFlight)> {
        match self.choose("", &[], None) {
            Choice::Leased(lease, in_flight) => Some((lease, in_flight)),
            Choice::Unavailable(_) => None,
        }
    }

    fn paused_until(&self, now: Instant) -> Option<Instant> {
        if !self.maybe_paused.load(Relaxed) {
            return None;
        }
        let state = self.pause_state.lock().unwrap_or_else(|p| p.into_inner());
        let until = state.until.filter(|&until| until > now);
        if until.is_none() {
            self.maybe_paused.store(false, Relaxed);
        }
        until
    }

    /// Records one attempt's outcome for (key, model): success, or a
    /// classified failure that may cool the model, mark the key invalid, or
    /// pause the provider. Returns the end of the cooldown it started.
    pub fn record(&self, index: usize, model: &str, outcome: Result<(), Failure>) -> Option<Instant> {
        self.record_timed(index, model, outcome, None)
    }

    /// [`record`](Self::record), with the time the attempt took to its
    /// answer's head, for the `reliability` strategy: a success with its
    /// latency, and an upstream failure (5xx, reset, timeout), count there;
    /// rate limits and quotas have their cooldowns, and a client's mistake
    /// is not the key's.
    pub fn record_timed(
        &self,
        index: usize,
        model: &str,
        outcome: Result<(), Failure>,
        latency: Option<Duration>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let key = &self.keys[index];
        let mut health = key.health();
        match (outcome, latency) {
            (Ok(()), Some(latency)) => health.reliability.record(true, latency, now),
            (Err(failure), _) if failure.class == FailureClass::Transient => {
                health.reliability.record(false, latency.unwrap_or_default(), now);
            }
            _ => {}
        }
        let invalid_before = health.invalid.map(|i| i.until);
        let started = health.record(model, outcome, &self.clock, self.cap_of(index), now);
        let newly_invalid = health.invalid.map(|i| i.until).filter(|&until| Some(until) != invalid_before);
        // A model the provider answered with success is a real model: a
        // metric label. Only the first success per (key, model) asks.
        let unsettled_success = outcome.is_ok() && health.models.get(model).is_some_and(|m| !m.label_settled);
        drop(health);
        if unsettled_success
            && self.labels.accepted(self.provider.id().as_str(), model)
            && let Some(state) = key.health().models.get_mut(model)
        {
            state.label_settled = true;
        }
        let labels = || [("provider", self.provider.id().as_str().to_owned()), ("key", key.id().as_str().to_owned())];
        if let Some(until) = newly_invalid {
            self.announce(|clock| super::PoolEvent::Invalid {
                key: key.id().as_str().to_owned(),
                until_unix_ms: clock.unix_ms(until),
            });
        }
        if let Some(cooldown) = started {
            self.announce(|clock| super::PoolEvent::Cooled {
                key: key.id().as_str().to_owned(),
                model: model.to_owned(),
                until_unix_ms: clock.unix_ms(cooldown.until),
                class: cooldown.class,
            });
            let [provider, key_label] = labels();
            metrics::counter!(
                crate::metrics::COOLDOWNS,
                &[provider, key_label, ("class", cooldown.class.as_str().to_owned())]
            )
            .increment(1);
            tracing::info!(
                key = key.id().as_str(),
                model,
                class = cooldown.class.as_str(),
                cooldown_secs = cooldown.until.saturating_duration_since(now).as_secs_f64(),
                "key cooling down for this model"
            );
        }
        match outcome {
            Err(failure) if failure.class == FailureClass::Credential => {
                tracing::warn!(key = key.id().as_str(), "key refused by the provider: marked invalid");
                let [provider, key_label] = labels();
                metrics::counter!(
                    crate::metrics::COOLDOWNS,
                    &[provider, key_label, ("class", "credential".to_owned())]
                )
                .increment(1);
            }
            Err(failure) if failure.class == FailureClass::RateLimit => self.note_rate_limit(index, now),
            _ => {}
        }
        // A probe that ended, or a success, may free a waiting request.
        self.slot_freed.notify_waiters();
        started.map(|c| c.until)
    }

    fn note_rate_limit(&self, index: usize, now: Instant) {
        let ProviderPause { distinct_keys, window, pause } = self.pause;
        if distinct_keys == 0 || self.keys.len() < distinct_keys {
            return;
        }
        let mut state = self.pause_state.lock().unwrap_or_else(|p| p.into_inner());
        state.recent.retain(|&(_, at)| now.saturating_duration_since(at) <= window);
        state.recent.push_back((index, now));
        let mut distinct: Vec<usize> = state.recent.iter().map(|&(i, _)| i).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= distinct_keys {
            state.until = Some(now + pause);
            self.maybe_paused.store(true, Relaxed);
            state.recent.clear();
            self.announce(|clock| super::PoolEvent::paused(self.provider.id().as_str(), clock.unix_ms(now + pause)));
            tracing::warn!(
                provider = self.provider.id().as_str(),
                keys = distinct.len(),
                pause_secs = pause.as_secs_f64(),
                "several keys rate limited at once: pausing the provider"
            );
        }
    }

    /// The (key, model) concurrency slots, when the provider caps them.
    pub fn slots(&self, index: usize, model: &str) -> Option<Arc<Semaphore>> {
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        health.model(model, today, self.cap_of(index), now).slots.clone()
    }
}

impl fmt::Debug for ProviderPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderPool")
            .field("provider", self.provider.id())
            .field("options", &self.options)
            .field("keys", &self.keys.len())
            .finish()
    }
}
