//! How a [`KeyPool`] is configured and built: per-provider options, the
//! provider pause, and the builder that carries state over a reload.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;

use super::{
    Affinity, DEFAULT_AFFINITY_CAPACITY, InvalidKey, KeyEntry, KeyPool, KeySettings, PoolClock, ProviderPool,
    ResponseOwners, Secret, Selection, SessionAffinity, labels::ModelLabels,
};
use crate::{metrics::HandleCache, provider::Provider};

/// Per-provider settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// How the next key is chosen.
    pub selection: Selection,
    /// Hard cap of requests in flight per (key, model); 0 = no cap.
    pub max_concurrent_per_key: usize,
    /// Most distinct models learned as metric labels from the provider's
    /// successful answers (see [`ProviderPool::model_label`]); configured
    /// and listed models do not count. Default [`DEFAULT_MAX_MODEL_LABELS`].
    pub max_model_labels: usize,
    /// Whether requests of one session stay on one key (default
    /// [`Affinity::Session`]).
    pub affinity: Affinity,
    /// How long a silent session keeps its key (default
    /// [`DEFAULT_AFFINITY_TTL`](super::DEFAULT_AFFINITY_TTL)).
    pub affinity_ttl: Duration,
}

/// The default of [`ProviderOptions::max_model_labels`]: more than the
/// models a deployment really uses on one provider (a provider's whole
/// catalogue is listed, not learned), few enough that an upstream accepting
/// any name adds at most this many label values to each per-model series.
pub const DEFAULT_MAX_MODEL_LABELS: usize = 100;

impl Default for ProviderOptions {
    fn default() -> Self {
        Self::new(Selection::default())
    }
}

impl ProviderOptions {
    /// Options with this strategy, no concurrency cap, and the default cap
    /// of learned model labels.
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            max_concurrent_per_key: 0,
            max_model_labels: DEFAULT_MAX_MODEL_LABELS,
            affinity: Affinity::default(),
            affinity_ttl: super::DEFAULT_AFFINITY_TTL,
        }
    }
    /// Caps requests in flight per (key, model); 0 = no cap.
    pub fn max_concurrent_per_key(mut self, cap: usize) -> Self {
        self.max_concurrent_per_key = cap;
        self
    }
    /// Caps the distinct models learned as metric labels from successful
    /// answers; 0 learns none (only configured and listed models are labels).
    pub fn max_model_labels(mut self, cap: usize) -> Self {
        self.max_model_labels = cap;
        self
    }
    /// Whether requests of one session stay on one key.
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = affinity;
        self
    }
    /// How long a silent session keeps its key.
    pub fn affinity_ttl(mut self, ttl: Duration) -> Self {
        self.affinity_ttl = ttl;
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

/// One key as the builder takes it: the secret and how it is used.
type KeySpec = (Secret, KeySettings);

/// Collects providers and keys for a [`KeyPool`].
#[derive(Debug, Default)]
pub struct KeyPoolBuilder {
    providers: Vec<(Provider, ProviderOptions, Vec<KeySpec>)>,
    wall_anchor: Option<SystemTime>,
    daily_reset_offset: Duration,
    pause: ProviderPause,
    carry_over: Option<Arc<KeyPool>>,
    responses: Option<(usize, Duration)>,
    prices: Arc<crate::price::PriceTable>,
    events: Option<Arc<dyn super::PoolEvents>>,
    admission: Option<Arc<dyn super::SharedAdmission>>,
}

impl KeyPoolBuilder {
    /// Builds the pool as a reload of `previous`: a key it already had (same
    /// provider, secret and auth header) keeps its state, shared with
    /// requests still in flight on `previous` — cooldowns, invalid marks,
    /// counters, in-flight counts and concurrency slots — and a provider
    /// keeps the models it listed. A key keeps what it spent of its budget
    /// (the budget itself is the new settings'). Keys not given again leave
    /// with `previous`, once the requests holding them finish.
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
    pub fn provider_with(self, provider: Provider, options: ProviderOptions, keys: Vec<Secret>) -> Self {
        let keys = keys.into_iter().map(|secret| (secret, KeySettings::default())).collect();
        self.provider_keys(provider, options, keys)
    }

    /// [`provider_with`](Self::provider_with), each key with its own
    /// [`KeySettings`] (weight, priority tier, model binding, concurrency
    /// cap). A secret given twice counts once, with its first settings.
    ///
    /// ```
    /// use keyrelay_layers::{pool::{KeyPool, KeySettings, Secret}, provider::Provider};
    ///
    /// let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    /// let pool = KeyPool::builder()
    ///     .provider_keys(openai, Default::default(), vec![
    ///         (Secret::new("sk-free"), KeySettings::new()),
    ///         (Secret::new("sk-paid"), KeySettings::new().priority(1).models(&["gpt-4o*".to_owned()])),
    ///     ])
    ///     .build()
    ///     .unwrap();
    /// let openai = pool.provider("openai").unwrap();
    /// assert_eq!(openai.settings(1).priority, 1);
    /// ```
    pub fn provider_keys(
        mut self,
        provider: Provider,
        options: ProviderOptions,
        keys: Vec<(Secret, KeySettings)>,
    ) -> Self {
        self.providers.push((provider, options, keys));
        self
    }

    /// Announces each cooldown and invalid mark the pool starts to `events`
    /// (other replicas apply them with [`KeyPool::apply`]).
    pub fn events(mut self, events: Arc<dyn super::PoolEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Admits attempts on keys with a concurrency cap, windows or a budget
    /// against the limits all replicas share (see
    /// [`SharedAdmission`](super::SharedAdmission)).
    pub fn admission(mut self, admission: Arc<dyn super::SharedAdmission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// What requests cost, for keys' budgets and the cost of an answer
    /// (default: no prices).
    pub fn prices(mut self, prices: Arc<crate::price::PriceTable>) -> Self {
        self.prices = prices;
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

    /// How many Responses API response ids the pool remembers the key of,
    /// and for how long (default [`DEFAULT_REMEMBERED_RESPONSES`](super::DEFAULT_REMEMBERED_RESPONSES), 30 days);
    /// a reload keeps the previous pool's memory.
    pub fn remembered_responses(mut self, capacity: usize, ttl: Duration) -> Self {
        self.responses = Some((capacity, ttl));
        self
    }

    /// The pool; fails when a key cannot be sent as a header value.
    pub fn build(self) -> Result<Arc<KeyPool>, InvalidKey> {
        let clock = PoolClock::new(self.wall_anchor.unwrap_or_else(SystemTime::now), self.daily_reset_offset.as_secs());
        let responses = match (&self.carry_over, self.responses) {
            (Some(old), _) => old.responses().clone(),
            (None, Some((capacity, ttl))) => Arc::new(ResponseOwners::new(capacity, ttl)),
            (None, None) => Arc::default(),
        };
        if let Some(events) = &self.events {
            responses.announce_to(events.clone());
        }
        let mut providers = Vec::with_capacity(self.providers.len());
        let mut by_id = HashMap::with_capacity_and_hasher(self.providers.len(), Default::default());
        for (provider, options, secrets) in self.providers {
            let mut keys: Vec<Arc<KeyEntry>> = Vec::with_capacity(secrets.len());
            let mut settings = Vec::with_capacity(secrets.len());
            for (position, (secret, key_settings)) in secrets.into_iter().enumerate() {
                if keys.iter().any(|key| *key.secret() == secret) {
                    continue;
                }
                let fresh = KeyEntry::new(&provider, secret, position + 1)?;
                let kept = self.carry_over.as_ref().and_then(|old| old.same_key(&fresh));
                let key = kept.unwrap_or_else(|| Arc::new(fresh));
                // A kept key keeps its spend; its budget is the new settings'.
                key.health().set_budget(key_settings.budget, clock.now_unix_ms());
                keys.push(key);
                settings.push(key_settings);
            }
            let previous = self.carry_over.as_ref().and_then(|old| old.provider(provider.id().as_str()));
            let labels = ModelLabels::new(provider.models(), options.max_model_labels, previous.map(|p| &p.labels));
            // Sessions keep their keys over a reload, unless their TTL changed.
            let sessions = previous
                .map(|p| p.sessions.clone())
                .filter(|kept| kept.ttl() == options.affinity_ttl)
                .unwrap_or_else(|| Arc::new(SessionAffinity::new(DEFAULT_AFFINITY_CAPACITY, options.affinity_ttl)));
            by_id.insert(provider.id().as_str().into(), providers.len());
            providers.push(Arc::new(ProviderPool {
                provider: Arc::new(provider),
                options,
                keys: keys.into(),
                budgeted: settings.iter().any(|s: &KeySettings| s.budget.is_some()),
                settings: settings.into(),
                cursor: AtomicUsize::new(0),
                clock,
                pause: self.pause,
                pause_state: Mutex::default(),
                maybe_paused: AtomicBool::new(false),
                slot_freed: Notify::new(),
                freed_seq: Default::default(),
                labels,
                attempt_counters: HandleCache::default(),
                token_counters: HandleCache::default(),
                responses: responses.clone(),
                prices: self.prices.clone(),
                sessions,
                events: self.events.clone(),
                admission: self.admission.clone(),
            }));
        }
        Ok(Arc::new(KeyPool { providers, by_id, clock, responses, prices: self.prices, admission: self.admission }))
    }
}
