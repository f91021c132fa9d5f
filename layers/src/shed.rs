//! `LoadShedLayer`: a cap on requests in flight across the whole proxy.
//!
//! Past the cap a request is refused at once with [`Overloaded`] (503 and
//! `Retry-After: 1`) instead of queueing: under a flood, the requests already
//! admitted keep their latency and the rest learn immediately to come back.
//! A request counts from its arrival until its response body ends (a stream
//! holds its place until the last event), fails, or the client leaves.
//!
//! A cap of `0` means no cap, as `server.max_concurrent_requests = 0` does:
//! the layer then counts nothing and costs a request no atomic operation.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{error::ErrorReply, shed::LoadShedLayer, BoxError};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let layer = LoadShedLayer::new(1);
//! let mut svc = layer.layer(service_fn(|_: Request<()>| async {
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"hi"))))
//! }));
//! let first = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! let err = svc.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
//! assert_eq!(ErrorReply::from_error(&*err).status, 503, "the first body still holds the only place");
//! drop(first);
//! assert!(svc.ready().await.unwrap().call(Request::new(())).await.is_ok());
//! assert_eq!(layer.in_flight(), 0);
//! # });
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{BoxError, body::GuardedBody, error::Overloaded};

/// Applies [`LoadShed`]; clones share one count.
#[derive(Clone, Debug)]
pub struct LoadShedLayer {
    /// `None`: no cap, nothing counted.
    gate: Option<Arc<Gate>>,
}

#[derive(Debug)]
struct Gate {
    max: usize,
    in_flight: AtomicUsize,
}

impl LoadShedLayer {
    /// Admits at most `max` requests at once; `0` means no cap (and no
    /// counting: see [`in_flight`](Self::in_flight)).
    pub fn new(max: usize) -> Self {
        let gate = (max > 0).then(|| Arc::new(Gate { max, in_flight: AtomicUsize::new(0) }));
        Self { gate }
    }

    /// The cap; `None` when there is none.
    pub fn max(&self) -> Option<usize> {
        self.gate.as_ref().map(|gate| gate.max)
    }

    /// Requests admitted and not yet finished; always 0 without a cap,
    /// where requests are not counted.
    pub fn in_flight(&self) -> usize {
        self.gate.as_ref().map_or(0, |gate| gate.in_flight.load(Ordering::Relaxed))
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, gate: self.gate.clone() }
    }
}

/// Refuses requests past the cap; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

/// One admitted request's place; released when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let taken = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if taken >= self.max {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(self.clone()))
    }
}

impl<S, B, ResBody> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, Admitted>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's: shedding happens per request,
        // so that a full proxy answers 503 instead of stalling the connection.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(gate) = &self.gate else {
            // No cap: nothing to count, and the body carries no place.
            return ResponseFuture { inner: Some(self.inner.call(req)), admitted: None };
        };
        match gate.admit() {
            Some(admitted) => ResponseFuture { inner: Some(self.inner.call(req)), admitted: Some(admitted) },
            None => ResponseFuture { inner: None, admitted: None },
        }
    }
}

pin_project! {
    /// The future of [`LoadShed`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        admitted: Option<Admitted>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<ResBody, Admitted>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Overloaded::new().into()));
        };
        let res = ready!(inner.poll(cx)).map_err(Into::into)?;
        // The place moves into the body: a stream keeps it until it ends.
        Poll::Ready(Ok(res.map(|body| GuardedBody::new(body, this.admitted.take()))))
    }
}
