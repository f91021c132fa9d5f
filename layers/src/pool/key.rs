//! One upstream key: its secret, its public id, and its live counters.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
};

use http::{HeaderName, HeaderValue, header::AUTHORIZATION};
use sha2::{Digest, Sha256};

use super::health::Health;
use crate::provider::{AuthStyle, Provider, ProviderId};

/// A secret string (an upstream key or the proxy key). It has no `Display`,
/// no `Serialize`, and a redacted `Debug`, so it cannot slip into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret; nothing checks it here.
    pub fn new(secret: impl Into<Arc<str>>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A key's public name: `provider:` plus the first 8 hex digits of the
/// SHA-256 of the secret, e.g. `openai:3f9a1c2e`. Stable across restarts,
/// URL-safe, and safe to show anywhere.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// The id of `secret` as a key of `provider`.
    ///
    /// ```
    /// use keyrelay_layers::{pool::{KeyId, Secret}, provider::ProviderId};
    ///
    /// let id = KeyId::new(&ProviderId::new("openai"), &Secret::new("sk-test"));
    /// assert!(id.as_str().starts_with("openai:") && id.as_str().len() == "openai:".len() + 8);
    /// assert!(!id.as_str().contains("sk-test"));
    /// assert_eq!(format!("{:?}", Secret::new("sk-test")), "Secret(<redacted>)");
    /// ```
    pub fn new(provider: &ProviderId, secret: &Secret) -> Self {
        let digest = Sha256::digest(secret.expose().as_bytes());
        let mut id = String::with_capacity(provider.as_str().len() + 9);
        id.push_str(provider.as_str());
        id.push(':');
        for byte in &digest[..4] {
            id.push_str(&format!("{byte:02x}"));
        }
        Self(id.into())
    }

    /// A name that is no key's: what a client's shared limits are kept
    /// under (`client:<name>`, see [`AdmissionAsk::client`](super::AdmissionAsk::client)).
    pub(crate) fn named(name: String) -> Self {
        Self(name.into())
    }

    /// The id, e.g. `openai:3f9a1c2e`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A key that cannot be sent as an HTTP header value.
#[derive(Debug)]
pub struct InvalidKey {
    provider: ProviderId,
    position: usize,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key #{} of provider `{}` holds characters not allowed in an HTTP header (a stray quote, newline or non-ASCII character?)",
            self.position, self.provider
        )
    }
}

impl std::error::Error for InvalidKey {}

/// One key and what the pool knows about it. Hot counters are atomics;
/// health (cooldowns, marks, per-model state) sits behind a small mutex.
pub struct KeyEntry {
    id: KeyId,
    secret: Secret,
    auth_name: HeaderName,
    /// Built once, marked sensitive, so requests only clone it.
    auth_value: HeaderValue,
    /// The id as a header value (`x-keyrelay-key`), built once.
    id_value: HeaderValue,
    pub(crate) in_flight: AtomicU32,
    pub(crate) requests: AtomicU64,
    pub(crate) last_used_unix_ms: AtomicU64,
    pub(crate) health: Mutex<Health>,
}

impl KeyEntry {
    pub(crate) fn new(provider: &Provider, secret: Secret, position: usize) -> Result<Self, InvalidKey> {
        let invalid = || InvalidKey { provider: provider.id().clone(), position };
        let (auth_name, value) = match provider.auth() {
            AuthStyle::Bearer => (AUTHORIZATION, format!("Bearer {}", secret.expose())),
            AuthStyle::Header(name) => (name.clone(), secret.expose().to_owned()),
        };
        let mut auth_value = HeaderValue::from_str(&value).map_err(|_| invalid())?;
        auth_value.set_sensitive(true);
        let id = KeyId::new(provider.id(), &secret);
        // Provider ids and hex digits: always a valid header value.
        let id_value = HeaderValue::from_str(id.as_str()).map_err(|_| invalid())?;
        Ok(Self {
            id,
            id_value,
            secret,
            auth_name,
            auth_value,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_used_unix_ms: AtomicU64::new(0),
            health: Mutex::default(),
        })
    }

    /// The key's public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
    /// The key's id as a header value.
    pub fn id_header(&self) -> &HeaderValue {
        &self.id_value
    }
    /// The key itself.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
    /// The header that carries this key to its provider.
    pub fn auth_header(&self) -> (&HeaderName, &HeaderValue) {
        (&self.auth_name, &self.auth_value)
    }
    /// Requests holding this key now (streams until they end).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
    /// Requests sent with this key since start (or since the state file).
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }
    /// Milliseconds since the Unix epoch of the last time this key was
    /// chosen; 0 for never.
    pub fn last_used_unix_ms(&self) -> u64 {
        self.last_used_unix_ms.load(Relaxed)
    }

    pub(crate) fn health(&self) -> MutexGuard<'_, Health> {
        // A panic while holding it cannot leave the plain data inconsistent
        // in a way worse than losing the key: keep serving.
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight())
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_provider_and_eight_hex_digits_of_sha256() {
        // sha256("sk-test") = 0e1ec0f0...
        let id = KeyId::new(&ProviderId::new("openai"), &Secret::new("sk-test"));
        let expected: String = Sha256::digest(b"sk-test")[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id.as_str(), format!("openai:{expected}"));
        assert_eq!(id.as_str().len(), "openai:".len() + 8);
    }

    #[test]
    fn secrets_never_debug_print() {
        let dbg = format!("{:?}", Secret::new("sk-very-secret"));
        assert!(!dbg.contains("sk-very-secret"), "{dbg}");
        let provider = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
        let entry = KeyEntry::new(&provider, Secret::new("sk-very-secret"), 1).unwrap();
        let dbg = format!("{entry:?} {:?}", entry.auth_header());
        assert!(!dbg.contains("sk-very-secret"), "{dbg}");
    }

    #[test]
    fn rejects_keys_that_cannot_be_headers() {
        let provider = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
        let err = KeyEntry::new(&provider, Secret::new("sk-a\nb"), 2).unwrap_err().to_string();
        assert!(err.contains("key #2") && !err.contains("sk-a"), "{err}");
    }
}
