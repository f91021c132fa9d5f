//! `KeyConcurrencyLayer`: a hard cap of requests in flight per (key, model).
//!
//! When the provider caps concurrency (`MAX_CONCURRENT_REQUESTS_PER_KEY_<P>`
//! or `max_concurrent_per_key`), the request takes a permit of its (key,
//! model) semaphore and moves it into the response body: a stream holds it
//! until it ends, fails, or the client goes away, and its release wakes
//! requests waiting in KeySelect. KeySelect only chooses keys with a free
//! slot, but another request may take the last one in between: then this
//! layer fails at once with [`KeyBusy`], which RetryRotate answers by
//! choosing again, with no penalty for the key.
//!
//! Reads [`KeyLease`] and [`RouteTarget`].
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use keyrelay_layers::{
//!     concurrency::KeyConcurrencyLayer, extensions::{Endpoint, RouteTarget},
//!     pool::{KeyPool, ProviderOptions, Secret, Selection}, provider::{Provider, ProviderId}, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let options = ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(1);
//! let pool = KeyPool::builder().provider_with(openai, options, vec![Secret::new("sk-1")]).build().unwrap();
//! let (lease, _in_flight) = pool.provider("openai").unwrap().lease().unwrap();
//!
//! let svc = KeyConcurrencyLayer::new().layer(service_fn(|_: Request<Bytes>| async {
//!     Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new()))
//! }));
//! let mut req = Request::new(Bytes::new());
//! req.extensions_mut().insert(RouteTarget::new(ProviderId::new("openai"), "", Endpoint::ChatCompletions, false));
//! req.extensions_mut().insert(lease.clone());
//! let held = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(lease.slots("").unwrap().available_permits(), 0, "the body holds the permit");
//! drop(held);
//! assert_eq!(lease.slots("").unwrap().available_permits(), 1);
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    BoxError,
    body::GuardedBody,
    error::{KeyBusy, MissingExtension},
    extensions::RouteTarget,
    pool::{KeyLease, SlotPermit},
};

/// Applies [`KeyConcurrency`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyConcurrencyLayer {
    _private: (),
}

impl KeyConcurrencyLayer {
    /// The caps come from each provider's options in the pool.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for KeyConcurrencyLayer {
    type Service = KeyConcurrency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyConcurrency { inner }
    }
}

/// Holds a (key, model) permit per request; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct KeyConcurrency<S> {
    inner: S,
}

impl<S> KeyConcurrency<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for KeyConcurrency<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, SlotPermit>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness here cannot know the key (it comes with the request):
        // slots are taken in `call`, and KeySelect waits for them.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let permit = match acquire(&req) {
            Ok(permit) => permit,
            Err(err) => return ResponseFuture { state: State::Failed { err: Some(err) } },
        };
        ResponseFuture { state: State::Called { inner: self.inner.call(req), permit: Some(permit) } }
    }
}

fn acquire<B>(req: &Request<B>) -> Result<Option<SlotPermit>, BoxError> {
    let target = req.extensions().get::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let Some(lease) = req.extensions().get::<KeyLease>() else {
        // A token count the proxy estimates itself goes without a key.
        return match target.endpoint().counts_tokens() {
            true => Ok(None),
            false => Err(MissingExtension::new("KeyLease").into()),
        };
    };
    let Some(slots) = lease.slots(target.model()) else {
        return Ok(None);
    };
    match slots.try_acquire_owned() {
        Ok(permit) => Ok(Some(SlotPermit::new(permit, lease.pool().clone()))),
        Err(_) => Err(KeyBusy::new(lease.key_id().as_str()).into()),
    }
}

pin_project! {
    /// The [`KeyConcurrency`] future: moves the permit into the body.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] inner: F, permit: Option<Option<SlotPermit>> },
        Failed { err: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<ResBody, SlotPermit>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { inner, permit } => {
                let res = ready!(inner.poll(cx)).map_err(Into::into)?;
                let permit = permit.take().expect("polled after completion");
                Poll::Ready(Ok(res.map(|body| GuardedBody::new(body, permit))))
            }
            StateProj::Failed { err } => Poll::Ready(Err(err.take().expect("polled after completion"))),
        }
    }
}
