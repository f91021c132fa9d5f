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

    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Cooled { key, .. } | Self::Invalid { key, .. } => key,
        }
    }

    /// When the event stops mattering, in ms since the Unix epoch.
    pub fn until_unix_ms(&self) -> u64 {
        match self {
            Self::Cooled { until_unix_ms, .. } | Self::Invalid { until_unix_ms, .. } => *until_unix_ms,
        }
    }
}

impl KeyPool {
    /// Applies another replica's event to this pool's key of that id, if
    /// it has one, without announcing it again: a cooldown or invalid mark
    /// only ever grows. `false` when the key is not here or the event is
    /// over.
    pub fn apply(&self, event: &PoolEvent) -> bool {
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

    /// Tells the other replicas, when the pool has somewhere to tell them.
    pub(super) fn announce(&self, event: impl FnOnce(&super::PoolClock) -> PoolEvent) {
        if let Some(events) = &self.events {
            events.publish(event(&self.clock));
        }
    }
}
