//! [`SessionAffinity`]: which key served each conversation last, so that
//! its next turn goes to the same key and finds its prompt cache there.
//!
//! Providers cache prompts per key (per organisation): a conversation that
//! hops keys pays the full prompt every turn. A request that carries a
//! session signal (see [`RouteTarget::session`](crate::extensions::RouteTarget::session))
//! prefers the key this memory names for its (session, model), when that
//! key can take it now; whichever key serves it becomes the session's key.
//! The preference is soft: a key that is cooling, invalid, disabled, full or
//! in a higher priority tier than another ready key is passed over, and the
//! session moves (see [`ProviderPool::choose_for`](super::ProviderPool::choose_for)).
//!
//! The memory is per provider, bounded (the least recently used sessions go
//! first) and forgets a session after a TTL of silence, refreshed by every
//! request of the session. It is kept in memory only: a restart loses it,
//! and the next turn of each conversation simply binds again. It keeps a
//! 64-bit digest of (model, session), not the client's strings.
//!
//! ```
//! use std::time::Duration;
//! use keyrelay_layers::pool::{KeyId, Secret, SessionAffinity};
//! use keyrelay_layers::provider::ProviderId;
//! use tokio::time::Instant;
//!
//! let openai = ProviderId::new("openai");
//! let key = |n| KeyId::new(&openai, &Secret::new(n));
//! let sessions = SessionAffinity::new(2, Duration::from_secs(60));
//! let now = Instant::now();
//! sessions.bind("chat-1", "gpt-4o", &key("sk-a"), now);
//! assert_eq!(sessions.key_for("chat-1", "gpt-4o", now), Some(key("sk-a")));
//! assert_eq!(sessions.key_for("chat-1", "o3", now), None, "per model");
//! assert_eq!(sessions.key_for("chat-1", "gpt-4o", now + Duration::from_secs(61)), None, "silent too long");
//! ```

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    str::FromStr,
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use super::KeyId;

/// How many sessions each provider remembers by default.
pub const DEFAULT_AFFINITY_CAPACITY: usize = 10_000;
/// How long a silent session keeps its key by default: an hour, longer
/// than any provider keeps a prompt cache warm without a hit.
pub const DEFAULT_AFFINITY_TTL: Duration = Duration::from_secs(60 * 60);

/// Whether a provider keeps conversations on one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Affinity {
    /// A request with a session signal prefers the key that served its
    /// session last.
    #[default]
    Session,
    /// Every request is balanced by the strategy alone.
    None,
}

impl Affinity {
    /// The name in configuration: `session` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An affinity name that is neither `session` nor `none`.
#[derive(Debug)]
pub struct UnknownAffinity(String);

impl fmt::Display for UnknownAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown affinity `{}`; expected `session` or `none`", self.0)
    }
}

impl std::error::Error for UnknownAffinity {}

impl FromStr for Affinity {
    type Err = UnknownAffinity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "session" => Ok(Self::Session),
            "none" => Ok(Self::None),
            _ => Err(UnknownAffinity(s.to_owned())),
        }
    }
}

/// (session, model) -> the key that served it last; bounded, least recently
/// used first out, with a TTL refreshed on use.
pub struct SessionAffinity {
    inner: Mutex<Sessions>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Sessions {
    by_digest: HashMap<u64, Binding, foldhash::fast::RandomState>,
    /// (digest, stamp) in the order of use, oldest in front. A binding used
    /// again is pushed anew with a new stamp; its older entries are stale
    /// (their stamp no longer matches) and are dropped when met.
    order: VecDeque<(u64, u64)>,
    next_stamp: u64,
}

struct Binding {
    key: KeyId,
    last_used: Instant,
    stamp: u64,
}

impl fmt::Debug for SessionAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionAffinity")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Default for SessionAffinity {
    fn default() -> Self {
        Self::new(DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TTL)
    }
}

impl SessionAffinity {
    /// Remembers at most `capacity` sessions, each until `ttl` after its
    /// last request.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { inner: Mutex::default(), capacity, ttl }
    }

    /// How long a silent session keeps its key.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The binding's name: the first 8 bytes of SHA-256 over model and
    /// session. The same on every replica (so one can tell another which
    /// key a session has without naming the session), and not something a
    /// client can aim collisions at.
    pub fn digest(session: &str, model: &str) -> u64 {
        use sha2::{Digest, Sha256};
        let hash =
            Sha256::new().chain_update(model.as_bytes()).chain_update([0]).chain_update(session.as_bytes()).finalize();
        u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
    }

    /// The key that served `session` for `model` last, unless silent for
    /// longer than the TTL at `now`.
    pub fn key_for(&self, session: &str, model: &str, now: Instant) -> Option<KeyId> {
        self.key_for_digest(Self::digest(session, model), now)
    }

    /// [`key_for`](Self::key_for) by the binding's digest.
    pub fn key_for_digest(&self, digest: u64, now: Instant) -> Option<KeyId> {
        let sessions = self.lock();
        let binding = sessions.by_digest.get(&digest)?;
        (now.saturating_duration_since(binding.last_used) <= self.ttl).then(|| binding.key.clone())
    }

    /// `key` served `session` for `model` at `now`: it is the session's key
    /// from now on, for another TTL. Returns the binding's digest when it is
    /// new or moved to another key (what other replicas need to hear).
    pub fn bind(&self, session: &str, model: &str, key: &KeyId, now: Instant) -> Option<u64> {
        let digest = Self::digest(session, model);
        self.bind_digest(digest, key, now).then_some(digest)
    }

    /// [`bind`](Self::bind) by the binding's digest (another replica's
    /// news); whether the binding is new or moved.
    pub fn bind_digest(&self, digest: u64, key: &KeyId, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut sessions = self.lock();
        let changed = sessions.by_digest.get(&digest).is_none_or(|b| b.key != *key);
        let stamp = sessions.next_stamp;
        sessions.next_stamp += 1;
        match sessions.by_digest.get_mut(&digest) {
            Some(binding) => {
                if binding.key != *key {
                    binding.key = key.clone();
                }
                binding.last_used = now;
                binding.stamp = stamp;
            }
            None => {
                sessions.by_digest.insert(digest, Binding { key: key.clone(), last_used: now, stamp });
            }
        }
        sessions.order.push_back((digest, stamp));
        sessions.evict(self.capacity, self.ttl, now);
        changed
    }

    /// How many sessions are remembered (expired ones included until a
    /// later [`bind`](Self::bind) sweeps them).
    pub fn len(&self) -> usize {
        self.lock().by_digest.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sessions {
    /// Drops the least recently used sessions beyond `capacity` and those
    /// silent for longer than `ttl`, and stale order entries on the way.
    fn evict(&mut self, capacity: usize, ttl: Duration, now: Instant) {
        while let Some(&(digest, stamp)) = self.order.front() {
            let Some(binding) = self.by_digest.get(&digest) else {
                self.order.pop_front();
                continue;
            };
            if binding.stamp != stamp {
                // Used again since: a later entry stands for it.
                self.order.pop_front();
                continue;
            }
            let expired = now.saturating_duration_since(binding.last_used) > ttl;
            if !expired && self.by_digest.len() <= capacity {
                break;
            }
            self.by_digest.remove(&digest);
            self.order.pop_front();
        }
        // A few sessions used over and over leave stale entries behind the
        // front: keep the queue within twice the live bindings.
        if self.order.len() > 2 * self.by_digest.len() + 64 {
            let by_digest = &self.by_digest;
            self.order.retain(|(digest, stamp)| by_digest.get(digest).is_some_and(|b| b.stamp == *stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pool::Secret, provider::ProviderId};

    fn key(n: &str) -> KeyId {
        KeyId::new(&ProviderId::new("openai"), &Secret::new(n))
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("session".parse::<Affinity>().unwrap(), Affinity::Session);
        assert_eq!("none".parse::<Affinity>().unwrap(), Affinity::None);
        assert_eq!(Affinity::default().to_string(), "session");
        let err = "sticky".parse::<Affinity>().unwrap_err().to_string();
        assert!(err.contains("`sticky`") && err.contains("`session`"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_forgotten_after_the_ttl_of_silence_and_each_use_refreshes_it() {
        let sessions = SessionAffinity::new(10, Duration::from_secs(60));
        sessions.bind("s", "m", &key("a"), Instant::now());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(sessions.key_for("s", "m", Instant::now()), Some(key("a")));
        // Served again: another full TTL from now.
        sessions.bind("s", "m", &key("a"), Instant::now());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(sessions.key_for("s", "m", Instant::now()), Some(key("a")), "refreshed at 50 s");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(sessions.key_for("s", "m", Instant::now()), None, "61 s of silence");
        // An expired session is swept by the next bind.
        sessions.bind("t", "m", &key("b"), Instant::now());
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn the_least_recently_used_session_goes_first() {
        let sessions = SessionAffinity::new(2, Duration::from_secs(60));
        let now = Instant::now();
        sessions.bind("one", "m", &key("a"), now);
        sessions.bind("two", "m", &key("b"), now);
        // "one" is used again, so "two" is now the least recently used.
        sessions.bind("one", "m", &key("a"), now);
        sessions.bind("three", "m", &key("c"), now);
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.key_for("one", "m", now), Some(key("a")));
        assert_eq!(sessions.key_for("two", "m", now), None);
        assert_eq!(sessions.key_for("three", "m", now), Some(key("c")));
    }

    #[test]
    fn a_rebind_moves_the_session_and_the_queue_stays_bounded() {
        let sessions = SessionAffinity::new(3, Duration::from_secs(60));
        let now = Instant::now();
        sessions.bind("s", "m", &key("a"), now);
        sessions.bind("s", "m", &key("b"), now);
        assert_eq!(sessions.key_for("s", "m", now), Some(key("b")));
        for _ in 0..10_000 {
            sessions.bind("s", "m", &key("b"), now);
        }
        let order = sessions.lock().order.len();
        assert!(order <= 2 + 64 + 1, "stale entries are compacted: {order}");
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn sessions_are_told_apart_by_model_and_no_capacity_remembers_nothing() {
        let sessions = SessionAffinity::new(10, Duration::from_secs(60));
        let now = Instant::now();
        sessions.bind("s", "haiku", &key("a"), now);
        sessions.bind("s", "sonnet", &key("b"), now);
        assert_eq!(sessions.key_for("s", "haiku", now), Some(key("a")));
        assert_eq!(sessions.key_for("s", "sonnet", now), Some(key("b")));
        let none = SessionAffinity::new(0, Duration::from_secs(60));
        none.bind("s", "m", &key("a"), now);
        assert!(none.is_empty());
    }
}
