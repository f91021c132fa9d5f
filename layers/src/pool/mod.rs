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

mod admission;
mod affinity;
mod builder;
mod clock;
mod encrypted;
mod health;
mod key;
mod key_budget;
mod labels;
mod learned;
mod lease;
mod limits;
pub(crate) use limits::MinuteWindow;
mod provider_pool;
mod reliability;
mod responses;
mod select;
mod settings;
mod shared;
mod snapshot;
mod status;
mod unavailable;

use std::{collections::HashMap, sync::Arc};

pub(crate) use self::admission::nanos;
pub use self::shared::{PoolEvent, PoolEvents};
pub use self::{
    admission::{
        Admission, AdmissionAsk, BudgetAsk, Refusal, RefusalReason, SharedAdmission, SharedTicket, TicketRelease,
    },
    affinity::{Affinity, DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TTL, SessionAffinity, UnknownAffinity},
    builder::{DEFAULT_MAX_MODEL_LABELS, KeyPoolBuilder, ProviderOptions, ProviderPause},
    clock::{PoolClock, invalid_ladder, rate_limit_ladder},
    encrypted::EncryptedScanner,
    health::{Counters, KeyState},
    key::{InvalidKey, KeyEntry, KeyId, Secret},
    lease::{InFlight, KeyLease, SlotPermit},
    provider_pool::{Choice, ProviderPool},
    reliability::{RELIABILITY_HALF_LIFE, RELIABILITY_REFERENCE_LATENCY, Reliability},
    responses::{DEFAULT_REMEMBERED_RESPONSES, DEFAULT_RESPONSE_TTL, ResponseOwner, ResponseOwners},
    select::{Candidate, Selection, UnknownSelection, pick},
    settings::KeySettings,
    snapshot::{KeySnapshot, ModelSnapshot, PoolSnapshot, ResponseSnapshot, SNAPSHOT_VERSION},
    status::{BudgetStatus, CooldownStatus, KeyStatus, LearnedStatus, ModelStatus, SettingsStatus, WindowStatus},
    unavailable::Unavailable,
};

/// Every provider the proxy knows, with its keys.
#[derive(Debug)]
pub struct KeyPool {
    providers: Vec<Arc<ProviderPool>>,
    // foldhash, not SipHash: looked up several times per request, keyed by
    // the pool's own provider ids.
    by_id: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    clock: PoolClock,
    responses: Arc<ResponseOwners>,
    prices: Arc<crate::price::PriceTable>,
    admission: Option<Arc<dyn SharedAdmission>>,
}

impl KeyPool {
    /// Where limits shared with other replicas are admitted, when the pool
    /// was built with a store (see [`KeyPoolBuilder::admission`]).
    pub fn admission(&self) -> Option<&Arc<dyn SharedAdmission>> {
        self.admission.as_ref()
    }

    /// What requests cost (see [`KeyPoolBuilder::prices`]).
    pub fn prices(&self) -> &Arc<crate::price::PriceTable> {
        &self.prices
    }

    /// Starts an empty pool.
    pub fn builder() -> KeyPoolBuilder {
        KeyPoolBuilder::default()
    }

    /// Which key made each Responses API response (shared by every
    /// provider of the pool, and kept across reloads).
    pub fn responses(&self) -> &Arc<ResponseOwners> {
        &self.responses
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
