//! The pool's state as plain data, keyed by key id (a fingerprint, never
//! the secret), for the binary to save and restore across restarts.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{
    KeyPool,
    health::{Cooldown, Counters, Invalid},
};
use crate::classify::FailureClass;

/// The format version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Everything worth keeping about every key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PoolSnapshot {
    pub version: u32,
    pub saved_at_unix_ms: u64,
    pub keys: BTreeMap<String, KeySnapshot>,
}

impl Default for PoolSnapshot {
    fn default() -> Self {
        Self { version: SNAPSHOT_VERSION, saved_at_unix_ms: 0, keys: BTreeMap::new() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct KeySnapshot {
    pub disabled: bool,
    pub invalid_until_unix_ms: Option<u64>,
    pub invalid_strikes: u32,
    pub requests: u64,
    pub last_used_unix_ms: u64,
    pub requests_day: u64,
    pub requests_today: u64,
    pub models: BTreeMap<String, ModelSnapshot>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct ModelSnapshot {
    pub cooldown_until_unix_ms: Option<u64>,
    pub cooldown_reason: Option<String>,
    pub cooldown_day: u64,
    pub rate_streak: u32,
    pub day: u64,
    pub counters: Counters,
}

impl KeyPool {
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = Instant::now();
        let clock = self.clock;
        let mut keys = BTreeMap::new();
        for pool in self.providers() {
            for key in pool.keys() {
                let health = key.health();
                let models = health
                    .models
                    .iter()
                    .filter(|(model, _)| !model.is_empty())
                    .map(|(model, state)| {
                        let cooldown = state.cooldown.filter(|c| c.until > now);
                        let snapshot = ModelSnapshot {
                            cooldown_until_unix_ms: cooldown.map(|c| clock.unix_ms(c.until)),
                            cooldown_reason: cooldown.map(|c| c.class.as_str().to_owned()),
                            cooldown_day: cooldown.map_or(0, |c| c.day),
                            rate_streak: state.rate_streak,
                            day: state.day,
                            counters: state.counters.clone(),
                        };
                        (model.to_string(), snapshot)
                    })
                    .collect();
                keys.insert(
                    key.id().as_str().to_owned(),
                    KeySnapshot {
                        disabled: health.disabled,
                        invalid_until_unix_ms: health.invalid.map(|i| clock.unix_ms(i.until)),
                        invalid_strikes: health.invalid.map_or(0, |i| i.strikes),
                        requests: key.requests(),
                        last_used_unix_ms: key.last_used_unix_ms(),
                        requests_day: health.requests_day,
                        requests_today: health.requests_today,
                        models,
                    },
                );
            }
        }
        PoolSnapshot { version: SNAPSHOT_VERSION, saved_at_unix_ms: clock.unix_ms(now), keys }
    }

    /// Applies a snapshot to the keys that still exist; returns how many.
    /// Keys no longer configured are ignored; new keys start fresh. A
    /// snapshot of another format version restores nothing.
    pub fn restore(&self, snapshot: &PoolSnapshot) -> usize {
        if snapshot.version != SNAPSHOT_VERSION {
            tracing::warn!(version = snapshot.version, "state file of an unknown format version: ignored");
            return 0;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        let clock = self.clock;
        let mut restored = 0;
        for pool in self.providers() {
            let cap = pool.options().max_concurrent_per_key;
            for key in pool.keys() {
                let Some(saved) = snapshot.keys.get(key.id().as_str()) else { continue };
                restored += 1;
                key.requests.store(saved.requests, Relaxed);
                key.last_used_unix_ms.store(saved.last_used_unix_ms, Relaxed);
                let mut health = key.health();
                health.disabled = saved.disabled;
                health.invalid = saved
                    .invalid_until_unix_ms
                    .map(|ms| Invalid { until: clock.instant_at(ms), strikes: saved.invalid_strikes.max(1) });
                health.requests_day = saved.requests_day;
                health.requests_today = saved.requests_today;
                for (model, saved) in &saved.models {
                    let state = health.model(model, saved.day, cap, now);
                    state.day = saved.day;
                    state.counters = saved.counters.clone();
                    state.rate_streak = saved.rate_streak;
                    state.cooldown = match (saved.cooldown_until_unix_ms, saved.cooldown_reason.as_deref()) {
                        (Some(ms), Some(reason)) => FailureClass::parse(reason).map(|class| Cooldown {
                            until: clock.instant_at(ms),
                            class,
                            day: saved.cooldown_day,
                        }),
                        _ => None,
                    };
                }
            }
        }
        restored
    }
}
