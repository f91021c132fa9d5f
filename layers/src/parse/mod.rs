//! `ParseLayer`: reads the request body once and finds where it goes.
//!
//! The body is read whole, bounded by `max_body_bytes` (413 above it, checked
//! against `Content-Length` before reading when the client sends one), and
//! kept as [`Bytes`] so that every later attempt can resend it without
//! copying. Only `model` and `stream` are looked at (and a Responses
//! request's `previous_response_id`); the rest of the JSON is validated but
//! never re-serialised. `model` is `provider/model`, split at the first
//! `/`, so `openrouter/meta-llama/llama-3-70b` goes to provider `openrouter`
//! with model `meta-llama/llama-3-70b`. On the dialect routes
//! (`/v1/messages`, `/v1/responses`, Gemini's `/v1beta/models/...`) a model
//! without a configured provider prefix goes to the route's default
//! provider ([`RouteDefaults`]); Gemini's model is in the path, and so is
//! its stream flag (`:streamGenerateContent`). A model alias
//! ([`Aliases`], on every route) goes to its first allowed target and
//! carries the others as the target's fallbacks ([`crate::fallback`]). A Responses request that
//! continues a response the proxy passed back is bound to the key that made
//! it ([`RequiredKey`](crate::extensions::RequiredKey)), and so are the
//! stored-response routes. The session a request belongs to, for key
//! affinity, comes from its headers (`x-session-id`, then the coding
//! agents' own) or its body (`prompt_cache_key`, Anthropic's
//! `metadata.user_id`), read by the same single parse.
//!
//! Reads the [`Endpoint`] a router recognised (else the path); writes
//! [`RouteTarget`](crate::extensions::RouteTarget), and the provider and model into the request's
//! [`RequestRecord`]. Fails with [`InvalidBody`], [`MissingModel`](crate::error::MissingModel),
//! [`InvalidModel`](crate::error::InvalidModel), [`UnknownProvider`](crate::error::UnknownProvider) (400), [`BodyTooLarge`] (413) or
//! [`RouteNotFound`] (404) for a path that is not a proxied endpoint.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{extensions::RouteTarget, parse::ParseLayer, pool::KeyPool, provider::Provider, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let provider = Provider::openai_compatible("openrouter", "https://openrouter.ai/api/v1").unwrap();
//! let pool = KeyPool::builder().provider(provider, Default::default(), vec![]).build().unwrap();
//! let svc = ParseLayer::new(pool, 1 << 20).layer(service_fn(|req: Request<Bytes>| async move {
//!     let target = req.extensions().get::<RouteTarget>().unwrap();
//!     assert_eq!((target.provider().as_str(), target.model()), ("openrouter", "meta-llama/llama-3-70b"));
//!     Ok::<_, BoxError>(Response::new(()))
//! }));
//! let body = r#"{"model": "openrouter/meta-llama/llama-3-70b", "messages": []}"#;
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
//! svc.oneshot(req).await.unwrap();
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, header::CONTENT_LENGTH};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service, ServiceExt};

use crate::{
    BoxError,
    error::{BodyTooLarge, InvalidBody, RouteNotFound},
    extensions::Endpoint,
    pool::KeyPool,
    record::RequestRecord,
};

/// Applies [`Parse`].
#[derive(Clone, Debug)]
pub struct ParseLayer {
    pool: Arc<KeyPool>,
    max_body_bytes: usize,
    defaults: Arc<RouteDefaults>,
}

impl ParseLayer {
    /// `pool` says which providers exist; bodies above `max_body_bytes` are
    /// refused with 413.
    pub fn new(pool: Arc<KeyPool>, max_body_bytes: usize) -> Self {
        Self { pool, max_body_bytes, defaults: Arc::default() }
    }

    /// Where the dialect routes send a model without a configured
    /// `provider/` prefix (default: [`RouteDefaults::default`]).
    pub fn route_defaults(mut self, defaults: RouteDefaults) -> Self {
        self.defaults = Arc::new(defaults);
        self
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Parse { inner, pool: self.pool.clone(), max_body_bytes: self.max_body_bytes, defaults: self.defaults.clone() }
    }
}

/// Buffers the body and inserts [`RouteTarget`](crate::extensions::RouteTarget); see the [module docs](self).
#[derive(Clone)]
pub struct Parse<S> {
    inner: S,
    pool: Arc<KeyPool>,
    max_body_bytes: usize,
    defaults: Arc<RouteDefaults>,
}

impl<S: fmt::Debug> fmt::Debug for Parse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parse").field("inner", &self.inner).field("max_body_bytes", &self.max_body_bytes).finish()
    }
}

impl<S> Parse<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Bytes>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready to read a body: the inner service's readiness is
        // taken once the body is in, so a slow upload holds nothing inside.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let pool = self.pool.clone();
        let limit = self.max_body_bytes;
        let defaults = self.defaults.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // The router, when there is one, has already said which endpoint.
            let endpoint = match parts.extensions.get::<Endpoint>() {
                Some(endpoint) => *endpoint,
                None => Endpoint::from_path(parts.uri.path()).ok_or_else(|| RouteNotFound::new(parts.uri.path()))?,
            };
            let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit as u64) {
                return Err(BodyTooLarge::new(limit as u64).into());
            }
            let bytes = read_bounded(body, limit).await?;
            let target = route_target_with(&parts, &bytes, endpoint, &pool, &defaults)?;
            if let Some(record) = parts.extensions.get::<RequestRecord>()
                && let Some(provider) = pool.provider(target.provider().as_str())
            {
                let label = provider.model_label(target.model());
                record.set_route(target.provider().clone(), target.model_arc(), label);
            }
            parts.extensions.insert(target);
            let inner = inner.ready().await.map_err(Into::into)?;
            inner.call(Request::from_parts(parts, bytes)).await.map_err(Into::into)
        })
    }
}

async fn read_bounded<B>(body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyTooLarge::new(limit as u64).into()),
        Err(err) => Err(InvalidBody::new(format_args!("could not read it: {err}")).into()),
    }
}

mod alias;
mod session;
mod target;

pub use self::{
    alias::{AliasTarget, Aliases},
    target::{RouteDefaults, route_target, route_target_with},
};
