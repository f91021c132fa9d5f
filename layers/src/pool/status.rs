//! What `/v1/keys` shows of a key: ids, states, cooldowns and counters,
//! never a secret.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{Counters, KeyPool, KeyState, ProviderPool};

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
    /// Why an `exhausted` key is: `budget` (it spent its budget, until the
    /// period ends) or `quota` (the provider said so, for some model);
    /// `None` in other states.
    pub reason: Option<&'static str>,
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
    /// How the key is used: its settings (never its secret).
    pub settings: SettingsStatus,
    /// Its use now of the limits its settings may set.
    pub window: WindowStatus,
    /// What the provider's rate-limit headers last said it has left, by
    /// model (only what has not reset yet).
    pub learned: Vec<LearnedStatus>,
    /// Its budget and what it spent of it, when it has one.
    pub budget: Option<BudgetStatus>,
}

/// A key's budget as `/v1/keys` shows it, in USD.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BudgetStatus {
    /// The most the key may spend per period.
    pub limit_usd: f64,
    /// `day`, `week`, `month` or `total` (calendar periods in UTC).
    pub period: &'static str,
    /// Spent in the current period.
    pub spent_usd: f64,
    /// Reserved by requests in flight (each its maximum cost).
    pub reserved_usd: f64,
    /// Left after the spend and the reservations (never below 0).
    pub remaining_usd: f64,
    /// When the period ends and the spend starts from 0 again, in
    /// milliseconds since the Unix epoch; `None` for `total`.
    pub resets_at_unix_ms: Option<u64>,
}

/// A key's requests and tokens of the last minute and of the day, the
/// measures of its `rpm`, `tpm` and `rpd`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WindowStatus {
    /// Requests chosen in the last minute (counted only under an `rpm`).
    pub requests_last_minute: u64,
    /// Tokens of the last minute, estimates for answers still running
    /// (counted only under a `tpm`).
    pub tokens_last_minute: u64,
    /// Requests sent with the key in the pool's current day.
    pub requests_today: u64,
}

/// What the provider's headers last said a (key, model) has left.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LearnedStatus {
    /// The model.
    pub model: String,
    /// Requests left, until `requests_reset_unix_ms`.
    pub requests_remaining: Option<u64>,
    /// When the requests' count resets, in milliseconds since the Unix epoch.
    pub requests_reset_unix_ms: Option<u64>,
    /// Tokens left (the scarcest kind), until `tokens_reset_unix_ms`.
    pub tokens_remaining: Option<u64>,
    /// When the tokens' count resets, in milliseconds since the Unix epoch.
    pub tokens_reset_unix_ms: Option<u64>,
}

/// A key's [`KeySettings`](super::KeySettings) as `/v1/keys` shows them.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SettingsStatus {
    /// Its share under `weighted` selection.
    pub weight: u32,
    /// Its priority tier (0 first).
    pub priority: u32,
    /// The model globs it is bound to (empty: every model).
    pub models: Vec<String>,
    /// Its concurrency cap per model: its own, else the provider's (0: none).
    pub max_concurrent: usize,
    /// Requests per minute at most (`None`: no limit).
    pub rpm: Option<u64>,
    /// Tokens per minute at most (`None`: no limit).
    pub tpm: Option<u64>,
    /// Requests per day at most (`None`: no limit).
    pub rpd: Option<u64>,
}

impl KeyPool {
    /// The pool's current day (as [`PoolClock::day`](super::PoolClock::day)
    /// numbers it) and every key's counters of that day, by key id, then by
    /// model: what [`KeyStatus::models`] shows, without the rest of the
    /// status (a key unused today has no models). Read together, so that counters are
    /// never filed under the wrong day when it turns over: for replicas
    /// that add up their counters elsewhere.
    pub fn counters_today(&self) -> (u64, BTreeMap<String, BTreeMap<String, Counters>>) {
        let today = self.clock.day(Instant::now());
        let mut keys = BTreeMap::new();
        for pool in self.providers() {
            for key in pool.keys() {
                let health = key.health();
                let models = health
                    .models
                    .iter()
                    .filter(|(model, state)| state.day == today && !model.is_empty())
                    .map(|(model, state)| (model.to_string(), state.counters.clone()))
                    .collect();
                keys.insert(key.id().as_str().to_owned(), models);
            }
        }
        (today, keys)
    }
}

impl ProviderPool {
    pub(super) fn status(&self, index: usize) -> KeyStatus {
        let key = &self.keys[index];
        let now = Instant::now();
        let today = self.clock.day(now);
        let health = key.health();
        let mut today_counters = Counters::default();
        let mut cooldowns = Vec::new();
        let mut models: Vec<ModelStatus> = Vec::new();
        let mut learned = Vec::new();
        for (model, state) in &health.models {
            if !state.learned.stale(now) {
                let (requests, tokens) = (state.learned.requests, state.learned.tokens);
                let fresh = |r: Option<super::learned::Remaining>| r.filter(|r| r.reset > now);
                learned.push(LearnedStatus {
                    model: model.to_string(),
                    requests_remaining: fresh(requests).map(|r| r.left),
                    requests_reset_unix_ms: fresh(requests).map(|r| self.clock.unix_ms(r.reset)),
                    tokens_remaining: fresh(tokens).map(|r| r.left),
                    tokens_reset_unix_ms: fresh(tokens).map(|r| self.clock.unix_ms(r.reset)),
                });
            }
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
        learned.sort_by(|a, b| a.model.cmp(&b.model));
        let second = super::limits::second(&self.clock, now);
        let window = WindowStatus {
            requests_last_minute: health.windows.requests.used(second),
            tokens_last_minute: health.windows.tokens.used(second),
            requests_today: health.requests_on(today),
        };
        let settings = &self.settings[index];
        let now_ms = self.clock.unix_ms(now);
        let budget = health.budget.as_ref().map(|meter| {
            let limit = meter.budget();
            BudgetStatus {
                limit_usd: limit.limit_usd,
                period: limit.period.as_str(),
                spent_usd: meter.spent(now_ms),
                reserved_usd: meter.reserved(),
                remaining_usd: meter.remaining(now_ms),
                resets_at_unix_ms: limit.period.end(now_ms),
            }
        });
        let mut state = health.state(now, today);
        let reason = if matches!(state, KeyState::Disabled | KeyState::Invalid) {
            None
        } else if health.budget_spent(now_ms) {
            state = KeyState::Exhausted;
            Some("budget")
        } else {
            (state == KeyState::Exhausted).then_some("quota")
        };
        KeyStatus {
            id: key.id().as_str().to_owned(),
            provider: self.provider.id().as_str().to_owned(),
            state,
            reason,
            in_flight: key.in_flight(),
            requests: key.requests(),
            last_used_unix_ms: Some(key.last_used_unix_ms()).filter(|&ms| ms > 0),
            invalid_until_unix_ms: health.invalid.map(|i| self.clock.unix_ms(i.until)),
            cooldowns,
            today: today_counters,
            models,
            settings: SettingsStatus {
                weight: settings.weight,
                priority: settings.priority,
                models: settings.model_globs().map(str::to_owned).collect(),
                max_concurrent: self.cap_of(index),
                rpm: settings.rpm,
                tpm: settings.tpm,
                rpd: settings.rpd,
            },
            window,
            learned,
            budget,
        }
    }
}
