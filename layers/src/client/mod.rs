//! Client keys: further keys beside the proxy key, each with a name, the
//! models it may use, its own limits and a budget.
//!
//! A [`ClientDirectory`] holds them, configured ones and ones made at run
//! time, recognised by the SHA-256 of the key (the directory never holds a
//! key itself). [`AuthLayer::with_clients`](crate::auth::AuthLayer::with_clients)
//! accepts a client's key wherever the proxy key is accepted and puts the
//! [`Client`] in the request's extensions; the
//! [`ClientGateLayer`](gate::ClientGateLayer) enforces its models, limits
//! and budget once the request's model is known.
//!
//! A client's live state (its windows, requests in flight and spend) is
//! kept by name: a reload that configures the client again, or a client
//! made again under the same name, keeps it.
//!
//! ```
//! use keyrelay_layers::client::{ClientDirectory, ClientPolicy, key_digest};
//!
//! let clients = ClientDirectory::default();
//! let policy = ClientPolicy::new("ci-bot").models(&["openai/gpt-4o-mini".to_owned()]).rpm(60);
//! clients.set_configured(vec![(key_digest("kr-secret"), policy)]);
//! let client = clients.find("kr-secret", 0).unwrap();
//! assert_eq!(&**client.name(), "ci-bot");
//! assert!(client.policy().allows("openai", "gpt-4o-mini", None));
//! assert!(!client.policy().allows("anthropic", "claude-sonnet-4-5", None));
//! assert!(clients.find("kr-other", 0).is_none());
//! ```

pub mod gate;
mod state;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use sha2::{Digest, Sha256};
use wildmatch::WildMatch;

pub(crate) use self::state::now_ms as state_now_ms;
pub use self::state::{ClientState, LimitHit};
use crate::budget::{Budget, BudgetMeter, BudgetPeriod};

/// The SHA-256 of a client key: how a client is recognised and stored.
pub type KeyDigest = [u8; 32];

/// The SHA-256 of `key`.
pub fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// What a client may do.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientPolicy {
    /// The client's name (in logs, metrics, the ledger and reports).
    pub name: Arc<str>,
    /// Globs over `provider/model`, the bare model and model aliases; empty
    /// allows every model.
    pub models: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt estimate and completion cap reserved when
    /// a request starts, its real usage counted when it ends).
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_parallel: Option<u64>,
    /// The most it may spend per period.
    pub budget: Option<Budget>,
    /// When its key stops working, in ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    globs: Arc<[WildMatch]>,
}

impl ClientPolicy {
    /// A client named `name` with no restriction.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            models: Vec::new(),
            rpm: None,
            tpm: None,
            max_parallel: None,
            budget: None,
            expires_at_ms: None,
            globs: Arc::new([]),
        }
    }

    /// Only models matching one of `globs` (see [`Self::models`]).
    pub fn models(mut self, globs: &[String]) -> Self {
        self.models = globs.to_vec();
        self.globs = globs.iter().map(|g| WildMatch::new(g)).collect();
        self
    }
    /// At most `rpm` requests a minute.
    pub fn rpm(mut self, rpm: u64) -> Self {
        self.rpm = Some(rpm);
        self
    }
    /// At most `tpm` tokens a minute.
    pub fn tpm(mut self, tpm: u64) -> Self {
        self.tpm = Some(tpm);
        self
    }
    /// At most `max` requests in flight.
    pub fn max_parallel(mut self, max: u64) -> Self {
        self.max_parallel = Some(max);
        self
    }
    /// At most `budget` spent per period.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }
    /// The key stops working at `unix_ms`.
    pub fn expires_at_ms(mut self, unix_ms: u64) -> Self {
        self.expires_at_ms = Some(unix_ms);
        self
    }

    /// Whether the client may use `model` of `provider`, asked for as
    /// `alias` when it named a model alias.
    pub fn allows(&self, provider: &str, model: &str, alias: Option<&str>) -> bool {
        if self.globs.is_empty() {
            return true;
        }
        let qualified = format!("{provider}/{model}");
        self.globs.iter().any(|glob| {
            glob.matches(&qualified) || glob.matches(model) || alias.is_some_and(|alias| glob.matches(alias))
        })
    }
}

impl fmt::Debug for ClientPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPolicy")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("max_parallel", &self.max_parallel)
            .field("budget", &self.budget)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A client as a request carries it (in its extensions): its policy and
/// its live state.
#[derive(Debug)]
pub struct Client {
    policy: ClientPolicy,
    state: Arc<ClientState>,
}

impl Client {
    /// The client's name.
    pub fn name(&self) -> &Arc<str> {
        &self.policy.name
    }
    /// What it may do.
    pub fn policy(&self) -> &ClientPolicy {
        &self.policy
    }
    /// Its windows, requests in flight and spend.
    pub fn state(&self) -> &Arc<ClientState> {
        &self.state
    }
}

/// Where a client came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration (`[[clients]]`); replaced by a reload.
    Config,
    /// `POST /v1/admin/clients`; kept in the store.
    Runtime,
}

/// Every client key; see the [module docs](self).
#[derive(Default)]
pub struct ClientDirectory {
    inner: RwLock<Directory>,
}

#[derive(Default)]
struct Directory {
    by_digest: HashMap<KeyDigest, (Arc<Client>, Origin)>,
    /// Live state by client name, kept over reloads and revocations.
    states: HashMap<Arc<str>, Arc<ClientState>>,
}

impl fmt::Debug for ClientDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientDirectory").field("clients", &self.read().by_digest.len()).finish()
    }
}

/// A name or key that is already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConflict(pub String);

impl ClientDirectory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether there is no client at all (then no key is hashed).
    pub fn is_empty(&self) -> bool {
        self.read().by_digest.is_empty()
    }

    /// The client whose key is `key`, unless it expired by `now_ms`.
    pub fn find(&self, key: &str, now_ms: u64) -> Option<Arc<Client>> {
        let digest = key_digest(key);
        let directory = self.read();
        let (client, _) = directory.by_digest.get(&digest)?;
        let expired = client.policy.expires_at_ms.is_some_and(|at| now_ms >= at);
        (!expired).then(|| client.clone())
    }

    /// Replaces the configured clients (at start and at each reload);
    /// clients made at run time stay, unless a configured one takes their
    /// name (the configuration wins).
    pub fn set_configured(&self, clients: Vec<(KeyDigest, ClientPolicy)>) {
        let mut directory = self.write();
        directory.by_digest.retain(|_, (_, origin)| *origin == Origin::Runtime);
        for (digest, policy) in clients {
            let name = policy.name.clone();
            directory.by_digest.retain(|_, (client, _)| client.policy.name != name);
            let client = directory.client(policy);
            directory.by_digest.insert(digest, (client, Origin::Config));
        }
    }

    /// Adds a client made at run time (or restored from the store).
    pub fn add_runtime(&self, digest: KeyDigest, policy: ClientPolicy) -> Result<Arc<Client>, ClientConflict> {
        let mut directory = self.write();
        if directory.by_digest.values().any(|(client, _)| client.policy.name == policy.name) {
            return Err(ClientConflict(format!("a client named `{}` already exists", policy.name)));
        }
        if directory.by_digest.contains_key(&digest) {
            return Err(ClientConflict("that key already belongs to a client".to_owned()));
        }
        let client = directory.client(policy);
        directory.by_digest.insert(digest, (client.clone(), Origin::Runtime));
        Ok(client)
    }

    /// Revokes the client made at run time named `name`; its key stops
    /// working at once. Configured clients leave only with a reload.
    pub fn remove_runtime(&self, name: &str) -> Result<bool, ClientConflict> {
        let mut directory = self.write();
        let origin = directory.by_digest.values().find(|(c, _)| &*c.policy.name == name).map(|(_, origin)| *origin);
        match origin {
            None => Ok(false),
            Some(Origin::Config) => Err(ClientConflict(format!(
                "client `{name}` comes from the configuration ([[clients]]); remove it there and reload"
            ))),
            Some(Origin::Runtime) => {
                directory.by_digest.retain(|_, (client, _)| &*client.policy.name != name);
                Ok(true)
            }
        }
    }

    /// Every client with where it came from, sorted by name.
    pub fn list(&self) -> Vec<(Arc<Client>, Origin)> {
        let mut all: Vec<_> = self.read().by_digest.values().cloned().collect();
        all.sort_by(|a, b| a.0.policy.name.cmp(&b.0.policy.name));
        all
    }

    /// The client named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Client>> {
        self.read().by_digest.values().find(|(c, _)| &*c.policy.name == name).map(|(c, _)| c.clone())
    }

    /// Adds `usd` spent by client `name` in the `period` that began at
    /// `period_start` (from the store, at start), when that is its
    /// budget's current period; see [`BudgetMeter::restore`].
    pub fn restore_spend(&self, name: &str, now_ms: u64, period: BudgetPeriod, period_start: u64, usd: f64) {
        if let Some(meter) = self.read().states.get(name).and_then(|s| s.budget())
            && meter.budget().period == period
        {
            meter.restore(now_ms, period_start, usd);
        }
    }
}

impl Directory {
    /// The client for `policy`, with the live state its name already had.
    fn client(&mut self, policy: ClientPolicy) -> Arc<Client> {
        let state = self.states.entry(policy.name.clone()).or_insert_with(|| Arc::new(ClientState::default()));
        state.set_budget(policy.budget);
        Arc::new(Client { policy, state: state.clone() })
    }
}

/// The budget meter of a client with a budget (for gauges and listings).
pub fn budget_of(client: &Client) -> Option<Arc<BudgetMeter>> {
    client.state.budget()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_the_qualified_name_the_bare_model_and_the_alias() {
        let policy =
            ClientPolicy::new("a").models(&["anthropic/*".to_owned(), "gpt-4o*".to_owned(), "fast".to_owned()]);
        assert!(policy.allows("anthropic", "claude-sonnet-4-5", None));
        assert!(policy.allows("openai", "gpt-4o-mini", None));
        assert!(policy.allows("groq", "llama-3.3-70b", Some("fast")));
        assert!(!policy.allows("groq", "llama-3.3-70b", None));
        assert!(ClientPolicy::new("b").allows("any", "thing", None), "no list allows all");
    }

    #[test]
    fn state_outlives_a_reload_and_a_revocation() {
        let clients = ClientDirectory::default();
        let budget = Budget::new(5.0, BudgetPeriod::Total);
        clients.set_configured(vec![(key_digest("k1"), ClientPolicy::new("ci").budget(budget))]);
        let before = clients.find("k1", 0).unwrap();
        budget_of(&before).unwrap().charge(0, 2.0);
        clients.set_configured(vec![(key_digest("k2"), ClientPolicy::new("ci").budget(budget))]);
        assert!(clients.find("k1", 0).is_none(), "the old key is gone");
        let after = clients.find("k2", 0).unwrap();
        assert_eq!(budget_of(&after).unwrap().spent(0), 2.0, "the spend stayed with the name");
        assert!(clients.remove_runtime("ci").is_err(), "configured clients leave with a reload");
        clients.add_runtime(key_digest("k3"), ClientPolicy::new("app")).unwrap();
        assert!(clients.add_runtime(key_digest("k4"), ClientPolicy::new("app")).is_err());
        assert!(clients.add_runtime(key_digest("k3"), ClientPolicy::new("other")).is_err());
        assert_eq!(clients.remove_runtime("app"), Ok(true));
        assert!(clients.find("k3", 0).is_none());
        assert_eq!(clients.remove_runtime("app"), Ok(false));
    }

    #[test]
    fn an_expired_key_is_unknown() {
        let clients = ClientDirectory::default();
        clients.add_runtime(key_digest("k"), ClientPolicy::new("tmp").expires_at_ms(1000)).unwrap();
        assert!(clients.find("k", 999).is_some());
        assert!(clients.find("k", 1000).is_none());
    }
}
