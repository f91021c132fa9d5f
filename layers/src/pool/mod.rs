//! `KeyPool`: every provider and its keys, shared by the layers and the
//! status routes as `Arc<KeyPool>`. It is state, not a layer: built once,
//! read without locks on the request path.
//!
//! ```
//! use keyrelay_layers::pool::{KeyPool, Secret, Selection};
//! use keyrelay_layers::provider::Provider;
//!
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let pool = KeyPool::builder()
//!     .provider(openai, Selection::RoundRobin, vec![Secret::new("sk-a"), Secret::new("sk-b")])
//!     .build()
//!     .unwrap();
//!
//! let (lease, in_flight) = pool.provider("openai").unwrap().lease().unwrap();
//! assert!(lease.key_id().as_str().starts_with("openai:"));
//! assert_eq!(pool.provider("openai").unwrap().keys()[0].in_flight(), 1);
//! drop(in_flight);
//! ```

mod key;
mod select;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, atomic::AtomicUsize},
};

use http::{HeaderName, HeaderValue};
use serde::Serialize;

pub use self::{
    key::{InFlight, InvalidKey, KeyEntry, KeyId, Secret},
    select::{Selection, UnknownSelection},
};
use crate::provider::{Provider, ProviderId};

/// Every provider the proxy knows, with its keys.
#[derive(Debug)]
pub struct KeyPool {
    providers: Vec<Arc<ProviderPool>>,
    by_id: HashMap<Box<str>, usize>,
}

/// Collects providers and keys for a [`KeyPool`].
#[derive(Debug, Default)]
pub struct KeyPoolBuilder {
    providers: Vec<(Provider, Selection, Vec<Secret>)>,
}

impl KeyPoolBuilder {
    /// Adds a provider (a provider with no keys is known, and its requests
    /// fail with 503). A secret given twice counts once.
    pub fn provider(mut self, provider: Provider, selection: Selection, keys: Vec<Secret>) -> Self {
        self.providers.push((provider, selection, keys));
        self
    }

    pub fn build(self) -> Result<Arc<KeyPool>, InvalidKey> {
        let mut providers = Vec::with_capacity(self.providers.len());
        let mut by_id = HashMap::with_capacity(self.providers.len());
        for (provider, selection, secrets) in self.providers {
            let mut keys: Vec<Arc<KeyEntry>> = Vec::with_capacity(secrets.len());
            for (position, secret) in secrets.into_iter().enumerate() {
                if keys.iter().any(|key| *key.secret() == secret) {
                    continue;
                }
                keys.push(Arc::new(KeyEntry::new(&provider, secret, position + 1)?));
            }
            by_id.insert(provider.id().as_str().into(), providers.len());
            providers.push(Arc::new(ProviderPool {
                provider: Arc::new(provider),
                selection,
                keys: keys.into(),
                cursor: AtomicUsize::new(0),
            }));
        }
        Ok(Arc::new(KeyPool { providers, by_id }))
    }
}

impl KeyPool {
    pub fn builder() -> KeyPoolBuilder {
        KeyPoolBuilder::default()
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<ProviderPool>> {
        self.by_id.get(id).map(|&index| &self.providers[index])
    }

    /// Providers in the order they were added.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderPool>> {
        self.providers.iter()
    }

    /// What `/v1/keys` shows: ids, states and counters, never a secret.
    pub fn key_statuses(&self) -> Vec<KeyStatus> {
        self.providers
            .iter()
            .flat_map(|pool| {
                pool.keys.iter().map(|key| KeyStatus {
                    id: key.id().as_str().to_owned(),
                    provider: pool.provider.id().as_str().to_owned(),
                    state: "ok",
                    in_flight: key.in_flight(),
                    requests: key.requests(),
                    last_used_unix_ms: Some(key.last_used_unix_ms()).filter(|&ms| ms > 0),
                })
            })
            .collect()
    }
}

/// One provider and its keys.
pub struct ProviderPool {
    provider: Arc<Provider>,
    selection: Selection,
    keys: Box<[Arc<KeyEntry>]>,
    cursor: AtomicUsize,
}

impl ProviderPool {
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
    pub fn selection(&self) -> Selection {
        self.selection
    }
    pub fn keys(&self) -> &[Arc<KeyEntry>] {
        &self.keys
    }

    /// Chooses a key by the provider's strategy and counts it in flight until
    /// the returned guard drops. `None` when the provider has no key.
    pub fn lease(&self) -> Option<(KeyLease, InFlight)> {
        let index = select::pick(self.selection, &self.keys, &self.cursor)?;
        let key = &self.keys[index];
        let in_flight = key.begin();
        Some((
            KeyLease {
                key: key.clone(),
                provider: self.provider.clone(),
            },
            in_flight,
        ))
    }
}

impl fmt::Debug for ProviderPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderPool")
            .field("provider", self.provider.id())
            .field("selection", &self.selection)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The key chosen for one attempt: an identity, cheap to clone, carried in
/// request extensions to the upstream and copied onto the response.
#[derive(Clone)]
pub struct KeyLease {
    key: Arc<KeyEntry>,
    provider: Arc<Provider>,
}

impl KeyLease {
    pub fn key_id(&self) -> &KeyId {
        self.key.id()
    }
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
    pub fn provider_id(&self) -> &ProviderId {
        self.provider.id()
    }
    /// The header (name, sensitive value) that authenticates this key.
    pub fn auth_header(&self) -> (&HeaderName, &HeaderValue) {
        self.key.auth_header()
    }
    pub fn secret(&self) -> &Secret {
        self.key.secret()
    }
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyLease").field(self.key.id()).finish()
    }
}

/// One key as `/v1/keys` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    pub id: String,
    pub provider: String,
    pub state: &'static str,
    pub in_flight: u32,
    pub requests: u64,
    pub last_used_unix_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: &str) -> Provider {
        Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap()
    }

    #[test]
    fn the_same_secret_twice_counts_once() {
        let pool = KeyPool::builder()
            .provider(
                provider("openai"),
                Selection::LeastUsed,
                vec![Secret::new("a"), Secret::new("b"), Secret::new("a")],
            )
            .build()
            .unwrap();
        assert_eq!(pool.provider("openai").unwrap().keys().len(), 2);
    }

    #[test]
    fn a_provider_without_keys_is_known_but_leases_nothing() {
        let pool = KeyPool::builder()
            .provider(provider("groq"), Selection::LeastUsed, vec![])
            .build()
            .unwrap();
        assert!(pool.provider("groq").unwrap().lease().is_none());
        assert!(pool.provider("nope").is_none());
    }

    #[test]
    fn statuses_show_ids_and_counters_never_secrets() {
        let pool = KeyPool::builder()
            .provider(
                provider("openai"),
                Selection::LeastUsed,
                vec![Secret::new("sk-secret-1")],
            )
            .build()
            .unwrap();
        let (_lease, in_flight) = pool.provider("openai").unwrap().lease().unwrap();
        let statuses = pool.key_statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!((statuses[0].in_flight, statuses[0].requests), (1, 1));
        let json = serde_json::to_string(&statuses).unwrap();
        assert!(
            !json.contains("sk-secret-1") && json.contains("openai:"),
            "{json}"
        );
        drop(in_flight);
        assert_eq!(pool.key_statuses()[0].in_flight, 0);
    }
}
