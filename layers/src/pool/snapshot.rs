//! The pool's state as plain data, keyed by key id (a fingerprint, never
//! the secret), for the binary to save and restore across restarts.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{
    KeyPool, ResponseOwner,
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
    /// The format version; [`SNAPSHOT_VERSION`] for what this code writes.
    pub version: u32,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub saved_at_unix_ms: u64,
    /// Each key's state, by key id.
    pub keys: BTreeMap<String, KeySnapshot>,
    /// Which key made each remembered Responses API response, oldest first.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub responses: Vec<ResponseSnapshot>,
}

impl Default for PoolSnapshot {
    fn default() -> Self {
        Self { version: SNAPSHOT_VERSION, saved_at_unix_ms: 0, keys: BTreeMap::new(), responses: Vec::new() }
    }
}

/// One remembered response id and the key that made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ResponseSnapshot {
    /// The response id (`resp_...`).
    pub id: String,
    /// The key id that made it.
    pub key: String,
    /// The upstream model it was made with.
    pub model: String,
    /// When it was made (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// The response it belongs to, when `id` is not a response's
    /// (encrypted reasoning).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub response: Option<String>,
}

/// One key's saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct KeySnapshot {
    /// Switched off by an operator.
    pub disabled: bool,
    /// When an invalid key may be probed again (milliseconds since the Unix epoch).
    pub invalid_until_unix_ms: Option<u64>,
    /// How many times in a row the key was refused (its invalid cooldown escalates).
    pub invalid_strikes: u32,
    /// Requests sent with the key, ever.
    pub requests: u64,
    /// Last use, in milliseconds since the Unix epoch (0 if never).
    pub last_used_unix_ms: u64,
    /// The pool day [`requests_today`](Self::requests_today) counts.
    pub requests_day: u64,
    /// Requests on `requests_day`, for least-used ranking.
    pub requests_today: u64,
    /// Per-model state, by model name.
    pub models: BTreeMap<String, ModelSnapshot>,
}

/// One (key, model)'s saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct ModelSnapshot {
    /// When the cooldown in force ends (milliseconds since the Unix epoch).
    pub cooldown_until_unix_ms: Option<u64>,
    /// The cooldown's failure class ([`FailureClass::as_str`]).
    pub cooldown_reason: Option<String>,
    /// The pool day the cooldown started (it ends at that day's reset).
    pub cooldown_day: u64,
    /// Rate limits in a row (the cooldown ladder's step).
    pub rate_streak: u32,
    /// The pool day `counters` count.
    pub day: u64,
    /// The day's counters.
    pub counters: Counters,
}

impl KeyPool {
    /// Every key's state now, for [`restore`](Self::restore) after a restart.
    ///
    /// ```
    /// use keyrelay_layers::pool::{KeyPool, Secret, SNAPSHOT_VERSION};
    /// use keyrelay_layers::provider::Provider;
    ///
    /// let build = || {
    ///     let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    ///     KeyPool::builder().provider(openai, Default::default(), vec![Secret::new("sk-a")]).build().unwrap()
    /// };
    /// let before = build();
    /// let id = before.provider("openai").unwrap().keys()[0].id().as_str().to_owned();
    /// before.set_disabled(&id, true);
    /// let snapshot = before.snapshot();
    /// assert_eq!(snapshot.version, SNAPSHOT_VERSION);
    ///
    /// let after = build();
    /// assert_eq!(after.restore(&snapshot), 1);
    /// assert!(after.key_status(&id).unwrap().state == keyrelay_layers::pool::KeyState::Disabled);
    /// ```
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
        let responses = self
            .responses()
            .entries()
            .into_iter()
            .map(|(id, owner)| ResponseSnapshot {
                id,
                key: owner.key.as_str().to_owned(),
                model: owner.model.to_string(),
                created_unix_ms: owner.created_unix_ms,
                response: owner.response_id.as_deref().map(str::to_owned),
            })
            .collect();
        PoolSnapshot { version: SNAPSHOT_VERSION, saved_at_unix_ms: clock.unix_ms(now), keys, responses }
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
            for (index, key) in pool.keys().iter().enumerate() {
                let cap = pool.cap_of(index);
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
        // A response of a key no longer configured is not restored: its
        // follow-ups go where new requests go, and the provider says it
        // does not know the id.
        for saved in &snapshot.responses {
            let Some((pool, index)) = self.key(&saved.key) else { continue };
            let key = pool.keys()[index].id().clone();
            let owner = ResponseOwner::new(pool.provider().id().clone(), key, &saved.model, saved.created_unix_ms)
                .of_response(saved.response.as_deref().map(Into::into));
            self.responses().remember(&saved.id, owner);
        }
        restored
    }
}
