//! What one keyrelay replica tells the others about its keys: a key cooling
//! for a model (a rate limit, a quota, an upstream that keeps failing) or
//! marked invalid. The pool announces each one it starts through
//! [`PoolEvents`] (the binary publishes them on Redis) and takes the
//! others' with [`KeyPool::apply`], which never announces again.
//!
//! Events carry key ids and wall-clock times only, never a secret; a
//! replica applies an event only for a key it has, and only to make a
//! cooldown longer, so events may arrive twice, late or out of order.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use keyrelay_layers::{
//!     classify::{Failure, FailureClass},
//!     pool::{KeyPool, PoolEvent, PoolEvents, Secret},
//!     provider::Provider,
//! };
//!
//! #[derive(Debug, Default)]
//! struct Outbox(Mutex<Vec<PoolEvent>>);
//! impl PoolEvents for Outbox {
//!     fn publish(&self, event: PoolEvent) {
//!         self.0.lock().unwrap().push(event);
//!     }
//! }
//!
//! # tokio_test::block_on(async {
//! let openai = || Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let outbox = Arc::new(Outbox::default());
//! let a = KeyPool::builder().events(outbox.clone()).provider(openai(), Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
//! let b = KeyPool::builder().provider(openai(), Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
//! let (lease, _in_flight) = a.provider("openai").unwrap().lease().unwrap();
//! lease.record("gpt-4o", Err(Failure::new(FailureClass::RateLimit)));
//! let event = outbox.0.lock().unwrap().pop().expect("the cooldown was announced");
//! assert!(b.apply(&event), "b has the key");
//! assert_eq!(b.key_statuses()[0].state, keyrelay_layers::pool::KeyState::Cooling);
//! # });
//! ```

use std::time::Duration;

use tokio::time::Instant;

use super::{KeyPool, ProviderPool, health::Cooldown};
use crate::classify::FailureClass;

/// Where a pool announces the cooldowns and invalid marks it starts.
/// Called on the request path, under no lock: it must return at once
/// (queue, or drop).
pub trait PoolEvents: Send + Sync + std::fmt::Debug + 'static {
    /// One event to tell the other replicas.
    fn publish(&self, event: PoolEvent);
}

/// A change of one key's health, as the other replicas apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// `key` cools for `model` until `until_unix_ms`, for `class`
    /// (`rate_limit`, `quota` or `transient`).
    Cooled {
        /// The key's id (`openai:3f9a1c2e`).
        key: String,
        /// The model, as the provider knows it.
        model: String,
        /// The end of the cooldown, in ms since the Unix epoch.
        until_unix_ms: u64,
        /// Why: `rate_limit`, `quota` or `transient`.
        class: FailureClass,
    },
    /// `key` was refused by its provider: unusable until `until_unix_ms`.
    Invalid {
        /// The key's id.
        key: String,
        /// When a request may probe it again, in ms since the Unix epoch.
        until_unix_ms: u64,
    },
    /// Several of `provider`'s keys were rate limited at once: the provider
    /// rests until `until_unix_ms`.
    Paused {
        /// The provider's id.
        provider: String,
        /// The end of the pause, in ms since the Unix epoch.
        until_unix_ms: u64,
    },
    /// Response `id` (or an encrypted reasoning digest, `enc:...`) was made
    /// by `owner`'s key: follow-ups on any replica go there.
    Owned {
        /// The response id.
        id: String,
        /// The key that made it.
        key: String,
        /// The upstream model it was made with.
        model: String,
        /// When it was made, in ms since the Unix epoch.
        created_unix_ms: u64,
        /// The response an entry belongs to when it is not its own id (an
        /// encrypted reasoning digest's).
        response_id: Option<String>,
    },
    /// A session (by its digest, never its name; see
    /// [`SessionAffinity::digest`](super::SessionAffinity::digest)) sticks to
    /// `key`, until `until_unix_ms` unless used again.
    Stuck {
        /// The key.
        key: String,
        /// The (session, model) binding's digest.
        session: u64,
        /// When the binding lapses, in ms since the Unix epoch.
        until_unix_ms: u64,
    },
    /// Response `id`, made by `key`, was deleted.
    Forgotten {
        /// The response id.
        id: String,
        /// The key that made it.
        key: String,
    },
}

impl PoolEvent {
    /// [`PoolEvent::Cooled`].
    pub fn cooled(key: &str, model: &str, until_unix_ms: u64, class: FailureClass) -> Self {
        Self::Cooled { key: key.to_owned(), model: model.to_owned(), until_unix_ms, class }
    }

    /// [`PoolEvent::Invalid`].
    pub fn invalid(key: &str, until_unix_ms: u64) -> Self {
        Self::Invalid { key: key.to_owned(), until_unix_ms }
    }

    /// [`PoolEvent::Paused`].
    pub fn paused(provider: &str, until_unix_ms: u64) -> Self {
        Self::Paused { provider: provider.to_owned(), until_unix_ms }
    }

    /// [`PoolEvent::Owned`].
    pub fn owned(id: &str, key: &str, model: &str, created_unix_ms: u64, response_id: Option<&str>) -> Self {
        Self::Owned {
            id: id.to_owned(),
            key: key.to_owned(),
            model: model.to_owned(),
            created_unix_ms,
            response_id: response_id.map(str::to_owned),
        }
    }

    /// [`PoolEvent::Stuck`].
    pub fn stuck(key: &str, session: u64, until_unix_ms: u64) -> Self {
        Self::Stuck { key: key.to_owned(), session, until_unix_ms }
    }

    /// [`PoolEvent::Forgotten`].
    pub fn forgotten(id: &str, key: &str) -> Self {
        Self::Forgotten { id: id.to_owned(), key: key.to_owned() }
    }

    /// The key the event is about (for a pause, the provider): what shared
    /// storage groups it under.
    pub fn key(&self) -> &str {
        match self {
            Self::Cooled { key, .. }
            | Self::Invalid { key, .. }
            | Self::Forgotten { key, .. }
            | Self::Owned { key, .. }
            | Self::Stuck { key, .. } => key,
            Self::Paused { provider, .. } => provider,
        }
    }

    /// When the event stops mattering, in ms since the Unix epoch (a
    /// response's owner: when it is forgotten anyway; a deletion: at once,
    /// once told).
    pub fn until_unix_ms(&self) -> u64 {
        match self {
            Self::Cooled { until_unix_ms, .. }
            | Self::Invalid { until_unix_ms, .. }
            | Self::Paused { until_unix_ms, .. }
            | Self::Stuck { until_unix_ms, .. } => *until_unix_ms,
            Self::Owned { created_unix_ms, .. } => {
                created_unix_ms.saturating_add(super::DEFAULT_RESPONSE_TTL.as_millis() as u64)
            }
            Self::Forgotten { .. } => u64::MAX,
        }
    }
}

impl KeyPool {
    /// Applies another replica's event to this pool's key of that id, if
    /// it has one, without announcing it again: a cooldown or invalid mark
    /// only ever grows. `false` when the key is not here or the event is
    /// over.
    pub fn apply(&self, event: &PoolEvent) -> bool {
        match event {
            PoolEvent::Owned { id, key, model, created_unix_ms, response_id } => {
                let Some((pool, index)) = self.key(key) else { return false };
                let owner = super::ResponseOwner::new(
                    pool.provider().id().clone(),
                    pool.keys[index].id().clone(),
                    model,
                    *created_unix_ms,
                )
                .of_response(response_id.as_deref().map(Into::into));
                self.responses.remember_quietly(id, owner);
                return true;
            }
            PoolEvent::Forgotten { id, .. } => {
                self.responses.forget_quietly(id);
                return true;
            }
            PoolEvent::Stuck { key, session, .. } => {
                let Some((pool, index)) = self.key(key) else { return false };
                let id = pool.keys[index].id().clone();
                pool.sessions.bind_digest(*session, &id, Instant::now());
                return true;
            }
            PoolEvent::Paused { provider, until_unix_ms } => {
                let Some(pool) = self.provider(provider) else { return false };
                let now = Instant::now();
                let Some(left) = until_unix_ms.checked_sub(self.clock.unix_ms(now)).filter(|&ms| ms > 0) else {
                    return false;
                };
                pool.pause_from_elsewhere(now + Duration::from_millis(left));
                return true;
            }
            _ => {}
        }
        let Some((pool, index)) = self.key(event.key()) else { return false };
        let now = Instant::now();
        let now_ms = self.clock.unix_ms(now);
        let Some(left) = event.until_unix_ms().checked_sub(now_ms).filter(|&ms| ms > 0) else { return false };
        let until = now + Duration::from_millis(left);
        match event {
            PoolEvent::Cooled { model, class, .. } => pool.cool_from_elsewhere(index, model, until, *class, now),
            PoolEvent::Invalid { .. } => {
                let mut health = pool.keys[index].health();
                let strikes = health.invalid.map_or(1, |i| i.strikes);
                let longest = health.invalid.map_or(until, |i| i.until.max(until));
                health.invalid = Some(super::health::Invalid { until: longest, strikes });
            }
            _ => return false,
        }
        true
    }
}

impl ProviderPool {
    fn cool_from_elsewhere(&self, index: usize, model: &str, until: Instant, class: FailureClass, now: Instant) {
        let today = self.clock.day(now);
        let cap = self.cap_of(index);
        let mut health = self.keys[index].health();
        let state = health.model(model, today, cap, now);
        let until = state.cooldown.filter(|c| c.until > now).map_or(until, |c| c.until.max(until));
        state.cooldown = Some(Cooldown { until, class, day: today });
    }

    fn pause_from_elsewhere(&self, until: Instant) {
        let mut state = self.pause_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.until = Some(state.until.map_or(until, |current| current.max(until)));
        self.maybe_paused.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tells the other replicas, when the pool has somewhere to tell them.
    pub(super) fn announce(&self, event: impl FnOnce(&super::PoolClock) -> PoolEvent) {
        if let Some(events) = &self.events {
            events.publish(event(&self.clock));
        }
    }
}
