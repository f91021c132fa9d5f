//! [`ResponseOwners`]: which key made each Responses API response the proxy
//! passed back, so that follow-ups reach the organisation that holds the
//! response's state.
//!
//! OpenAI keeps a response (its conversation, its encrypted reasoning) with
//! the organisation whose key created it: `previous_response_id`,
//! `GET`/`DELETE /v1/responses/{id}` and `/cancel` work only with a key of
//! that organisation. The proxy remembers the key of every response id it
//! sees in a passed-through answer (and of the encrypted reasoning in it,
//! see [`EncryptedScanner`](super::EncryptedScanner)), bounded in number (the oldest go first)
//! and in age (a TTL, default 30 days, OpenAI's own retention), and keeps
//! them across restarts with the rest of the pool's state.
//!
//! ```
//! use std::time::Duration;
//! use keyrelay_layers::pool::{KeyId, ResponseOwner, ResponseOwners, Secret};
//! use keyrelay_layers::provider::ProviderId;
//!
//! let owners = ResponseOwners::new(2, Duration::from_secs(60));
//! let openai = ProviderId::new("openai");
//! let owner = |n| ResponseOwner::new(openai.clone(), KeyId::new(&openai, &Secret::new(n)), "gpt-5", 1_000);
//! owners.remember("resp_1", owner("sk-1"));
//! owners.remember("resp_2", owner("sk-2"));
//! owners.remember("resp_3", owner("sk-1"));
//! assert!(owners.owner("resp_1", 1_000).is_none(), "the oldest went first");
//! assert_eq!(owners.owner("resp_3", 1_000).unwrap().key, owner("sk-1").key);
//! assert!(owners.owner("resp_3", 61_001).is_none(), "expired");
//! ```

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::KeyId;
use crate::provider::ProviderId;

/// How many response ids are remembered by default.
pub const DEFAULT_REMEMBERED_RESPONSES: usize = 20_000;
/// How long a response id is remembered by default: OpenAI keeps stored
/// responses for 30 days.
pub const DEFAULT_RESPONSE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The key that made a response, and what it was made for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseOwner {
    /// The provider of the key.
    pub provider: ProviderId,
    /// The key.
    pub key: KeyId,
    /// The upstream model the response was made with.
    pub model: Arc<str>,
    /// When the response was made (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// The response an entry belongs to, when it is not the entry's own id
    /// (the encrypted reasoning of a response, see
    /// [`EncryptedScanner`](super::EncryptedScanner)).
    pub response_id: Option<Arc<str>>,
}

impl ResponseOwner {
    /// `key` of `provider` made a response with `model` at `created_unix_ms`.
    pub fn new(provider: ProviderId, key: KeyId, model: &str, created_unix_ms: u64) -> Self {
        Self { provider, key, model: model.into(), created_unix_ms, response_id: None }
    }

    /// The same owner, for an entry that belongs to `response_id`.
    pub fn of_response(mut self, response_id: Option<Arc<str>>) -> Self {
        self.response_id = response_id;
        self
    }
}

/// Response id -> the key that made it; bounded, with a TTL. Cheap to
/// share: every provider of a pool holds the same one.
pub struct ResponseOwners {
    inner: Mutex<Owners>,
    capacity: usize,
    ttl_ms: u64,
    /// Where each id remembered or forgotten here is announced to the
    /// other replicas (see [`super::PoolEvents`]).
    events: std::sync::OnceLock<Arc<dyn super::PoolEvents>>,
}

#[derive(Default)]
struct Owners {
    by_id: HashMap<Arc<str>, ResponseOwner, foldhash::fast::RandomState>,
    /// Ids in the order they were made: the front is the first to expire
    /// and the first to go when the memory is full.
    order: VecDeque<Arc<str>>,
}

impl fmt::Debug for ResponseOwners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseOwners").field("len", &self.len()).field("capacity", &self.capacity).finish()
    }
}

impl Default for ResponseOwners {
    fn default() -> Self {
        Self::new(DEFAULT_REMEMBERED_RESPONSES, DEFAULT_RESPONSE_TTL)
    }
}

impl ResponseOwners {
    /// Remembers at most `capacity` ids, each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { inner: Mutex::default(), capacity, ttl_ms: ttl.as_millis() as u64, events: std::sync::OnceLock::new() }
    }

    /// Announces every id remembered or forgotten from now on to `events`
    /// (the first call wins: a pool's memory is announced to one place).
    pub fn announce_to(&self, events: Arc<dyn super::PoolEvents>) {
        let _ = self.events.set(events);
    }

    /// How long an id is remembered, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that `owner` made response `id`, and tells the other
    /// replicas.
    pub fn remember(&self, id: &str, owner: ResponseOwner) {
        if let Some(events) = self.events.get() {
            events.publish(super::PoolEvent::owned(
                id,
                owner.key.as_str(),
                &owner.model,
                owner.created_unix_ms,
                owner.response_id.as_deref(),
            ));
        }
        self.remember_quietly(id, owner);
    }

    /// Remembers what another replica announced, without announcing it.
    pub(super) fn remember_quietly(&self, id: &str, owner: ResponseOwner) {
        if self.capacity == 0 {
            return;
        }
        let created = owner.created_unix_ms;
        let mut owners = self.lock();
        let id: Arc<str> = id.into();
        if owners.by_id.insert(id.clone(), owner).is_none() {
            owners.order.push_back(id);
        }
        while owners.order.len() > self.capacity
            || owners.order.front().is_some_and(|oldest| {
                owners.by_id.get(oldest).is_none_or(|o| o.created_unix_ms + self.ttl_ms < created)
            })
        {
            if let Some(oldest) = owners.order.pop_front() {
                owners.by_id.remove(&oldest);
            }
        }
    }

    /// The key that made `id`, unless forgotten or older than the TTL at
    /// `now_unix_ms`.
    pub fn owner(&self, id: &str, now_unix_ms: u64) -> Option<ResponseOwner> {
        let owners = self.lock();
        owners.by_id.get(id).filter(|o| o.created_unix_ms + self.ttl_ms >= now_unix_ms).cloned()
    }

    /// Forgets `id` (the response was deleted), and tells the other
    /// replicas.
    pub fn forget(&self, id: &str) {
        let owner = self.lock().by_id.get(id).map(|o| o.key.clone());
        if let (Some(events), Some(key)) = (self.events.get(), owner) {
            events.publish(super::PoolEvent::Forgotten { id: id.to_owned(), key: key.as_str().to_owned() });
        }
        self.forget_quietly(id);
    }

    /// Forgets what another replica announced gone.
    pub(super) fn forget_quietly(&self, id: &str) {
        let mut owners = self.lock();
        owners.by_id.remove(id);
        owners.order.retain(|kept| &**kept != id);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every remembered id with its owner, oldest first, for a state file.
    pub fn entries(&self) -> Vec<(String, ResponseOwner)> {
        let owners = self.lock();
        owners.order.iter().filter_map(|id| Some((id.to_string(), owners.by_id.get(id)?.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Secret;

    fn owner(created: u64) -> ResponseOwner {
        let provider = ProviderId::new("openai");
        ResponseOwner::new(provider.clone(), KeyId::new(&provider, &Secret::new("sk-1")), "gpt-5", created)
    }

    #[test]
    fn forgets_deleted_and_expired_ids_and_keeps_the_order() {
        let owners = ResponseOwners::new(10, Duration::from_secs(1));
        owners.remember("a", owner(0));
        owners.remember("b", owner(500));
        owners.forget("a");
        assert!(owners.owner("a", 0).is_none());
        assert_eq!(owners.len(), 1);
        owners.remember("c", owner(2_000));
        assert!(owners.owner("b", 2_000).is_none(), "expired when a younger one came");
        assert_eq!(owners.entries().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn no_capacity_remembers_nothing() {
        let owners = ResponseOwners::new(0, Duration::from_secs(1));
        owners.remember("a", owner(0));
        assert!(owners.is_empty());
    }
}
