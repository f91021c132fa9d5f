//! `RequestLogLayer`: one tracing span per request and one event when it ends.
//!
//! The span (`request`) carries the request id (the client's `x-request-id`
//! when it is sane, else a generated one), method and path; inner layers fill
//! `provider`, `model`, `key`, `attempts` (each attempt's key, outcome and
//! duration) and `tokens_in` / `tokens_out` as they learn them, and this
//! layer records `status`. When the response body ends, fails, or is dropped because the
//! client left, one `request finished` event reports the status, the total
//! duration, the time to response headers and how the body ended. The
//! request id is echoed in the response's `x-request-id` header.
//!
//! Writes [`RequestId`]; reads the response's [`ErrorCode`].
//!
//! ```
//! use http::{Request, Response};
//! use keyrelay_layers::{extensions::RequestId, log::RequestLogLayer, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let svc = RequestLogLayer::new().layer(service_fn(|req: Request<()>| async move {
//!     let id = req.extensions().get::<RequestId>().unwrap().clone();
//!     Ok::<_, BoxError>(Response::new(http_body_util::Full::new(bytes::Bytes::from(id.to_string()))))
//! }));
//! let req = Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, HeaderValue, Request, Response, header::HeaderName};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::{Span, field::Empty};

use crate::extensions::{ErrorCode, MetricLabels, RequestId};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LEN: usize = 128;

/// Applies [`RequestLog`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestLogLayer {
    _private: (),
}

impl RequestLogLayer {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

/// Logs each request; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RequestLog<S> {
    inner: S,
}

impl<S> RequestLog<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for RequestLog<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    S::Error: fmt::Display,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = request_id(req.headers());
        let span = tracing::info_span!(
            "request",
            id = id.as_str(),
            method = %req.method(),
            path = req.uri().path(),
            provider = Empty,
            model = Empty,
            key = Empty,
            attempts = Empty,
            tokens_in = Empty,
            tokens_out = Empty,
            status = Empty,
        );
        req.extensions_mut().insert(id.clone());
        let labels = MetricLabels::default();
        req.extensions_mut().insert(labels.clone());
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture { inner, log: Some(Log { span, id, start: Instant::now(), labels }) }
    }
}

/// The client's id when it is short printable ASCII, else a fresh one.
fn request_id(headers: &HeaderMap) -> RequestId {
    let given = headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => RequestId::new(id),
        None => RequestId::new(&format!("{:032x}", fastrand::u128(..))),
    }
}

struct Log {
    span: Span,
    id: RequestId,
    start: Instant,
    labels: MetricLabels,
}

pin_project! {
    /// The [`RequestLog`] future.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        log: Option<Log>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // The client left before the response headers: still one event.
            if let Some(Log { span, start, labels, .. }) = this.project().log.take() {
                Finish { span, start, headers_after_ms: None, status: None, code: None, labels }.report("cancelled");
            }
        }
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
    ResBody: Body,
    E: fmt::Display,
{
    type Output = Result<Response<LoggedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let log = this.log.as_ref().expect("polled after completion");
        let result = {
            let _entered = log.span.enter();
            ready!(this.inner.poll(cx))
        };
        let Log { span, id, start, labels } = this.log.take().expect("checked above");
        let mut res = match result {
            Ok(res) => res,
            Err(err) => {
                tracing::warn!(parent: &span, error = %err, duration_ms = start.elapsed().as_millis() as u64, "request failed");
                return Poll::Ready(Err(err));
            }
        };
        let status = res.status().as_u16();
        span.record("status", status);
        let code = res.extensions().get::<ErrorCode>().map(|code| code.0);
        if let Ok(value) = HeaderValue::from_str(id.as_str()) {
            res.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        let headers_after_ms = start.elapsed().as_millis() as u64;
        let mut finish =
            Some(Finish { span, start, headers_after_ms: Some(headers_after_ms), status: Some(status), code, labels });
        if res.body().is_end_stream() {
            // An empty body may never be polled; it is complete already.
            finish.take().expect("just set").report("completed");
        }
        Poll::Ready(Ok(res.map(|inner| LoggedBody { inner, finish })))
    }
}

struct Finish {
    span: Span,
    start: Instant,
    /// `None` when the client left before the response headers.
    headers_after_ms: Option<u64>,
    status: Option<u16>,
    code: Option<&'static str>,
    labels: MetricLabels,
}

impl Finish {
    fn report(self, outcome: &'static str) {
        let (provider, model) = match self.labels.get() {
            Some((provider, model)) => (provider.as_str().to_owned(), model.to_string()),
            None => ("none".to_owned(), "none".to_owned()),
        };
        let status_class = self.status.map_or("cancelled", crate::metrics::status_class);
        let elapsed = self.start.elapsed().as_secs_f64();
        let labels = [
            ("provider", provider.clone()),
            ("model", model),
            ("status_class", status_class.to_owned()),
            ("error_kind", self.code.unwrap_or("none").to_owned()),
        ];
        metrics::counter!(crate::metrics::REQUESTS, &labels).increment(1);
        let labels = [("provider", provider.clone()), ("status_class", status_class.to_owned())];
        metrics::histogram!(crate::metrics::REQUEST_DURATION, &labels).record(elapsed);
        if let Some(ms) = self.headers_after_ms {
            metrics::histogram!(crate::metrics::TIME_TO_FIRST_BYTE, "provider" => provider).record(ms as f64 / 1000.0);
        }
        tracing::info!(
            parent: &self.span,
            status = self.status,
            code = self.code,
            outcome,
            headers_after_ms = self.headers_after_ms,
            duration_ms = self.start.elapsed().as_millis() as u64,
            "request finished"
        );
    }
}

pin_project! {
    /// A response body that reports, once, how and when it ended.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().finish.take() {
                finish.report("cancelled");
            }
        }
    }
}

impl<B> fmt::Debug for LoggedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedBody").finish_non_exhaustive()
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body,
    B::Error: fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = {
            let _entered = this.finish.as_ref().map(|finish| finish.span.enter());
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Ok(_)) | None => {
                if let Some(finish) = this.finish.take() {
                    finish.report("completed");
                }
            }
            Some(Err(err)) => {
                if let Some(finish) = this.finish.take() {
                    tracing::warn!(parent: &finish.span, error = %err, "response body failed");
                    finish.report("errored");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
