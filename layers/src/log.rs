//! `RequestLogLayer`: one tracing span per request and one event when it ends.
//!
//! The span (`request`) carries the request id (the client's `x-request-id`
//! when it is sane, else a generated one), method and path. Inner layers
//! write what they learn into the request's [`RequestRecord`] (this layer
//! puts it in the request): provider and model, each attempt's key, outcome
//! and duration, the tokens. When the response body ends, fails, or is
//! dropped because the client left, one `request finished` event reports
//! each of them once, with the status, the total duration, the time to
//! response headers and how the answer ended (`completed`, `errored` — also
//! a stream that broke after its headers — or `cancelled`). A response
//! marked [`Quiet`] reports at `debug` level. The request id is echoed in
//! the response's `x-request-id` header.
//!
//! With a [`RequestLogSink`] ([`RequestLogLayer::with_sink`]) it also keeps
//! a copy (at most [`CAPTURE_LIMIT`] bytes each) of the request body as the
//! inner stack reads it and of the response body as it goes to the client,
//! and hands one [`RequestLogEntry`] to the sink when the request ends
//! (credential headers redacted). The sink must not block; writing is its
//! business. Without a sink nothing is copied.
//!
//! Writes [`RequestId`] and [`RequestRecord`]; reads the response's
//! [`ErrorCode`] and [`Quiet`].
//!
//! ```
//! use http::{Request, Response};
//! use keyrelay_layers::{extensions::RequestId, log::RequestLogLayer, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let svc = RequestLogLayer::new().layer(service_fn(|req: Request<_>| async move {
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
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, header::HeaderName};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Span;

use crate::{
    extensions::{ErrorCode, RequestId},
    metrics::HandleCache,
    provider::ProviderId,
    record::{AttemptRecord, RequestRecord},
};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LEN: usize = 128;

/// How much of each body a [`RequestLogEntry`] keeps.
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// A response extension that asks for the completion event at `debug`
/// level rather than `info`: routes that are polled all day (`/health`)
/// would drown the log. Metrics and the request log still count them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

/// Where finished requests go, one [`RequestLogEntry`] each. Called on the
/// request path: it must not block (queue, or drop).
pub trait RequestLogSink: Send + Sync + 'static {
    /// Takes one finished request; must return at once.
    fn record(&self, entry: RequestLogEntry);
}

/// One finished request, for a [`RequestLogSink`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RequestLogEntry {
    /// The request id (also in the response's `x-request-id`).
    pub id: String,
    /// Arrival, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The request's method.
    pub method: String,
    /// The request's path (without the query string).
    pub path: String,
    /// As received, credential values replaced by `[redacted]`.
    pub request_headers: Vec<(String, String)>,
    /// The body as the proxy read it, at most [`CAPTURE_LIMIT`] bytes.
    pub request_body: Bytes,
    /// Whether the request body was longer than what is kept.
    pub request_body_truncated: bool,
    /// `None` when the client left before the response headers.
    pub status: Option<u16>,
    /// As sent to the client.
    pub response_headers: Vec<(String, String)>,
    /// The body as sent to the client, at most [`CAPTURE_LIMIT`] bytes.
    pub response_body: Bytes,
    /// Whether the response body was longer than what is kept.
    pub response_body_truncated: bool,
    /// The response was a server-sent event stream.
    pub event_stream: bool,
    /// `completed`, `errored` or `cancelled`.
    pub outcome: &'static str,
    /// From arrival to the response headers; `None` when there were none.
    pub headers_after_ms: Option<u64>,
    /// From arrival to the end of the response body (or the client leaving).
    pub duration_ms: u64,
    /// The provider, once Parse knew it.
    pub provider: Option<String>,
    /// The model's metrics label: the model when configured or listed by
    /// the provider, else `other`.
    pub model: Option<String>,
    /// Each upstream attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// `(prompt, completion)` tokens when the answer reported them.
    pub tokens: Option<(u64, u64)>,
    /// The provider's own answer bytes (at most [`CAPTURE_LIMIT`], and
    /// whether they were cut) where they differ from what the client got.
    pub upstream_body: Option<(Bytes, bool)>,
}

/// Applies [`RequestLog`].
#[derive(Clone, Default)]
pub struct RequestLogLayer {
    sink: Option<Arc<dyn RequestLogSink>>,
    handles: Arc<RequestHandles>,
}

impl fmt::Debug for RequestLogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLogLayer").field("sink", &self.sink.is_some()).finish()
    }
}

impl RequestLogLayer {
    /// Logs without a sink: spans and events only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also hands every finished request to `sink`.
    pub fn with_sink(mut self, sink: Arc<dyn RequestLogSink>) -> Self {
        self.sink = Some(sink);
        self
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner, sink: self.sink.clone(), handles: self.handles.clone() }
    }
}

/// Logs each request; see the [module docs](self).
#[derive(Clone)]
pub struct RequestLog<S> {
    inner: S,
    sink: Option<Arc<dyn RequestLogSink>>,
    handles: Arc<RequestHandles>,
}

/// The request metrics' handles by (provider, model label, status class,
/// error code); unknown provider and model are `None`.
type RequestHandles = HandleCache<RequestLabels, RequestMetrics>;
type RequestLabels = (Option<(ProviderId, Arc<str>)>, &'static str, Option<&'static str>);

#[derive(Clone)]
struct RequestMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
    first_byte: metrics::Histogram,
}

impl RequestMetrics {
    fn resolve((labels, status_class, code): &RequestLabels) -> Self {
        let (provider, model) = match labels {
            Some((provider, model)) => (provider.as_str().to_owned(), model.to_string()),
            None => ("none".to_owned(), "none".to_owned()),
        };
        let labels = [
            ("provider", provider.clone()),
            ("model", model),
            ("status_class", (*status_class).to_owned()),
            ("error_kind", code.unwrap_or("none").to_owned()),
        ];
        let requests = metrics::counter!(crate::metrics::REQUESTS, &labels);
        let labels = [("provider", provider.clone()), ("status_class", (*status_class).to_owned())];
        let duration = metrics::histogram!(crate::metrics::REQUEST_DURATION, &labels);
        let first_byte = metrics::histogram!(crate::metrics::TIME_TO_FIRST_BYTE, "provider" => provider);
        Self { requests, duration, first_byte }
    }
}

impl<S: fmt::Debug> fmt::Debug for RequestLog<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLog").field("inner", &self.inner).field("sink", &self.sink.is_some()).finish()
    }
}

impl<S> RequestLog<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for RequestLog<S>
where
    S: Service<Request<TeeBody<B>>, Response = Response<ResBody>>,
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
            // Shown as is (no quoting and escaping to pay for): the id is
            // printable ASCII without spaces, as is a parsed URI's path.
            id = %id.as_str(),
            method = %req.method(),
            path = %req.uri().path(),
        );
        req.extensions_mut().insert(id.clone());
        let labels = if self.sink.is_some() { RequestRecord::capturing_upstream() } else { RequestRecord::default() };
        req.extensions_mut().insert(labels.clone());
        let record = self.sink.as_ref().map(|sink| {
            Box::new(Record {
                sink: sink.clone(),
                id: id.as_str().to_owned(),
                started_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
                request_headers: redacted(req.headers()),
                request_body: Capture::default(),
                response_headers: Vec::new(),
                response_body: Capture::default(),
                event_stream: false,
            })
        });
        let capture = record.as_ref().map(|r| r.request_body.clone());
        let req = req.map(|inner| TeeBody { inner, capture });
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            log: Some(Log { handles: self.handles.clone(), span, id, start: Instant::now(), labels, record }),
        }
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
        None => {
            // 32 hex digits written in place: no String per request.
            let random = fastrand::u128(..);
            let mut hex = [0u8; 32];
            for (i, digit) in hex.iter_mut().enumerate() {
                *digit = b"0123456789abcdef"[((random >> (124 - 4 * i)) & 0xf) as usize];
            }
            RequestId::new(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
        }
    }
}

/// Header pairs with credential values redacted.
fn redacted(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if value.is_sensitive() || crate::credentials::is_credential(name) {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// A bounded copy of a body, shared between the body and its [`Record`].
#[derive(Clone, Debug, Default)]
struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Debug, Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn push(&self, data: &impl Buf) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk = data.chunk();
        // A non-contiguous buffer only shows its first part without copying.
        let mut truncated = chunk.len() < data.remaining();
        let room = CAPTURE_LIMIT.saturating_sub(buf.bytes.len());
        if chunk.len() > room {
            truncated = true;
        }
        buf.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        buf.truncated |= truncated;
    }

    fn take(&self) -> (Bytes, bool) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (Bytes::from(std::mem::take(&mut buf.bytes)), buf.truncated)
    }
}

/// What a [`RequestLogEntry`] is built from, kept only with a sink.
struct Record {
    sink: Arc<dyn RequestLogSink>,
    id: String,
    started_unix_ms: u64,
    method: String,
    path: String,
    request_headers: Vec<(String, String)>,
    request_body: Capture,
    response_headers: Vec<(String, String)>,
    response_body: Capture,
    event_stream: bool,
}

impl Record {
    fn send(self, finish: &Finish, outcome: &'static str) {
        let (request_body, request_body_truncated) = self.request_body.take();
        let (response_body, response_body_truncated) = self.response_body.take();
        let route = finish.labels.route();
        // Kept only where the provider's bytes differ from the client's
        // (a translated dialect, a dropped usage chunk, a re-framed stream).
        let upstream_body =
            finish.labels.upstream().filter(|(upstream, _)| !upstream.is_empty() && *upstream != response_body);
        self.sink.record(RequestLogEntry {
            id: self.id,
            started_unix_ms: self.started_unix_ms,
            method: self.method,
            path: self.path,
            request_headers: self.request_headers,
            request_body,
            request_body_truncated,
            status: finish.status,
            response_headers: self.response_headers,
            response_body,
            response_body_truncated,
            event_stream: self.event_stream,
            outcome,
            headers_after_ms: finish.headers_after_ms,
            duration_ms: finish.start.elapsed().as_millis() as u64,
            provider: route.map(|route| route.provider.as_str().to_owned()),
            model: route.map(|route| route.model_label.to_string()),
            attempts: finish.labels.attempts(),
            tokens: finish.labels.usage().map(|usage| (usage.prompt_tokens, usage.completion_tokens)),
            upstream_body,
        });
    }
}

struct Log {
    handles: Arc<RequestHandles>,
    span: Span,
    id: RequestId,
    start: Instant,
    labels: RequestRecord,
    record: Option<Box<Record>>,
}

pin_project! {
    /// The request body the inner service reads: as it came, copied (bounded)
    /// for the request log when there is a sink.
    pub struct TeeBody<B> {
        #[pin]
        inner: B,
        capture: Option<Capture>,
    }
}

impl<B> TeeBody<B> {
    /// A body that copies nothing (for building requests outside RequestLog).
    pub fn new(inner: B) -> Self {
        Self { inner, capture: None }
    }
}

impl<B> fmt::Debug for TeeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TeeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push(data);
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
            if let Some(Log { handles, span, start, labels, record, .. }) = this.project().log.take() {
                let finish =
                    Finish { handles, span, start, headers_after_ms: None, status: None, code: None, quiet: false, labels, record };
                finish.report("cancelled");
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
        let Log { handles, span, id, start, labels, mut record } = this.log.take().expect("checked above");
        let mut res = match result {
            Ok(res) => res,
            Err(err) => {
                tracing::warn!(parent: &span, error = %err, duration_ms = start.elapsed().as_millis() as u64, "request failed");
                if let Some(record) = record {
                    let finish = Finish {
                        handles,
                        span,
                        start,
                        headers_after_ms: None,
                        status: None,
                        code: None,
                        quiet: false,
                        labels,
                        record: None,
                    };
                    record.send(&finish, "errored");
                }
                return Poll::Ready(Err(err));
            }
        };
        let status = res.status().as_u16();
        let code = res.extensions().get::<ErrorCode>().map(|code| code.0);
        let quiet = res.extensions().get::<Quiet>().is_some();
        if let Ok(value) = HeaderValue::from_str(id.as_str()) {
            res.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        let headers_after_ms = start.elapsed().as_millis() as u64;
        let capture = record.as_mut().map(|record| {
            record.response_headers = redacted(res.headers());
            record.event_stream = res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
            record.response_body.clone()
        });
        let mut finish = Some(Finish {
            handles,
            span,
            start,
            headers_after_ms: Some(headers_after_ms),
            status: Some(status),
            code,
            quiet,
            labels,
            record,
        });
        if res.body().is_end_stream() {
            // An empty body may never be polled; it is complete already.
            finish.take().expect("just set").report("completed");
        }
        Poll::Ready(Ok(res.map(|inner| LoggedBody { inner, finish, capture })))
    }
}

struct Finish {
    handles: Arc<RequestHandles>,
    span: Span,
    start: Instant,
    /// `None` when the client left before the response headers.
    headers_after_ms: Option<u64>,
    status: Option<u16>,
    code: Option<&'static str>,
    /// The response asked for a quiet completion event (see [`Quiet`]).
    quiet: bool,
    labels: RequestRecord,
    record: Option<Box<Record>>,
}

impl Finish {
    fn report(mut self, outcome: &'static str) {
        // A stream that broke after its headers ended with an error event,
        // which is a clean end of the body but not of the answer.
        let outcome = if outcome == "completed" && self.labels.broken() { "errored" } else { outcome };
        if let Some(record) = self.record.take() {
            record.send(&self, outcome);
        }
        let status_class = self.status.map_or("cancelled", crate::metrics::status_class);
        let elapsed = self.start.elapsed().as_secs_f64();
        let route = self.labels.route();
        let key = (route.map(|r| (r.provider.clone(), r.model_label.clone())), status_class, self.code);
        let handles = self.handles.get(key, RequestMetrics::resolve);
        handles.requests.increment(1);
        handles.duration.record(elapsed);
        if let Some(ms) = self.headers_after_ms {
            handles.first_byte.record(ms as f64 / 1000.0);
        }
        // Everything the request learned goes in this one event, each field
        // once with its final value: fields recorded on the span would be
        // formatted again (and appended again) at every later record.
        let usage = self.labels.usage();
        let attempts = Attempts(&self.labels);
        macro_rules! finished {
            ($level:expr) => {
                tracing::event!(
                    parent: &self.span,
                    $level,
                    status = self.status,
                    provider = route.map(|r| tracing::field::display(r.provider.as_str())),
                    model = route.map(|r| &*r.model),
                    key = self.labels.last_key().map(tracing::field::display),
                    attempts = (self.labels.attempt_count() > 0).then_some(tracing::field::display(&attempts)),
                    tokens_in = usage.map(|u| u.prompt_tokens),
                    tokens_out = usage.map(|u| u.completion_tokens),
                    code = self.code,
                    outcome,
                    headers_after_ms = self.headers_after_ms,
                    duration_ms = self.start.elapsed().as_millis() as u64,
                    "request finished"
                )
            };
        }
        if self.quiet {
            finished!(tracing::Level::DEBUG);
        } else {
            finished!(tracing::Level::INFO);
        }
    }
}

/// The attempts trail as the completion event shows it:
/// `openai:1a2b3c4d rate_limit 120ms, openai:5e6f7a8b success 310ms`.
struct Attempts<'a>(&'a RequestRecord);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_attempts(f)
    }
}

pin_project! {
    /// A response body that reports, once, how and when it ended.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
        capture: Option<Capture>,
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
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push(data);
        }
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
