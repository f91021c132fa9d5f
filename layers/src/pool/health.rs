//! A key's mutable health: admin state, invalid marks and probing, and per
//! model cooldowns, concurrency slots and counters. Guarded by one small
//! mutex per key; no lock is ever held across an await.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::Instant};

use super::{
    clock::{PoolClock, invalid_ladder, rate_limit_ladder},
    learned::Learned,
    limits::Windows,
};
use crate::classify::{Failure, FailureClass};

/// More distinct models than this per key and idle ones are forgotten:
/// model names come from clients.
const MAX_MODELS_PER_KEY: usize = 1024;
/// Transient failures in a row on one (key, model) before it cools briefly.
const TRANSIENT_STREAK_LIMIT: u32 = 3;
const TRANSIENT_COOLDOWN: Duration = Duration::from_secs(10);
/// The shortest rate-limit or quota cooldown, whatever the hint says.
const MIN_COOLDOWN: Duration = Duration::from_secs(1);

/// A key's state as status pages show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum KeyState {
    /// Usable: no cooldown, mark or switch.
    Ok,
    /// Some model of it is rate limited (or briefly cooling after failures).
    Cooling,
    /// Some model of it is out of quota until a reset.
    Exhausted,
    /// Refused by the provider; probed again after its cooldown.
    Invalid,
    /// Switched off by an operator.
    Disabled,
}

/// Per-day counters of one (key, model). Read back leniently: a counter
/// an older writer did not know is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Counters {
    /// Attempts sent.
    pub requests: u64,
    /// Attempts answered with success.
    pub successes: u64,
    /// Failures of [`FailureClass::Client`].
    pub failures_client: u64,
    /// Failures of [`FailureClass::RateLimit`].
    pub failures_rate_limit: u64,
    /// Failures of [`FailureClass::Quota`].
    pub failures_quota: u64,
    /// Failures of [`FailureClass::Credential`].
    pub failures_credential: u64,
    /// Failures of [`FailureClass::Transient`].
    pub failures_transient: u64,
    /// Prompt tokens the answers reported.
    pub tokens_in: u64,
    /// Completion tokens the answers reported.
    pub tokens_out: u64,
}

impl Counters {
    /// Failures of every class.
    pub fn failures(&self) -> u64 {
        self.failures_client
            + self.failures_rate_limit
            + self.failures_quota
            + self.failures_credential
            + self.failures_transient
    }

    fn fail(&mut self, class: FailureClass) {
        let slot = match class {
            FailureClass::Client => &mut self.failures_client,
            FailureClass::RateLimit => &mut self.failures_rate_limit,
            FailureClass::Quota => &mut self.failures_quota,
            FailureClass::Credential => &mut self.failures_credential,
            FailureClass::Transient => &mut self.failures_transient,
        };
        *slot += 1;
    }

    pub(crate) fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.failures_client += other.failures_client;
        self.failures_rate_limit += other.failures_rate_limit;
        self.failures_quota += other.failures_quota;
        self.failures_credential += other.failures_credential;
        self.failures_transient += other.failures_transient;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Cooldown {
    pub until: Instant,
    pub class: FailureClass,
    /// The day it started: rate-limit and quota cooldowns end at the daily reset.
    pub day: u64,
}

#[derive(Debug)]
pub(crate) struct ModelState {
    pub cooldown: Option<Cooldown>,
    pub rate_streak: u32,
    pub transient_streak: u32,
    pub day: u64,
    pub counters: Counters,
    /// `None` without a concurrency cap.
    pub slots: Option<Arc<Semaphore>>,
    /// A success of this model has settled its metric label (see
    /// `labels.rs`): later successes need not look at the labels' lock.
    pub label_settled: bool,
    /// What the provider's headers last said this (key, model) has left.
    pub learned: Learned,
    /// The shared store said every slot (or what is left of the budget)
    /// is held by other replicas: full until then, or until it says one
    /// freed.
    pub full_elsewhere_until: Option<Instant>,
}

impl ModelState {
    fn new(day: u64, cap: usize) -> Self {
        Self {
            cooldown: None,
            rate_streak: 0,
            transient_streak: 0,
            day,
            counters: Counters::default(),
            slots: (cap > 0).then(|| Arc::new(Semaphore::new(cap))),
            label_settled: false,
            learned: Learned::default(),
            full_elsewhere_until: None,
        }
    }

    /// The cooldown still in force, if any.
    pub fn active_cooldown(&self, now: Instant, today: u64) -> Option<Cooldown> {
        self.cooldown.filter(|c| {
            c.until > now && !(c.day < today && matches!(c.class, FailureClass::RateLimit | FailureClass::Quota))
        })
    }

    fn roll_day(&mut self, today: u64) {
        if self.day != today {
            self.day = today;
            self.counters = Counters::default();
        }
    }

    fn idle(&self, now: Instant, cap: usize) -> bool {
        self.cooldown.is_none_or(|c| c.until <= now)
            && self.learned.stale(now)
            && self.slots.as_ref().is_none_or(|s| s.available_permits() == cap)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Invalid {
    pub until: Instant,
    pub strikes: u32,
}

/// Everything about a key that changes.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub disabled: bool,
    pub invalid: Option<Invalid>,
    /// A request is probing an invalid key whose cooldown ended.
    pub probing: bool,
    /// foldhash, not SipHash: looked up for every key on every choice, and
    /// bounded (see `MAX_MODELS_PER_KEY`) so flooding cannot grow it.
    pub models: HashMap<Arc<str>, ModelState, foldhash::fast::RandomState>,
    /// Requests sent with the key on `requests_day`, for least-used ranking.
    pub requests_today: u64,
    pub requests_day: u64,
    /// Recent successes, upstream failures and latency, decayed, for the
    /// `reliability` strategy.
    pub reliability: super::Reliability,
    /// Requests and tokens of the last minute, for the key's `rpm` and `tpm`.
    pub windows: Windows,
    /// The key's spend against its budget, when it has one (see
    /// `key_budget.rs`); shared with the holds of requests in flight.
    pub budget: Option<Arc<crate::budget::BudgetMeter>>,
    /// The shared store said the key's windows are full on every
    /// replica's account until then (see `admission.rs`).
    pub limits_elsewhere_until: Option<Instant>,
}

/// Whether a key can take a request for a model right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    /// Usable; `probe` when it is an invalid key due for its probe.
    Ready {
        probe: bool,
        free_slots: Option<usize>,
    },
    Full,
    /// Full on other replicas' account: look again at the instant.
    FullUntil(Instant),
    /// Cooling for this model until `until`; `rate_limited` when the
    /// cooldown is a rate limit's or quota's, not one after transient failures.
    Cooling {
        until: Instant,
        rate_limited: bool,
    },
    Unusable,
}

impl Health {
    pub fn count_request(&mut self, today: u64) {
        if self.requests_day != today {
            self.requests_day = today;
            self.requests_today = 0;
        }
        self.requests_today += 1;
    }

    pub fn requests_on(&self, today: u64) -> u64 {
        if self.requests_day == today { self.requests_today } else { 0 }
    }

    pub fn model(&mut self, model: &str, today: u64, cap: usize, now: Instant) -> &mut ModelState {
        if !self.models.contains_key(model) {
            if self.models.len() >= MAX_MODELS_PER_KEY {
                self.models.retain(|_, m| !m.idle(now, cap));
            }
            self.models.insert(model.into(), ModelState::new(today, cap));
        }
        let state = self.models.get_mut(model).expect("inserted above");
        state.roll_day(today);
        state
    }

    pub fn availability(&self, model: &str, now: Instant, today: u64) -> Availability {
        if self.disabled {
            return Availability::Unusable;
        }
        let mut probe = false;
        if let Some(invalid) = self.invalid {
            if invalid.until > now || self.probing {
                return Availability::Unusable;
            }
            probe = true;
        }
        let Some(state) = self.models.get(model) else {
            return Availability::Ready { probe, free_slots: None };
        };
        // The provider said nothing is left until a reset: as good as a
        // rate limit's cooldown, without the 429.
        let spent = state.learned.spent_until(now);
        if let Some(cooldown) = state.active_cooldown(now, today) {
            let rate_limited = matches!(cooldown.class, FailureClass::RateLimit | FailureClass::Quota);
            let until = spent.map_or(cooldown.until, |spent| spent.max(cooldown.until));
            return Availability::Cooling { until, rate_limited: rate_limited || spent.is_some() };
        }
        if let Some(until) = spent {
            return Availability::Cooling { until, rate_limited: true };
        }
        if let Some(until) = state.full_elsewhere_until.filter(|&until| until > now) {
            return Availability::FullUntil(until);
        }
        match &state.slots {
            Some(slots) if slots.available_permits() == 0 => Availability::Full,
            Some(slots) => Availability::Ready { probe, free_slots: Some(slots.available_permits()) },
            None => Availability::Ready { probe, free_slots: None },
        }
    }

    /// Applies one attempt's outcome. Returns the cooldown it started, if any.
    pub fn record(
        &mut self,
        model: &str,
        outcome: Result<(), Failure>,
        clock: &PoolClock,
        cap: usize,
        now: Instant,
    ) -> Option<Cooldown> {
        let today = clock.day(now);
        let state = self.model(model, today, cap, now);
        let failure = match outcome {
            Ok(()) => {
                state.counters.successes += 1;
                state.rate_streak = 0;
                state.transient_streak = 0;
                if state.cooldown.is_some_and(|c| c.until <= now) {
                    state.cooldown = None;
                }
                self.invalid = None;
                self.probing = false;
                return None;
            }
            Err(failure) => failure,
        };
        state.counters.fail(failure.class);
        let cooldown = match failure.class {
            FailureClass::Client => {
                // The request's fault: the key answered, so it is healthy.
                self.invalid = None;
                self.probing = false;
                return None;
            }
            FailureClass::RateLimit => {
                // Requests sent before the cooldown began answer 429 too: one
                // burst climbs the ladder once (a later hint may extend it).
                if let Some(current) = state.cooldown.as_mut().filter(|c| c.until > now && c.class == failure.class) {
                    if let Some(hint) = failure.retry_after {
                        current.until = current.until.max((now + hint).min(clock.next_reset(now)));
                    }
                    return Some(*current);
                }
                state.rate_streak += 1;
                // A zero hint must not turn rotation into a hot loop on this key.
                let wait =
                    failure.retry_after.unwrap_or_else(|| rate_limit_ladder(state.rate_streak)).max(MIN_COOLDOWN);
                // Rate-limit and quota cooldowns end at the daily reset at the latest.
                Cooldown { until: (now + wait).min(clock.next_reset(now)), class: FailureClass::RateLimit, day: today }
            }
            FailureClass::Quota => {
                let next_reset = clock.next_reset(now);
                let until =
                    failure.retry_after.map_or(next_reset, |wait| (now + wait.max(MIN_COOLDOWN)).min(next_reset));
                Cooldown { until, class: FailureClass::Quota, day: today }
            }
            FailureClass::Credential => {
                // Requests sent before the mark fail too: one mark per burst.
                if self.invalid.is_some_and(|i| i.until > now) {
                    return None;
                }
                let strikes = self.invalid.map_or(0, |i| i.strikes) + 1;
                self.invalid = Some(Invalid { until: now + invalid_ladder(strikes), strikes });
                self.probing = false;
                return None;
            }
            FailureClass::Transient => {
                state.transient_streak += 1;
                if state.transient_streak < TRANSIENT_STREAK_LIMIT {
                    return None;
                }
                state.transient_streak = 0;
                let wait = failure.retry_after.unwrap_or(TRANSIENT_COOLDOWN).min(Duration::from_secs(300));
                Cooldown { until: now + wait, class: FailureClass::Transient, day: today }
            }
        };
        // A longer cooldown in force (say, quota until the reset) is not
        // cut short by a late, shorter one.
        if let Some(current) = state.cooldown.filter(|c| c.until > now && c.until >= cooldown.until) {
            return Some(current);
        }
        state.cooldown = Some(cooldown);
        Some(cooldown)
    }

    pub fn state(&self, now: Instant, today: u64) -> KeyState {
        if self.disabled {
            return KeyState::Disabled;
        }
        if self.invalid.is_some() {
            return KeyState::Invalid;
        }
        let mut state = KeyState::Ok;
        for model in self.models.values() {
            match model.active_cooldown(now, today).map(|c| c.class) {
                Some(FailureClass::Quota) => return KeyState::Exhausted,
                Some(_) => state = KeyState::Cooling,
                None => {}
            }
        }
        state
    }

    /// `/reset`: every cooldown and mark cleared and the key enabled: back
    /// to ok. Counters are kept.
    pub fn reset(&mut self) {
        self.disabled = false;
        self.invalid = None;
        self.probing = false;
        for model in self.models.values_mut() {
            model.cooldown = None;
            model.rate_streak = 0;
            model.transient_streak = 0;
            model.learned = Learned::default();
        }
    }
}
