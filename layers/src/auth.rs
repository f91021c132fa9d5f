//! `AuthLayer`: checks the client's proxy key.
//!
//! The key may come as `Authorization: Bearer <key>` (OpenAI SDKs, Claude
//! Code's `ANTHROPIC_AUTH_TOKEN`), `x-api-key: <key>` (Anthropic SDKs),
//! `x-goog-api-key: <key>` or a `?key=<key>` query parameter (Google's
//! clients; the parameter is removed from the URI once read). All are
//! compared against
//! the configured key in constant time: over tags of a keyed hash (SipHash
//! with a random key per process), so neither content nor length leaks, and
//! a tag that matches is confirmed byte for byte, and every [credential header](crate::credentials)
//! is removed before the request goes further: the client's credential is
//! never forwarded upstream.
//!
//! With [client keys](crate::client) ([`AuthLayer::with_clients`]), a
//! client's key is accepted in every place the proxy key is, and the
//! request carries its [`Client`] on (as an extension) for the
//! [`ClientGate`](crate::client::gate::ClientGate). A client key is looked
//! up by its SHA-256, only after the proxy key did not match; an expired
//! key is unknown.
//!
//! Writes the client's name on the [`RequestRecord`] (the proxy key's is
//! [`DEFAULT_CLIENT`](crate::ledger::DEFAULT_CLIENT)) and an `Arc<Client>` for a client key. Fails with
//! [`Unauthorized`] (401).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{auth::AuthLayer, pool::Secret, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let svc = AuthLayer::require(Secret::new("proxy-key")).layer(service_fn(|req: Request<Full<Bytes>>| async move {
//!     assert!(req.headers().get("authorization").is_none(), "stripped before the inner service");
//!     Ok::<_, BoxError>(Response::new(()))
//! }));
//! let ok = Request::get("/").header("x-api-key", "proxy-key").body(Full::default()).unwrap();
//! assert!(svc.clone().oneshot(ok).await.is_ok());
//! let bad = Request::get("/").header("authorization", "Bearer nope").body(Full::default()).unwrap();
//! assert!(svc.oneshot(bad).await.is_err());
//! # });
//! ```

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName, Request, Uri, header::AUTHORIZATION};
use std::hash::{BuildHasher, RandomState};

use subtle::ConstantTimeEq;
use tower::{Layer, filter::Predicate};

use crate::{
    BoxError,
    client::{Client, ClientDirectory},
    error::{Forbidden, Unauthorized},
    pool::Secret,
    record::RequestRecord,
};

// Named once, not parsed from a string at every look-up.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The keys a request's key is compared with, as tags.
struct Expected {
    /// The variable that holds the key, for error messages.
    name: &'static str,
    /// A tag is SipHash under this process's random key: an attacker can
    /// neither compute a tag nor observe one, so comparing tags in constant
    /// time leaks nothing, and only the right key (or a 2^-64 chance) gets
    /// to the byte comparison. A SHA-256 digest did the same for 3.5k more
    /// instructions per request.
    hasher: RandomState,
    accepted: Vec<Tagged>,
    /// Valid keys that are not enough here (the proxy key on admin routes).
    forbidden: Vec<Tagged>,
}

struct Tagged {
    tag: u64,
    key: Secret,
}

impl fmt::Debug for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expected").field("name", &self.name).field("keys", &self.accepted.len()).finish()
    }
}

impl Expected {
    fn new(name: &'static str, accepted: &[Secret], forbidden: &[Secret]) -> Self {
        let hasher = RandomState::new();
        let tagged = |keys: &[Secret]| {
            keys.iter().map(|key| Tagged { tag: hasher.hash_one(key.expose().as_bytes()), key: key.clone() }).collect()
        };
        let (accepted, forbidden) = (tagged(accepted), tagged(forbidden));
        Self { name, hasher, accepted, forbidden }
    }

    /// 1 when `candidate` is one of `keys`, else 0; in constant time but
    /// for a tag that matches (which only the key itself gets).
    fn matches(&self, keys: &[Tagged], candidate: &[u8], tag: u64) -> u8 {
        keys.iter().fold(0u8, |any, k| {
            let same_tag = k.tag.to_le_bytes().ct_eq(&tag.to_le_bytes()).unwrap_u8();
            any | (same_tag & u8::from(same_tag == 1 && bool::from(k.key.expose().as_bytes().ct_eq(candidate))))
        })
    }
}

/// Applies [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    check: KeyCheck,
}

impl AuthLayer {
    /// Every request must carry `key`.
    pub fn require(key: Secret) -> Self {
        Self::require_any(vec![key])
    }

    /// Every request must carry one of `keys`.
    pub fn require_any(keys: Vec<Secret>) -> Self {
        let expected = Expected::new("PROXY_API_KEY", &keys, &[]);
        Self { check: KeyCheck { expected: Some(Arc::new(expected)), clients: None } }
    }

    /// Also accepts the keys of `clients` (see the [module docs](self)).
    pub fn with_clients(mut self, clients: Arc<ClientDirectory>) -> Self {
        self.check.clients = Some(clients);
        self
    }

    /// Admin routes: the admin key is required; the proxy key is refused
    /// with 403 (it is valid, just not enough).
    pub fn admin(admin: Secret, proxy: Option<Secret>) -> Self {
        let forbidden: Vec<Secret> = proxy.into_iter().collect();
        let expected = Expected::new("ADMIN_API_KEY", &[admin], &forbidden);
        Self { check: KeyCheck { expected: Some(Arc::new(expected)), clients: None } }
    }

    /// No key is checked (the binary allows this only on loopback binds);
    /// client credential headers are still stripped.
    pub fn disabled() -> Self {
        Self { check: KeyCheck { expected: None, clients: None } }
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer").field("enabled", &self.check.expected.is_some()).finish()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::filter::Filter::new(inner, self.check.clone())
    }
}

/// Rejects requests without the proxy key; see the [module docs](self).
/// tower's `Filter` does the plumbing (readiness is the inner service's;
/// errors become [`BoxError`]); [`KeyCheck`] decides.
pub type Auth<S> = tower::filter::Filter<S, KeyCheck>;

/// The predicate behind [`Auth`]: checks the key, then strips every
/// credential header so the client's key can never be forwarded.
#[derive(Clone)]
pub struct KeyCheck {
    expected: Option<Arc<Expected>>,
    clients: Option<Arc<ClientDirectory>>,
}

impl fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCheck").field("enabled", &self.expected.is_some()).finish()
    }
}

impl<B> Predicate<Request<B>> for KeyCheck {
    type Request = Request<B>;

    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, BoxError> {
        let query_key = query_key(req.uri());
        let clients = self.clients.as_deref().filter(|c| !c.is_empty());
        let client = match &self.expected {
            Some(expected) => check(req.headers(), query_key.as_deref(), expected, clients)?,
            // No key required: a client's key still makes its requests its own.
            None => clients.and_then(|clients| {
                candidates(req.headers(), query_key.as_deref()).find_map(|key| find_client(clients, key))
            }),
        };
        if let Some(record) = req.extensions().get::<RequestRecord>() {
            record.set_client(client.as_ref().map_or_else(crate::ledger::default_client, |c| c.name().clone()));
        }
        if let Some(client) = client {
            req.extensions_mut().insert(client);
        }
        strip_client_credentials(req.headers_mut());
        if query_key.is_some() {
            *req.uri_mut() = without_query_key(req.uri());
        }
        Ok(req)
    }
}

/// The key of a `?key=` query parameter (how Google's clients may send it).
fn query_key(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let value = query.split('&').find_map(|param| param.strip_prefix("key="))?;
    crate::extensions::percent_decode(value)
}

/// The URI without its `key=` query parameter, which must go no further.
fn without_query_key(uri: &Uri) -> Uri {
    let path_and_query = crate::credentials::path_without_query_key(uri.path(), uri.query());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Every key the request presents: bearer tokens, `x-api-key`,
/// `x-goog-api-key`, then the query's `key=`.
fn candidates<'a>(headers: &'a HeaderMap, query_key: Option<&'a str>) -> impl Iterator<Item = &'a str> {
    let bearer = headers.get_all(AUTHORIZATION).iter().filter_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let api_key = [&X_API_KEY, &X_GOOG_API_KEY]
        .into_iter()
        .flat_map(|name| headers.get_all(name).into_iter())
        .filter_map(|value| value.to_str().ok().map(str::trim));
    bearer.chain(api_key).chain(query_key)
}

fn find_client(clients: &ClientDirectory, key: &str) -> Option<Arc<Client>> {
    clients.find(key, crate::client::state_now_ms())
}

/// The client whose key the request carries (`None` for the proxy key),
/// or why the request is refused.
fn check(
    headers: &HeaderMap,
    query_key: Option<&str>,
    expected: &Expected,
    clients: Option<&ClientDirectory>,
) -> Result<Option<Arc<Client>>, BoxError> {
    let (mut presented, mut forbidden) = (false, false);
    for candidate in candidates(headers, query_key) {
        presented = true;
        let tag = expected.hasher.hash_one(candidate.as_bytes());
        // Every comparison runs, so timing tells nothing about which matched.
        let accepted = expected.matches(&expected.accepted, candidate.as_bytes(), tag);
        let refused = expected.matches(&expected.forbidden, candidate.as_bytes(), tag);
        if accepted == 1 {
            return Ok(None);
        }
        forbidden |= refused == 1;
    }
    // Only then the clients' keys: the proxy key pays for no digest.
    if let Some(client) =
        clients.and_then(|clients| candidates(headers, query_key).find_map(|k| find_client(clients, k)))
    {
        return Ok(Some(client));
    }
    Err(match (presented, forbidden) {
        (_, true) => Forbidden::new().into(),
        (true, false) => Unauthorized::invalid().for_key(expected.name).into(),
        (false, false) => Unauthorized::missing().for_key(expected.name).into(),
    })
}

#[cfg(test)]
fn check_key(headers: &HeaderMap, query_key: Option<&str>, expected: &Expected) -> Result<(), BoxError> {
    check(headers, query_key, expected, None).map(|_| ())
}

fn strip_client_credentials(headers: &mut HeaderMap) {
    crate::credentials::remove_where(headers, crate::credentials::is_credential);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(key: &str) -> Expected {
        Expected::new("PROXY_API_KEY", &[Secret::new(key)], &[])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let key = expected("k1");
        assert!(check_key(&headers(&[("authorization", "Bearer k1")]), None, &key).is_ok());
        assert!(check_key(&headers(&[("authorization", "bearer  k1 ")]), None, &key).is_ok());
        assert!(check_key(&headers(&[("x-api-key", "k1")]), None, &key).is_ok());
        assert!(check_key(&headers(&[("authorization", "Bearer wrong"), ("x-api-key", "k1")]), None, &key).is_ok());
    }

    #[test]
    fn accepts_google_style_keys_and_strips_the_query_key() {
        let key = expected("k1");
        assert!(check_key(&headers(&[("x-goog-api-key", "k1")]), None, &key).is_ok());
        assert!(check_key(&headers(&[]), Some("k1"), &key).is_ok());
        assert!(check_key(&headers(&[]), Some("k2"), &key).is_err());
        let uri: Uri = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=k1".parse().unwrap();
        assert_eq!(query_key(&uri).as_deref(), Some("k1"));
        assert_eq!(without_query_key(&uri), "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
        let only: Uri = "/x?key=a%2Bb".parse().unwrap();
        assert_eq!(query_key(&only).as_deref(), Some("a+b"));
        assert_eq!(without_query_key(&only), "/x");
    }

    #[test]
    fn tells_missing_from_invalid() {
        let key = expected("k1");
        let missing = check_key(&headers(&[]), None, &key).unwrap_err().to_string();
        assert!(missing.starts_with("missing"), "{missing}");
        let invalid = check_key(&headers(&[("authorization", "Bearer k2")]), None, &key).unwrap_err().to_string();
        assert!(invalid.starts_with("invalid"), "{invalid}");
        let basic = check_key(&headers(&[("authorization", "Basic azE=")]), None, &key).unwrap_err().to_string();
        assert!(basic.starts_with("missing"), "{basic}");
        let prefix = check_key(&headers(&[("x-api-key", "k")]), None, &key);
        assert!(prefix.is_err());
    }
}
