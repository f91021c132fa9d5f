//! `DeadlineLayer`: one deadline for the whole request.
//!
//! The deadline covers everything from the moment the request enters this
//! layer until the inner service answers with response headers: reading the
//! body, choosing a key and the upstream call. It is inserted as a
//! [`Deadline`] extension so that inner layers can decide against the same
//! clock; an outer deadline that is sooner wins. When it passes, the request
//! fails with [`DeadlineExceeded`] (504). Streams are not cut once their
//! headers are out.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use keyrelay_layers::{timeout::DeadlineLayer, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let hangs = service_fn(|_: Request<()>| std::future::pending::<Result<Response<()>, BoxError>>());
//! let svc = DeadlineLayer::new(Duration::from_millis(5)).layer(hangs);
//! let err = svc.oneshot(Request::new(())).await.unwrap_err();
//! assert!(err.to_string().contains("deadline"));
//! # });
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout, timeout_at};
use tower::{Layer, Service};

use crate::{BoxError, error::DeadlineExceeded, extensions::Deadline};

/// Applies [`DeadlineService`].
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Fails requests that outlive their deadline; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Duration,
}

impl<S> DeadlineService<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let mut deadline = start + self.timeout;
        if let Some(Deadline(outer)) = req.extensions().get::<Deadline>() {
            deadline = deadline.min(*outer);
        }
        req.extensions_mut().insert(Deadline(deadline));
        ResponseFuture {
            inner: timeout_at(deadline, self.inner.call(req)),
            after: deadline - start,
        }
    }
}

pin_project! {
    /// The [`DeadlineService`] future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Timeout<F>,
        after: Duration,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(result) => Poll::Ready(result.map_err(Into::into)),
            Err(_elapsed) => Poll::Ready(Err(DeadlineExceeded::new(*this.after).into())),
        }
    }
}
