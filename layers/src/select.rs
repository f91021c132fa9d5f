//! `KeySelectLayer`: picks the key for a request.
//!
//! The provider's strategy (`least_used` by default) chooses among its keys;
//! the chosen key is counted in flight from that moment, so concurrent
//! selections see each other, until the response body ends or is dropped.
//!
//! Reads [`RouteTarget`]; writes [`KeyLease`]. Records `key` in the current
//! tracing span. Fails with [`NoKeyConfigured`] (503) when the provider has
//! no key, [`UnknownProvider`] (400) or [`MissingExtension`] (500).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use keyrelay_layers::{
//!     extensions::{Endpoint, RouteTarget}, pool::{KeyLease, KeyPool, Secret}, provider::{Provider, ProviderId},
//!     select::KeySelectLayer, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let pool = KeyPool::builder().provider(openai, Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
//! let svc = KeySelectLayer::new(pool.clone()).layer(service_fn(|req: Request<Bytes>| async move {
//!     assert!(req.extensions().get::<KeyLease>().unwrap().key_id().as_str().starts_with("openai:"));
//!     Ok::<_, BoxError>(Response::new(http_body_util::Empty::<Bytes>::new()))
//! }));
//! let mut req = Request::new(Bytes::new());
//! let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false);
//! req.extensions_mut().insert(target);
//! let res = svc.oneshot(req).await.unwrap();
//! let key = &pool.provider("openai").unwrap().keys()[0];
//! assert_eq!(key.in_flight(), 1, "counted until the body is done");
//! drop(res);
//! assert_eq!(key.in_flight(), 0);
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    BoxError,
    body::LeasedBody,
    error::{MissingExtension, NoKeyConfigured, UnknownProvider},
    extensions::RouteTarget,
    pool::{InFlight, KeyLease, KeyPool},
};

/// Applies [`KeySelect`].
#[derive(Clone, Debug)]
pub struct KeySelectLayer {
    pool: Arc<KeyPool>,
}

impl KeySelectLayer {
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for KeySelectLayer {
    type Service = KeySelect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeySelect {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// Leases a key for each request; see the [module docs](self).
#[derive(Clone)]
pub struct KeySelect<S> {
    inner: S,
    pool: Arc<KeyPool>,
}

impl<S: fmt::Debug> fmt::Debug for KeySelect<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySelect")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> KeySelect<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for KeySelect<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<LeasedBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let leased = match self.lease(&req) {
            Ok(leased) => leased,
            Err(err) => {
                return ResponseFuture {
                    state: State::Failed { err: Some(err) },
                };
            }
        };
        let (lease, in_flight) = leased;
        tracing::Span::current().record("key", lease.key_id().as_str());
        req.extensions_mut().insert(lease);
        ResponseFuture {
            state: State::Called {
                inner: self.inner.call(req),
                in_flight: Some(in_flight),
            },
        }
    }
}

impl<S> KeySelect<S> {
    fn lease<B>(&self, req: &Request<B>) -> Result<(KeyLease, InFlight), BoxError> {
        let target = req
            .extensions()
            .get::<RouteTarget>()
            .ok_or_else(|| MissingExtension::new("RouteTarget"))?;
        let provider = target.provider().as_str();
        let pool = self.pool.provider(provider).ok_or_else(|| {
            UnknownProvider::new(
                provider,
                self.pool.providers().map(|p| p.provider().id().as_str()),
            )
        })?;
        pool.lease()
            .ok_or_else(|| NoKeyConfigured::new(provider).into())
    }
}

pin_project! {
    /// The [`KeySelect`] future: moves the in-flight guard into the body.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] inner: F, in_flight: Option<InFlight> },
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
    type Output = Result<Response<LeasedBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { inner, in_flight } => {
                let res = ready!(inner.poll(cx)).map_err(Into::into)?;
                let in_flight = in_flight.take().expect("polled after completion");
                Poll::Ready(Ok(res.map(|body| LeasedBody::new(body, in_flight))))
            }
            StateProj::Failed { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}
