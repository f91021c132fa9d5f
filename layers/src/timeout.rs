//! `DeadlineLayer`: one deadline for the whole request.
//!
//! The deadline covers everything from the moment the request enters this
//! layer: reading the body, choosing a key, the upstream call, and, for a
//! response that is not an event stream, its whole body. It is inserted as a
//! [`Deadline`] extension so that inner layers can decide against the same
//! clock; an outer deadline that is sooner wins. Passed before the response
//! headers, the request fails with [`DeadlineExceeded`] (504); passed while a
//! non-stream body is still arriving, the body ends with that error (the
//! `200` is out by then, so the connection is cut). A `text/event-stream`
//! body is never cut: it is bounded by its idle timeout instead.
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

use http::{Request, Response, header::CONTENT_TYPE};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, Timeout, sleep_until, timeout_at};
use tower::{Layer, Service};

use crate::{BoxError, error::DeadlineExceeded, extensions::Deadline};

/// Applies [`DeadlineService`].
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// Each request has `timeout` from the moment it enters the layer.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, timeout: self.timeout }
    }
}

/// Fails requests that outlive their deadline; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Duration,
}

impl<S> DeadlineService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<ResBody>>;
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
        ResponseFuture { inner: timeout_at(deadline, self.inner.call(req)), deadline, after: deadline - start }
    }
}

pin_project! {
    /// The [`DeadlineService`] future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Timeout<F>,
        deadline: Instant,
        after: Duration,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<DeadlineBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match ready!(this.inner.poll(cx)) {
            Ok(result) => result.map_err(Into::into)?,
            Err(_elapsed) => return Poll::Ready(Err(DeadlineExceeded::new(*this.after).into())),
        };
        let is_stream = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let (deadline, after) = (*this.deadline, *this.after);
        Poll::Ready(Ok(res.map(|inner| DeadlineBody {
            inner,
            sleep: (!is_stream).then(|| Box::pin(sleep_until(deadline))),
            after,
        })))
    }
}

pin_project! {
    /// A response body bounded by the request's deadline, unless it is an
    /// event stream.
    #[derive(Debug)]
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        // Boxed because `Sleep` is `!Unpin` and only non-stream bodies need one.
        sleep: Option<Pin<Box<Sleep>>>,
        after: Duration,
    }
}

impl<B> DeadlineBody<B> {
    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
    /// Unwraps the inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(sleep) = this.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            *this.sleep = None;
            return Poll::Ready(Some(Err(DeadlineExceeded::new(*this.after).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
