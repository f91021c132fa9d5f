//! `AuthLayer`: checks the client's proxy key.
//!
//! The key may come as `Authorization: Bearer <key>` (OpenAI SDKs) or
//! `x-api-key: <key>` (Anthropic-style clients). Both are compared against
//! the configured key in constant time (over SHA-256 digests, so the length
//! leaks nothing either), and both headers are removed before the request
//! goes further: the client's credential is never forwarded upstream.
//!
//! Reads no extension; writes none. Fails with [`Unauthorized`] (401).
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

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{
    TryFutureExt,
    future::{Either, ErrInto, Ready, ready},
};
use http::{HeaderMap, Request, header::AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::{
    BoxError,
    error::{Forbidden, Unauthorized},
    pool::Secret,
};

const X_API_KEY: &str = "x-api-key";

/// The digests a request's key is compared with.
#[derive(Debug)]
struct Expected {
    /// The variable that holds the key, for error messages.
    name: &'static str,
    accepted: Vec<[u8; 32]>,
    /// Valid keys that are not enough here (the proxy key on admin routes).
    forbidden: Vec<[u8; 32]>,
}

fn digest(key: &Secret) -> [u8; 32] {
    Sha256::digest(key.expose().as_bytes()).into()
}

/// Applies [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    expected: Option<Arc<Expected>>,
}

impl AuthLayer {
    /// Every request must carry `key`.
    pub fn require(key: Secret) -> Self {
        Self::require_any(vec![key])
    }

    /// Every request must carry one of `keys`.
    pub fn require_any(keys: Vec<Secret>) -> Self {
        let accepted = keys.iter().map(digest).collect();
        Self { expected: Some(Arc::new(Expected { name: "PROXY_API_KEY", accepted, forbidden: Vec::new() })) }
    }

    /// Admin routes: the admin key is required; the proxy key is refused
    /// with 403 (it is valid, just not enough).
    pub fn admin(admin: Secret, proxy: Option<Secret>) -> Self {
        let expected = Expected {
            name: "ADMIN_API_KEY",
            accepted: vec![digest(&admin)],
            forbidden: proxy.iter().map(digest).collect(),
        };
        Self { expected: Some(Arc::new(expected)) }
    }

    /// No key is checked (the binary allows this only on loopback binds);
    /// client credential headers are still stripped.
    pub fn disabled() -> Self {
        Self { expected: None }
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer").field("enabled", &self.expected.is_some()).finish()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, expected: self.expected.clone() }
    }
}

/// Rejects requests without the proxy key; see the [module docs](self).
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    expected: Option<Arc<Expected>>,
}

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("inner", &self.inner).field("enabled", &self.expected.is_some()).finish()
    }
}

impl<S> Auth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Ready<Result<S::Response, BoxError>>, ErrInto<S::Future, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(expected) = &self.expected
            && let Err(rejection) = check(req.headers(), expected)
        {
            return Either::Left(ready(Err(rejection)));
        }
        strip_client_credentials(req.headers_mut());
        Either::Right(self.inner.call(req).err_into())
    }
}

fn check(headers: &HeaderMap, expected: &Expected) -> Result<(), BoxError> {
    let bearer = headers.get_all(AUTHORIZATION).iter().filter_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let api_key = headers.get_all(X_API_KEY).iter().filter_map(|value| value.to_str().ok().map(str::trim));
    let (mut presented, mut forbidden) = (false, false);
    for candidate in bearer.chain(api_key) {
        presented = true;
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        // Every comparison runs, so timing tells nothing about which matched.
        let accepted = expected.accepted.iter().fold(0u8, |any, k| any | digest.ct_eq(k).unwrap_u8());
        let refused = expected.forbidden.iter().fold(0u8, |any, k| any | digest.ct_eq(k).unwrap_u8());
        if accepted == 1 {
            return Ok(());
        }
        forbidden |= refused == 1;
    }
    Err(match (presented, forbidden) {
        (_, true) => Forbidden::new().into(),
        (true, false) => Unauthorized::invalid().for_key(expected.name).into(),
        (false, false) => Unauthorized::missing().for_key(expected.name).into(),
    })
}

fn strip_client_credentials(headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    headers.remove(X_API_KEY);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(key: &str) -> Expected {
        Expected { name: "PROXY_API_KEY", accepted: vec![digest(&Secret::new(key))], forbidden: vec![] }
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
        assert!(check(&headers(&[("authorization", "Bearer k1")]), &key).is_ok());
        assert!(check(&headers(&[("authorization", "bearer  k1 ")]), &key).is_ok());
        assert!(check(&headers(&[("x-api-key", "k1")]), &key).is_ok());
        assert!(check(&headers(&[("authorization", "Bearer wrong"), ("x-api-key", "k1")]), &key).is_ok());
    }

    #[test]
    fn tells_missing_from_invalid() {
        let key = expected("k1");
        let missing = check(&headers(&[]), &key).unwrap_err().to_string();
        assert!(missing.starts_with("missing"), "{missing}");
        let invalid = check(&headers(&[("authorization", "Bearer k2")]), &key).unwrap_err().to_string();
        assert!(invalid.starts_with("invalid"), "{invalid}");
        let basic = check(&headers(&[("authorization", "Basic azE=")]), &key).unwrap_err().to_string();
        assert!(basic.starts_with("missing"), "{basic}");
        let prefix = check(&headers(&[("x-api-key", "k")]), &key);
        assert!(prefix.is_err());
    }
}
