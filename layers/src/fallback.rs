//! `FallbackLayer`: a model alias moves to its next target when a pool
//! cannot serve.
//!
//! Parse gives a request for an alias (`[models."gpt-4o"] targets =
//! ["openai/gpt-4o", "openrouter/openai/gpt-4o"]`) the
//! [`RouteTarget`] of its first target, with the later ones as its
//! [`fallbacks`](RouteTarget::fallbacks). This layer sends the request
//! inward; when the answer is an error that says the target's whole pool
//! cannot serve it ([`pool_cannot_serve`]: every key cooling, resting,
//! invalid or bound to other models, none configured, or every attempt
//! failed), it sends the same request again (same body bytes, same
//! [`Deadline`]) with the next target's `RouteTarget`, and so on; when none
//! is left it returns the last error. Anything else comes back as it is:
//! a success, an upstream's answer about the request itself (a 400 is the
//! client's fault wherever it goes), the proxy's own refusals.
//!
//! Later targets pass the operator's allow and deny rules here
//! (ModelFilter, outside, checked the first): a blocked one is skipped.
//! Nothing falls back once the deadline has passed, nor for a request
//! bound to one key (a Responses API follow-up), whose state lives with
//! that key. Inside RetryRotate each target gets its own rotation over its
//! own pool; out here only whole pools are judged.
//!
//! Reads [`RouteTarget`] and [`Deadline`]; writes the next target's
//! [`RouteTarget`] into each fallback's request.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use keyrelay_layers::{
//!     error::AllKeysCooling, extensions::{Endpoint, RouteTarget}, fallback::FallbackLayer, parse::AliasTarget,
//!     pool::KeyPool, provider::{Provider, ProviderId}, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let p = |id| Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap();
//! let pool = KeyPool::builder()
//!     .provider(p("openai"), Default::default(), vec![])
//!     .provider(p("openrouter"), Default::default(), vec![])
//!     .build()
//!     .unwrap();
//! // Stands in for RetryRotate and the rest: OpenAI's keys are all rate limited.
//! let inner = service_fn(|req: Request<Bytes>| async move {
//!     let target = req.extensions().get::<RouteTarget>().unwrap();
//!     match target.provider().as_str() {
//!         "openai" => Err::<Response<String>, BoxError>(AllKeysCooling::new("openai", "gpt-4o", Duration::from_secs(30)).into()),
//!         _ => Ok(Response::new(format!("{}/{}", target.provider(), target.model()))),
//!     }
//! });
//! let svc = FallbackLayer::new(pool).layer(inner);
//!
//! let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false)
//!     .with_fallbacks([AliasTarget::new("openrouter", "openai/gpt-4o")].into());
//! let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(b"{}")).unwrap();
//! req.extensions_mut().insert(target);
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "openrouter/openai/gpt-4o");
//! # });
//! ```

use std::{
    error::Error,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Request;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::{
    BoxError,
    error::{
        AllKeysCooling, KeysExhausted, KeysRecovering, ModelNotServed, NoKeyConfigured, NoUsableKey, UpstreamFailed,
    },
    extensions::{Deadline, RequestId, RouteTarget},
    parse::AliasTarget,
    pool::KeyPool,
};

/// Applies [`Fallback`].
#[derive(Clone, Debug)]
pub struct FallbackLayer {
    pool: Arc<KeyPool>,
}

impl FallbackLayer {
    /// `pool` holds each provider's model rules, which later targets must
    /// pass.
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback { inner, pool: self.pool.clone() }
    }
}

/// Tries a model alias's targets in turn; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Fallback<S> {
    inner: S,
    pool: Arc<KeyPool>,
}

impl<S> Fallback<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Bytes>> for Fallback<S>
where
    S: Service<Request<Bytes>> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let fallbacks = req
            .extensions()
            .get::<RouteTarget>()
            .filter(|target| target.required_key().is_none())
            .and_then(|target| target.fallbacks().cloned());
        let Some(fallbacks) = fallbacks else {
            // Not an alias with somewhere else to go: straight through.
            let answer = self.inner.call(req);
            return Box::pin(async move { answer.await.map_err(Into::into) });
        };
        // The ready service makes the first try; later ones wait for its
        // readiness again.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(each_target(inner, req, self.pool.clone(), fallbacks))
    }
}

/// Whether `err` says that a provider's whole pool cannot serve the
/// request now, so that another provider may: [`AllKeysCooling`],
/// [`KeysRecovering`], [`NoUsableKey`], [`NoKeyConfigured`],
/// [`ModelNotServed`], [`KeysExhausted`], or [`UpstreamFailed`] after
/// every attempt (anywhere in its chain of sources).
pub fn pool_cannot_serve(err: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<AllKeysCooling>()
            || err.is::<KeysRecovering>()
            || err.is::<NoUsableKey>()
            || err.is::<NoKeyConfigured>()
            || err.is::<ModelNotServed>()
            || err.is::<KeysExhausted>()
            || err.is::<UpstreamFailed>()
        {
            return true;
        }
        cause = err.source();
    }
    false
}

async fn each_target<S>(
    mut svc: S,
    pristine: Request<Bytes>,
    pool: Arc<KeyPool>,
    fallbacks: Arc<[AliasTarget]>,
) -> Result<S::Response, BoxError>
where
    S: Service<Request<Bytes>>,
    S::Error: Into<BoxError>,
{
    let deadline = pristine.extensions().get::<Deadline>().map(|d| d.0);
    let first = pristine.extensions().get::<RouteTarget>().cloned().expect("call() found the RouteTarget");
    let mut current = first.clone();
    let mut rest = fallbacks.iter();
    let mut req = copy(&pristine);
    loop {
        let ready = svc.ready().await.map_err(Into::into)?;
        let err = match ready.call(req).await.map_err(Into::into) {
            Ok(res) => return Ok(res),
            Err(err) => err,
        };
        if !pool_cannot_serve(&*err) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(err);
        }
        let Some(next) = rest.find(|target| target.allowed_by(&pool)) else {
            return Err(err);
        };
        tracing::info!(
            request_id = pristine.extensions().get::<RequestId>().map(tracing::field::display),
            from = format_args!("{}/{}", current.provider(), current.model()),
            to = format_args!("{}/{}", next.provider, next.model),
            error = %err,
            "model alias falls back to its next target"
        );
        let labels = [("from", current.provider().as_str().to_owned()), ("to", next.provider.as_str().to_owned())];
        metrics::counter!(crate::metrics::FALLBACKS, &labels).increment(1);
        current = first.retarget(next);
        if let Some(record) = pristine.extensions().get::<crate::record::RequestRecord>()
            && let Some(provider) = pool.provider(current.provider().as_str())
        {
            let label = provider.model_label(current.model());
            record.set_fallback_route(current.provider().clone(), current.model_arc(), label);
        }
        req = copy(&pristine);
        req.extensions_mut().insert(current.clone());
    }
}

/// A fresh copy of the parsed request (the body's bytes are shared).
fn copy(pristine: &Request<Bytes>) -> Request<Bytes> {
    let mut req = Request::new(pristine.body().clone());
    *req.method_mut() = pristine.method().clone();
    *req.uri_mut() = pristine.uri().clone();
    *req.version_mut() = pristine.version();
    *req.headers_mut() = pristine.headers().clone();
    *req.extensions_mut() = pristine.extensions().clone();
    req
}

#[cfg(test)]
mod tests;
