//! `KeyPool`: every provider and its keys, shared by the layers and the
//! status routes as `Arc<KeyPool>`. It is state, not a layer: built once,
//! read on the request path under tiny per-key locks, never across an await.
//!
//! Each key has per-model cooldowns (rate limits, quota, repeated transient
//! failures), an invalid mark with an escalating cooldown after which one
//! request probes it, an operator's disabled switch, optional per-model
//! concurrency slots, and per-day counters. See [`ProviderPool::choose`].
//!
//! ```
//! use keyrelay_layers::pool::{Choice, KeyPool, Secret, Selection};
//! use keyrelay_layers::provider::Provider;
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let pool = KeyPool::builder()
//!     .provider(openai, Selection::RoundRobin, vec![Secret::new("sk-a"), Secret::new("sk-b")])
//!     .build()
//!     .unwrap();
//!
//! let provider = pool.provider("openai").unwrap();
//! let Choice::Leased(lease, in_flight) = provider.choose("gpt-4o", &[], None) else { panic!() };
//! assert!(lease.key_id().as_str().starts_with("openai:"));
//! assert_eq!(provider.keys()[0].in_flight(), 1);
//! drop(in_flight);
//! # });
//! ```

mod clock;
mod health;
mod key;
mod select;
mod snapshot;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderName, HeaderValue};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

pub use self::{
    clock::{PoolClock, invalid_ladder, rate_limit_ladder},
    health::{Counters, KeyState},
    key::{InvalidKey, KeyEntry, KeyId, Secret},
    select::{Selection, UnknownSelection},
    snapshot::{KeySnapshot, ModelSnapshot, PoolSnapshot, SNAPSHOT_VERSION},
};
use self::{health::Availability, select::Candidate};
use crate::metrics::HandleCache;
use crate::{
    classify::{Failure, FailureClass},
    provider::{Provider, ProviderId},
};

/// Per-provider settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// How the next key is chosen.
    pub selection: Selection,
    /// Hard cap of requests in flight per (key, model); 0 = no cap.
    pub max_concurrent_per_key: usize,
}

impl ProviderOptions {
    /// Options with this strategy and no concurrency cap.
    pub fn new(selection: Selection) -> Self {
        Self { selection, max_concurrent_per_key: 0 }
    }
    /// Caps requests in flight per (key, model); 0 = no cap.
    pub fn max_concurrent_per_key(mut self, cap: usize) -> Self {
        self.max_concurrent_per_key = cap;
        self
    }
}

/// When several distinct keys of one provider are rate limited within a
/// short window, the limit is the provider's (per IP or per account): pause
/// the provider briefly instead of burning every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderPause {
    /// Distinct keys; 0 turns the pause off.
    pub distinct_keys: usize,
    /// Within this long of each other.
    pub window: Duration,
    /// How long the provider is paused.
    pub pause: Duration,
}

impl Default for ProviderPause {
    fn default() -> Self {
        Self { distinct_keys: 3, window: Duration::from_secs(10), pause: Duration::from_secs(10) }
    }
}

impl ProviderPause {
    /// `distinct_keys` rate limited within `window` pause the provider for `pause`.
    pub fn new(distinct_keys: usize, window: Duration, pause: Duration) -> Self {
        Self { distinct_keys, window, pause }
    }
}

/// Collects providers and keys for a [`KeyPool`].
#[derive(Debug, Default)]
pub struct KeyPoolBuilder {
    providers: Vec<(Provider, ProviderOptions, Vec<Secret>)>,
    wall_anchor: Option<SystemTime>,
    daily_reset_offset: Duration,
    pause: ProviderPause,
    carry_over: Option<Arc<KeyPool>>,
}

impl KeyPoolBuilder {
    /// Builds the pool as a reload of `previous`: a key it already had (same
    /// provider, secret and auth header) keeps its state, shared with
    /// requests still in flight on `previous` — cooldowns, invalid marks,
    /// counters, in-flight counts and concurrency slots — and a provider
    /// keeps the models it listed. Keys not given again leave with
    /// `previous`, once the requests holding them finish.
    ///
    /// ```
    /// use keyrelay_layers::{pool::{KeyPool, Secret}, provider::Provider};
    ///
    /// let openai = || Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    /// let old = KeyPool::builder().provider(openai(), Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
    /// let (_lease, _in_flight) = old.provider("openai").unwrap().lease().unwrap();
    /// let new = KeyPool::builder()
    ///     .carry_over(old.clone())
    ///     .provider(openai(), Default::default(), vec![Secret::new("sk-1"), Secret::new("sk-2")])
    ///     .build()
    ///     .unwrap();
    /// let statuses = new.key_statuses();
    /// assert_eq!(statuses.len(), 2);
    /// assert_eq!(statuses[0].in_flight, 1, "the request on the old pool still counts");
    /// ```
    pub fn carry_over(mut self, previous: Arc<KeyPool>) -> Self {
        self.carry_over = Some(previous);
        self
    }

    /// Adds a provider (a provider with no keys is known, and its requests
    /// fail with 503). A secret given twice counts once.
    pub fn provider(self, provider: Provider, selection: Selection, keys: Vec<Secret>) -> Self {
        self.provider_with(provider, ProviderOptions::new(selection), keys)
    }

    /// [`provider`](Self::provider) with every option, not just the strategy.
    pub fn provider_with(mut self, provider: Provider, options: ProviderOptions, keys: Vec<Secret>) -> Self {
        self.providers.push((provider, options, keys));
        self
    }

    /// The time of day (UTC) at which daily counters and rate-limit and
    /// quota cooldowns reset; default 00:00.
    pub fn daily_reset_utc(mut self, after_midnight: Duration) -> Self {
        self.daily_reset_offset = after_midnight;
        self
    }

    /// The wall time that tokio's "now" stands for (default: the system
    /// clock when built); tests pin it.
    pub fn wall_clock(mut self, now: SystemTime) -> Self {
        self.wall_anchor = Some(now);
        self
    }

    /// When rate limits on several keys pause the whole provider
    /// (default: [`ProviderPause::default`]).
    pub fn provider_pause(mut self, pause: ProviderPause) -> Self {
        self.pause = pause;
        self
    }

    /// The pool; fails when a key cannot be sent as a header value.
    pub fn build(self) -> Result<Arc<KeyPool>, InvalidKey> {
        let clock = PoolClock::new(self.wall_anchor.unwrap_or_else(SystemTime::now), self.daily_reset_offset.as_secs());
        let mut providers = Vec::with_capacity(self.providers.len());
        let mut by_id = HashMap::with_capacity_and_hasher(self.providers.len(), Default::default());
        for (provider, options, secrets) in self.providers {
            let mut keys: Vec<Arc<KeyEntry>> = Vec::with_capacity(secrets.len());
            for (position, secret) in secrets.into_iter().enumerate() {
                if keys.iter().any(|key| *key.secret() == secret) {
                    continue;
                }
                let fresh = KeyEntry::new(&provider, secret, position + 1)?;
                let kept = self.carry_over.as_ref().and_then(|old| old.same_key(&fresh));
                keys.push(kept.unwrap_or_else(|| Arc::new(fresh)));
            }
            let known_models = self
                .carry_over
                .as_ref()
                .and_then(|old| old.provider(provider.id().as_str()))
                .map(|old| old.known_models.read().unwrap_or_else(|p| p.into_inner()).clone())
                .unwrap_or_default();
            by_id.insert(provider.id().as_str().into(), providers.len());
            providers.push(Arc::new(ProviderPool {
                provider: Arc::new(provider),
                options,
                keys: keys.into(),
                cursor: AtomicUsize::new(0),
                clock,
                pause: self.pause,
                pause_state: Mutex::default(),
                maybe_paused: AtomicBool::new(false),
                slot_freed: Notify::new(),
                known_models: std::sync::RwLock::new(known_models),
                attempt_counters: HandleCache::default(),
                token_counters: HandleCache::default(),
            }));
        }
        Ok(Arc::new(KeyPool { providers, by_id, clock }))
    }
}

/// Every provider the proxy knows, with its keys.
#[derive(Debug)]
pub struct KeyPool {
    providers: Vec<Arc<ProviderPool>>,
    // foldhash, not SipHash: looked up several times per request, keyed by
    // the pool's own provider ids.
    by_id: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    clock: PoolClock,
}

impl KeyPool {
    /// Starts an empty pool.
    pub fn builder() -> KeyPoolBuilder {
        KeyPoolBuilder::default()
    }

    /// The provider with this id.
    pub fn provider(&self, id: &str) -> Option<&Arc<ProviderPool>> {
        self.by_id.get(id).map(|&index| &self.providers[index])
    }

    /// Providers in the order they were added.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderPool>> {
        self.providers.iter()
    }

    /// The pool's clock (wall time, days).
    pub fn clock(&self) -> &PoolClock {
        &self.clock
    }

    /// This pool's entry for the key `fresh` describes, if it is the same
    /// key sent the same way.
    fn same_key(&self, fresh: &KeyEntry) -> Option<Arc<KeyEntry>> {
        let (pool, index) = self.key(fresh.id().as_str())?;
        let old = &pool.keys[index];
        (old.secret() == fresh.secret() && old.auth_header() == fresh.auth_header()).then(|| old.clone())
    }

    /// The key with this id (`provider:1a2b3c4d`).
    pub fn key(&self, id: &str) -> Option<(&Arc<ProviderPool>, usize)> {
        let (provider, _) = id.split_once(':')?;
        let pool = self.provider(provider)?;
        pool.keys.iter().position(|k| k.id().as_str() == id).map(|index| (pool, index))
    }

    /// Switches a key off or on (admin). `false` when there is no such key.
    pub fn set_disabled(&self, id: &str, disabled: bool) -> bool {
        let Some((pool, index)) = self.key(id) else { return false };
        pool.keys[index].health().disabled = disabled;
        if !disabled {
            pool.slot_freed.notify_waiters();
        }
        true
    }

    /// Clears every cooldown and mark of a key (admin). `false` when there
    /// is no such key.
    pub fn reset(&self, id: &str) -> bool {
        let Some((pool, index)) = self.key(id) else { return false };
        pool.keys[index].health().reset();
        pool.slot_freed.notify_waiters();
        true
    }

    /// What `/v1/keys` shows: ids, states, cooldowns and counters, never a secret.
    pub fn key_statuses(&self) -> Vec<KeyStatus> {
        self.providers.iter().flat_map(|pool| (0..pool.keys.len()).map(|i| pool.status(i))).collect()
    }

    /// One key's [`KeyStatus`], by id.
    pub fn key_status(&self, id: &str) -> Option<KeyStatus> {
        self.key(id).map(|(pool, index)| pool.status(index))
    }
}

#[derive(Debug, Default)]
struct PauseState {
    recent: VecDeque<(usize, Instant)>,
    until: Option<Instant>,
}

/// One provider and its keys.
pub struct ProviderPool {
    provider: Arc<Provider>,
    options: ProviderOptions,
    keys: Box<[Arc<KeyEntry>]>,
    cursor: AtomicUsize,
    clock: PoolClock,
    pause: ProviderPause,
    pause_state: Mutex<PauseState>,
    /// Set with `pause_state.until`: choosing a key looks here first, so the
    /// common case (no pause) takes no lock.
    maybe_paused: AtomicBool,
    slot_freed: Notify,
    /// Models the provider listed: safe as metric labels.
    known_models: std::sync::RwLock<std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>>,
    /// `keyrelay_upstream_attempts_total` by (key index, outcome).
    attempt_counters: HandleCache<(usize, &'static str), metrics::Counter>,
    /// `keyrelay_tokens_total` (prompt, completion) by model label.
    token_counters: HandleCache<Arc<str>, [metrics::Counter; 2]>,
}

/// The answer of [`ProviderPool::choose`].
#[derive(Debug)]
pub enum Choice {
    /// A key, counted in flight until the guard drops.
    Leased(KeyLease, InFlight),
    /// No key now; why, and when one might be.
    Unavailable(Unavailable),
}

/// Why no key could be chosen, and when one might be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unavailable {
    /// The provider has no key at all.
    pub no_keys: bool,
    /// The earliest end of a cooldown (or of a provider pause) among keys
    /// not excluded.
    pub cooling_until: Option<Instant>,
    /// Some key is usable but has no free slot: wait on [`ProviderPool::slot_freed`].
    pub full: bool,
    /// Some keys were skipped because the request already tried them.
    pub excluded: bool,
    /// The earliest time an invalid key may be probed.
    pub invalid_until: Option<Instant>,
}

impl ProviderPool {
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

    /// Remembers the models the provider listed (see [`Self::model_label`]).
    pub fn learn_models(&self, models: &[String]) {
        let mut known = self.known_models.write().unwrap_or_else(|p| p.into_inner());
        known.extend(models.iter().map(|m| Arc::from(m.as_str())));
    }

    /// `model` when the operator named it or the provider listed it, else
    /// `other`: model names come from clients, and labels must stay few.
    pub fn model_label(&self, model: &str) -> Arc<str> {
        static OTHER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("other"));
        if let Some(listed) = self.known_models.read().unwrap_or_else(|p| p.into_inner()).get(model) {
            return listed.clone();
        }
        if self.provider.models().iter().any(|m| m == model) { Arc::from(model) } else { OTHER.clone() }
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
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut why = Unavailable { no_keys: self.keys.is_empty(), ..Unavailable::default() };
        let paused = self.paused_until(now);
        let mut candidates: Vec<Candidate> = Vec::with_capacity(self.keys.len());
        for (index, key) in self.keys.iter().enumerate() {
            if excluded.contains(key.id()) {
                why.excluded = true;
                continue;
            }
            let health = key.health();
            match health.availability(model, now, today) {
                Availability::Ready { .. } => {
                    let candidate = Candidate {
                        index,
                        in_flight: key.in_flight(),
                        requests: health.requests_on(today),
                        last_used_unix_ms: key.last_used_unix_ms(),
                    };
                    if pinned == Some(key.id()) {
                        candidates.clear();
                        candidates.push(candidate);
                        break;
                    }
                    candidates.push(candidate);
                }
                Availability::Full => why.full = true,
                Availability::CoolingUntil(until) => {
                    why.cooling_until = Some(why.cooling_until.map_or(until, |t| t.min(until)));
                }
                Availability::Unusable => {
                    if let Some(invalid) = health.invalid.filter(|_| !health.disabled) {
                        let until = invalid.until.max(now);
                        why.invalid_until = Some(why.invalid_until.map_or(until, |t| t.min(until)));
                    }
                }
            }
        }
        if let Some(pause) = paused {
            // Usable again when both the pause and the first key's cooldown
            // are over; with every key invalid or disabled, the pause is moot.
            let key_ready = if candidates.is_empty() { why.cooling_until } else { Some(now) };
            if let Some(ready) = key_ready.or(why.full.then_some(now)) {
                why.cooling_until = Some(ready.max(pause));
            }
            return Choice::Unavailable(why);
        }
        let Some(index) = select::pick(self.options.selection, &candidates, self.keys.len(), &self.cursor) else {
            return Choice::Unavailable(why);
        };
        let key = &self.keys[index];
        let mut health = key.health();
        // Checked again under the lock: another request may have taken the
        // last slot or the probe since the scan.
        let probe = match health.availability(model, now, today) {
            Availability::Ready { probe, .. } => probe,
            _ => {
                drop(health);
                why.full = true;
                return Choice::Unavailable(why);
            }
        };
        health.probing |= probe;
        health.count_request(today);
        health.model(model, today, self.options.max_concurrent_per_key, now).counters.requests += 1;
        drop(health);
        key.in_flight.fetch_add(1, Relaxed);
        key.requests.fetch_add(1, Relaxed);
        key.last_used_unix_ms.store(self.clock.now_unix_ms(), Relaxed);
        let lease = KeyLease { pool: self.clone(), index };
        let guard = InFlight { pool: self.clone(), index, model: model.into(), probe };
        Choice::Leased(lease, guard)
    }

    /// When the first key cooling for `model` comes back, if any is cooling.
    pub fn earliest_cooldown(&self, model: &str) -> Option<Instant> {
        let now = Instant::now();
        let today = self.clock.day(now);
        let keys = self.keys.iter().filter_map(|key| match key.health().availability(model, now, today) {
            Availability::CoolingUntil(until) => Some(until),
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
        let now = Instant::now();
        let key = &self.keys[index];
        let started = key.health().record(model, outcome, &self.clock, self.options.max_concurrent_per_key, now);
        let labels = || [("provider", self.provider.id().as_str().to_owned()), ("key", key.id().as_str().to_owned())];
        if let Some(cooldown) = started {
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
            tracing::warn!(
                provider = self.provider.id().as_str(),
                keys = distinct.len(),
                pause_secs = pause.as_secs_f64(),
                "several keys rate limited at once: pausing the provider"
            );
        }
    }

    /// Counts the tokens an answer reported for (key, model).
    pub fn count_usage(&self, index: usize, model: &str, usage: crate::usage::Usage) {
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        let counters = &mut health.model(model, today, self.options.max_concurrent_per_key, now).counters;
        counters.tokens_in += usage.prompt_tokens;
        counters.tokens_out += usage.completion_tokens;
        drop(health);
        let [prompt, completion] = self.token_counters.get(self.model_label(model), |label| {
            let provider = self.provider.id().as_str().to_owned();
            ["prompt", "completion"].map(|kind| {
                let labels = [("provider", provider.clone()), ("model", label.to_string()), ("kind", kind.to_owned())];
                metrics::counter!(crate::metrics::TOKENS, &labels)
            })
        });
        prompt.increment(usage.prompt_tokens);
        completion.increment(usage.completion_tokens);
    }

    /// Counts one upstream attempt of key `index` in
    /// `keyrelay_upstream_attempts_total`.
    pub(crate) fn count_attempt(&self, index: usize, outcome: &'static str) {
        let counter = self.attempt_counters.get((index, outcome), |&(index, outcome)| {
            let labels = [
                ("provider", self.provider.id().as_str().to_owned()),
                ("key", self.keys[index].id().as_str().to_owned()),
                ("outcome", outcome.to_owned()),
            ];
            metrics::counter!(crate::metrics::UPSTREAM_ATTEMPTS, &labels)
        });
        counter.increment(1);
    }

    /// The (key, model) concurrency slots, when the provider caps them.
    pub fn slots(&self, index: usize, model: &str) -> Option<Arc<Semaphore>> {
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        health.model(model, today, self.options.max_concurrent_per_key, now).slots.clone()
    }

    fn status(&self, index: usize) -> KeyStatus {
        let key = &self.keys[index];
        let now = Instant::now();
        let today = self.clock.day(now);
        let health = key.health();
        let mut today_counters = Counters::default();
        let mut cooldowns = Vec::new();
        let mut models: Vec<ModelStatus> = Vec::new();
        for (model, state) in &health.models {
            if let Some(c) = state.active_cooldown(now, today) {
                cooldowns.push(CooldownStatus {
                    model: model.to_string(),
                    reason: c.class.as_str(),
                    until_unix_ms: self.clock.unix_ms(c.until),
                    remaining_secs: c.until.saturating_duration_since(now).as_secs(),
                });
            }
            if state.day == today && !model.is_empty() {
                today_counters.add(&state.counters);
                models.push(ModelStatus { model: model.to_string(), today: state.counters.clone() });
            }
        }
        cooldowns.sort_by(|a, b| a.model.cmp(&b.model));
        models.sort_by(|a, b| a.model.cmp(&b.model));
        KeyStatus {
            id: key.id().as_str().to_owned(),
            provider: self.provider.id().as_str().to_owned(),
            state: health.state(now, today),
            in_flight: key.in_flight(),
            requests: key.requests(),
            last_used_unix_ms: Some(key.last_used_unix_ms()).filter(|&ms| ms > 0),
            invalid_until_unix_ms: health.invalid.map(|i| self.clock.unix_ms(i.until)),
            cooldowns,
            today: today_counters,
            models,
        }
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

/// The key chosen for one attempt: an identity, cheap to clone, carried in
/// request extensions to the upstream and copied onto the response.
#[derive(Clone)]
pub struct KeyLease {
    pool: Arc<ProviderPool>,
    index: usize,
}

impl KeyLease {
    /// Counts one attempt on this key in `keyrelay_upstream_attempts_total`.
    pub(crate) fn count_attempt(&self, outcome: &'static str) {
        self.pool.count_attempt(self.index, outcome);
    }

    /// The leased key.
    pub fn key(&self) -> &Arc<KeyEntry> {
        &self.pool.keys[self.index]
    }
    /// The leased key's id.
    pub fn key_id(&self) -> &KeyId {
        self.key().id()
    }
    /// The key's provider.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.pool.provider
    }
    /// The key's provider's id.
    pub fn provider_id(&self) -> &ProviderId {
        self.pool.provider.id()
    }
    /// The provider's pool the key belongs to.
    pub fn pool(&self) -> &Arc<ProviderPool> {
        &self.pool
    }
    /// The header (name, sensitive value) that authenticates this key.
    pub fn auth_header(&self) -> (&HeaderName, &HeaderValue) {
        self.key().auth_header()
    }
    /// The key's secret.
    pub fn secret(&self) -> &Secret {
        self.key().secret()
    }
    /// Records this attempt's outcome for (key, `model`); returns the end
    /// of the cooldown it started, if any.
    pub fn record(&self, model: &str, outcome: Result<(), Failure>) -> Option<Instant> {
        self.pool.record(self.index, model, outcome)
    }
    /// The (key, `model`) concurrency slots, when capped.
    pub fn slots(&self, model: &str) -> Option<Arc<Semaphore>> {
        self.pool.slots(self.index, model)
    }

    /// Counts the tokens an answer reported for (key, `model`).
    pub fn count_usage(&self, model: &str, usage: crate::usage::Usage) {
        self.pool.count_usage(self.index, model, usage);
    }
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyLease").field(self.key_id()).finish()
    }
}

/// Holds one request in a key's in-flight count until dropped. It lives in
/// the response body, so a stream counts until its last byte.
pub struct InFlight {
    pool: Arc<ProviderPool>,
    index: usize,
    model: Arc<str>,
    probe: bool,
}

impl InFlight {
    /// Counts the tokens a successful answer reported.
    pub fn count_usage(&self, usage: crate::usage::Usage) {
        self.pool.count_usage(self.index, &self.model, usage);
    }

    /// A stream broke after its headers: a transient failure of this key.
    pub fn stream_broke(&self) {
        let labels = [
            ("provider", self.pool.provider.id().as_str().to_owned()),
            ("key", self.pool.keys[self.index].id().as_str().to_owned()),
        ];
        metrics::counter!(crate::metrics::STREAM_BREAKS, &labels).increment(1);
        let _cooling_until = self.pool.record(self.index, &self.model, Err(Failure::new(FailureClass::Transient)));
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight").field("key", self.pool.keys[self.index].id()).finish_non_exhaustive()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let key = &self.pool.keys[self.index];
        key.in_flight.fetch_sub(1, Relaxed);
        if self.probe {
            // The probe ended without a verdict (the client left): let
            // another request probe.
            key.health().probing = false;
        }
        self.pool.slot_freed.notify_waiters();
    }
}

/// A (key, model) concurrency permit that wakes waiting requests when freed.
pub struct SlotPermit {
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<ProviderPool>,
}

impl SlotPermit {
    /// Holds `permit`; dropping it wakes requests waiting on `pool`.
    pub fn new(permit: OwnedSemaphorePermit, pool: Arc<ProviderPool>) -> Self {
        Self { permit: Some(permit), pool }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        // Released before the wake-up, so the woken request finds it free.
        drop(self.permit.take());
        self.pool.slot_freed.notify_waiters();
    }
}

impl fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPermit").finish_non_exhaustive()
    }
}

/// One cooldown as `/v1/keys` shows it.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CooldownStatus {
    /// The model that is cooling on this key.
    pub model: String,
    /// The failure class that started it (`rate_limit`, `quota`, `transient`).
    pub reason: &'static str,
    /// When it ends, in milliseconds since the Unix epoch.
    pub until_unix_ms: u64,
    /// Whole seconds left.
    pub remaining_secs: u64,
}

/// One model's counters today.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ModelStatus {
    /// The model's name.
    pub model: String,
    /// The (key, model) counters of the current day.
    pub today: Counters,
}

/// One key as `/v1/keys` shows it.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KeyStatus {
    /// The key's id (`provider:1a2b3c4d`).
    pub id: String,
    /// The key's provider.
    pub provider: String,
    /// The state status pages show.
    pub state: KeyState,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Requests sent with the key since start (or since the state file).
    pub requests: u64,
    /// Last use, in milliseconds since the Unix epoch; `None` if never used.
    pub last_used_unix_ms: Option<u64>,
    /// When an invalid key may be probed again.
    pub invalid_until_unix_ms: Option<u64>,
    /// Cooldowns in force, by model.
    pub cooldowns: Vec<CooldownStatus>,
    /// The key's counters today, over all models.
    pub today: Counters,
    /// The key's counters today, per model.
    pub models: Vec<ModelStatus>,
}
