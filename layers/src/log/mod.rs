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
//! the response's `x-request-id` header. With an [`AccessLog`] the line is
//! the access log's to write, and no span is made (other events of the
//! request name `request_id` themselves).
//!
//! With a [`RequestLogSink`] ([`RequestLogLayer::with_sink`]) it also keeps
//! a copy (at most [`CAPTURE_LIMIT`] bytes each) of the request body as the
//! inner stack reads it and of the response body as it goes to the client,
//! and hands one [`RequestLogEntry`] to the sink when the request ends
//! (credential headers redacted). The sink must not block; writing is its
//! business. Without a sink nothing is copied.
//!
//! With prices ([`RequestLogLayer::with_prices`]) each request's cost is
//! reckoned from its usage when it ends, for the cost and per-client token
//! metrics; with a [`LedgerSink`] ([`RequestLogLayer::with_ledger`]) each
//! request on a proxied route ends as one [`LedgerRow`].
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

mod access;
mod body;
mod entry;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header::HeaderName};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::{Level, Span};

use self::entry::{Capture, Record, redacted};
pub use self::{
    access::{AccessLog, AttemptsTrail, Completion},
    body::{LoggedBody, TeeBody},
    entry::{CAPTURE_LIMIT, RequestLogEntry, RequestLogSink},
};
use crate::{
    extensions::{Endpoint, ErrorCode, Inbound, RequestId},
    ledger::{LedgerRow, LedgerSink},
    metrics::HandleCache,
    price::{CostTotals, PriceTable},
    provider::ProviderId,
    record::RequestRecord,
};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LEN: usize = 128;

/// A response extension that asks for the completion event at `debug`
/// level rather than `info`: routes that are polled all day (`/health`)
/// would drown the log. Metrics and the request log still count them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

/// Applies [`RequestLog`].
#[derive(Clone, Default)]
pub struct RequestLogLayer {
    sink: Option<Arc<dyn RequestLogSink>>,
    access: Option<Arc<dyn AccessLog>>,
    handles: Arc<RequestHandles>,
    spend: Arc<Spend>,
}

/// What the end of a request is reckoned with: prices, the cost totals
/// they add to, and the ledger.
#[derive(Default)]
struct Spend {
    prices: Arc<PriceTable>,
    totals: Arc<CostTotals>,
    ledger: Option<Arc<dyn LedgerSink>>,
    tokens: HandleCache<(Arc<str>, ProviderId, Arc<str>), [metrics::Counter; 3]>,
    unpriced: HandleCache<(ProviderId, Arc<str>), metrics::Counter>,
}

impl fmt::Debug for RequestLogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLogLayer")
            .field("sink", &self.sink.is_some())
            .field("access_log", &self.access.is_some())
            .field("ledger", &self.spend.ledger.is_some())
            .finish()
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

    /// Writes the completion line through `access` instead of a `tracing`
    /// event (see [`AccessLog`]); the subscriber's level filter still
    /// decides whether it is written.
    pub fn with_access_log(mut self, access: Arc<dyn AccessLog>) -> Self {
        self.access = Some(access);
        self
    }

    /// Reckons each request's cost with `prices`, adding it to `totals`
    /// (the `keyrelay_cost_usd_total` the binary serves) and to the ledger.
    pub fn with_prices(mut self, prices: Arc<PriceTable>, totals: Arc<CostTotals>) -> Self {
        let spend = self.spend_mut();
        spend.prices = prices;
        spend.totals = totals;
        self
    }

    /// Hands one [`LedgerRow`] per finished request on a proxied route to
    /// `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<dyn LedgerSink>) -> Self {
        self.spend_mut().ledger = Some(ledger);
        self
    }

    fn spend_mut(&mut self) -> &mut Spend {
        if Arc::get_mut(&mut self.spend).is_none() {
            let current = &self.spend;
            self.spend = Arc::new(Spend {
                prices: current.prices.clone(),
                totals: current.totals.clone(),
                ledger: current.ledger.clone(),
                ..Spend::default()
            });
        }
        Arc::get_mut(&mut self.spend).expect("just made unique")
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            sink: self.sink.clone(),
            access: self.access.clone(),
            handles: self.handles.clone(),
            spend: self.spend.clone(),
        }
    }
}

/// Logs each request; see the [module docs](self).
#[derive(Clone)]
pub struct RequestLog<S> {
    inner: S,
    sink: Option<Arc<dyn RequestLogSink>>,
    access: Option<Arc<dyn AccessLog>>,
    handles: Arc<RequestHandles>,
    spend: Arc<Spend>,
}

/// The request metrics' handles by (provider, model label, status class,
/// error code, inbound dialect, client); unknown provider and model are
/// `None`, as is the client of a request refused before its key was known.
type RequestHandles = HandleCache<RequestLabels, RequestMetrics>;
type RequestLabels = (Option<(ProviderId, Arc<str>)>, &'static str, Option<&'static str>, Inbound, Option<Arc<str>>);

#[derive(Clone)]
struct RequestMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
    first_byte: metrics::Histogram,
}

impl RequestMetrics {
    fn resolve((labels, status_class, code, inbound, client): &RequestLabels) -> Self {
        let (provider, model) = match labels {
            Some((provider, model)) => (provider.as_str().to_owned(), model.to_string()),
            None => ("none".to_owned(), "none".to_owned()),
        };
        let labels = [
            ("provider", provider.clone()),
            ("model", model),
            ("status_class", (*status_class).to_owned()),
            ("error_kind", code.unwrap_or("none").to_owned()),
            ("inbound", inbound.as_str().to_owned()),
            ("client", client.as_deref().unwrap_or("none").to_owned()),
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
        // Shown as is (no quoting and escaping to pay for): the id is
        // printable ASCII without spaces, as is a parsed URI's path.
        let span = match self.access {
            // The access log writes id, method and path on its own line, and
            // the few other events of a request name its id themselves: a
            // span, created, entered and left at every poll, was 5% of a
            // request's instructions.
            Some(_) => Span::none(),
            None => tracing::info_span!("request", id = %id.as_str(), method = %req.method(), path = %req.uri().path()),
        };
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
        let line = Line { access: self.access.clone(), id, method: req.method().clone(), uri: req.uri().clone() };
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            log: Some(Log {
                handles: self.handles.clone(),
                spend: self.spend.clone(),
                span,
                line,
                start: Instant::now(),
                labels,
                record,
            }),
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

struct Log {
    handles: Arc<RequestHandles>,
    spend: Arc<Spend>,
    span: Span,
    line: Line,
    start: Instant,
    labels: RequestRecord,
    record: Option<Box<Record>>,
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
            if let Some(log) = this.project().log.take() {
                log.finish(None, false).report("cancelled");
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
        let mut log = this.log.take().expect("checked above");
        let mut res = match result {
            Ok(res) => res,
            Err(err) => {
                let ms = log.start.elapsed().as_millis() as u64;
                let id = log.line.id.as_str();
                tracing::warn!(parent: &log.span, request_id = id, error = %err, duration_ms = ms, "request failed");
                if let Some(record) = log.record.take() {
                    record.send(&log.finish(None, false), "errored");
                }
                return Poll::Ready(Err(err));
            }
        };
        let status = res.status().as_u16();
        let code = res.extensions().get::<ErrorCode>().map(|code| code.0);
        let quiet = res.extensions().get::<Quiet>().is_some();
        if let Ok(value) = HeaderValue::from_str(log.line.id.as_str()) {
            res.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        let capture = log.record.as_mut().map(|record| {
            record.response_headers = redacted(res.headers());
            record.event_stream = res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
            record.response_body.clone()
        });
        let mut finish = Some(log.finish(Some((status, code)), quiet));
        if res.body().is_end_stream() {
            // An empty body may never be polled; it is complete already.
            finish.take().expect("just set").report("completed");
        }
        Poll::Ready(Ok(res.map(|inner| LoggedBody { inner, finish, capture })))
    }
}

impl Log {
    /// What reports the request's end: with `(status, code)` once the
    /// response headers are known, without when there are none.
    fn finish(self, answered: Option<(u16, Option<&'static str>)>, quiet: bool) -> Finish {
        let Log { handles, spend, span, line, start, labels, record } = self;
        Finish {
            handles,
            spend,
            span,
            line,
            headers_after_ms: answered.map(|_| start.elapsed().as_millis() as u64),
            start,
            status: answered.map(|(status, _)| status),
            code: answered.and_then(|(_, code)| code),
            quiet,
            labels,
            record,
        }
    }
}

/// What the completion line says of the request itself.
struct Line {
    access: Option<Arc<dyn AccessLog>>,
    id: RequestId,
    method: Method,
    uri: Uri,
}

struct Finish {
    handles: Arc<RequestHandles>,
    spend: Arc<Spend>,
    span: Span,
    line: Line,
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
        let elapsed = self.start.elapsed();
        let route = self.labels.route();
        let route = route.as_ref();
        let labels = route.map(|r| (r.provider.clone(), self.labels.model_label().unwrap_or_else(|| r.model.clone())));
        let client = self.labels.client();
        let key = (labels, status_class, self.code, Inbound::from_path(self.line.uri.path()), client.clone());
        let handles = self.handles.get(key, RequestMetrics::resolve);
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        if let Some(ms) = self.headers_after_ms {
            handles.first_byte.record(ms as f64 / 1000.0);
        }
        let usage = self.labels.usage();
        let model_label = self.labels.model_label();
        let cost = self.spend.count(client.as_ref(), route, model_label, usage);
        if let Some(ledger) = &self.spend.ledger
            && let Some(endpoint) = Endpoint::from_path(self.line.uri.path())
        {
            ledger.record(self.ledger_row(endpoint, outcome, client, route, usage, cost, elapsed));
        }
        let level = if self.quiet { Level::DEBUG } else { Level::INFO };
        // The subscriber's filter decides, for an access log too.
        let enabled = match level {
            Level::DEBUG => tracing::enabled!(Level::DEBUG),
            _ => tracing::enabled!(Level::INFO),
        };
        if !enabled {
            return;
        }
        // Read before the attempts, whose lock the line borrows them under.
        let tokens = self.labels.usage();
        self.labels.with_attempts(|attempts| {
            let line = Completion {
                level,
                id: self.line.id.as_str(),
                method: &self.line.method,
                path: self.line.uri.path(),
                status: self.status,
                provider: route.map(|r| r.provider.as_str()),
                model: route.map(|r| &*r.model),
                attempts,
                tokens,
                code: self.code,
                outcome,
                headers_after_ms: self.headers_after_ms,
                duration_ms: elapsed.as_millis() as u64,
            };
            match &self.line.access {
                Some(access) => access.write(&line),
                None => finished(&self.span, &line),
            }
        });
    }
}

impl Finish {
    #[allow(clippy::too_many_arguments)]
    fn ledger_row(
        &self,
        endpoint: Endpoint,
        outcome: &'static str,
        client: Option<Arc<str>>,
        route: Option<&crate::record::RouteInfo>,
        usage: Option<crate::usage::Usage>,
        cost: Option<f64>,
        elapsed: std::time::Duration,
    ) -> LedgerRow {
        let arrived = SystemTime::now().checked_sub(elapsed).unwrap_or(UNIX_EPOCH);
        let (key, attempts) =
            self.labels.with_attempts(|attempts| (attempts.last().map(|a| a.key.clone()), attempts.len()));
        let unpriced = usage.is_some() && cost.is_none();
        let usage = usage.unwrap_or_default();
        LedgerRow {
            unix_ms: arrived.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            request_id: self.line.id.as_str().to_owned(),
            client: client.map(|c| c.to_string()),
            route: endpoint.path_suffix(),
            provider: route.map(|r| r.provider.as_str().to_owned()),
            model: route.map(|r| r.model.to_string()),
            key,
            status: self.status,
            outcome,
            error_code: self.code,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            tokens_in: usage.prompt_tokens,
            tokens_out: usage.completion_tokens,
            tokens_cached: usage.cached_tokens,
            cost_usd: cost,
            unpriced,
            ttfb_ms: self.headers_after_ms,
            duration_ms: elapsed.as_millis() as u64,
        }
    }
}

impl Spend {
    /// The cost of a request that used `usage` of `route`'s model, added
    /// to the client's cost and token metrics; an unpriced model's usage is
    /// counted as unpriced.
    fn count(
        &self,
        client: Option<&Arc<str>>,
        route: Option<&crate::record::RouteInfo>,
        model_label: Option<Arc<str>>,
        usage: Option<crate::usage::Usage>,
    ) -> Option<f64> {
        let (route, usage) = (route?, usage?);
        let client = client.cloned().unwrap_or_else(crate::ledger::default_client);
        // Labels name a model only when it is known to be real (see
        // `crate::metrics`); the price is the model's own.
        let label = model_label.unwrap_or_else(|| route.model.clone());
        let key = (client.clone(), route.provider.clone(), label.clone());
        let [prompt, completion, cached] = self.tokens.get(key, |(client, provider, model)| {
            ["prompt", "completion", "cached"].map(|kind| {
                let labels = [
                    ("client", client.to_string()),
                    ("provider", provider.as_str().to_owned()),
                    ("model", model.to_string()),
                    ("kind", kind.to_owned()),
                ];
                metrics::counter!(crate::metrics::CLIENT_TOKENS, &labels)
            })
        });
        prompt.increment(usage.prompt_tokens);
        completion.increment(usage.completion_tokens);
        cached.increment(usage.cached_tokens);
        let cost = self.prices.cost(route.provider.as_str(), &route.model, usage);
        match cost {
            Some(cost) => self.totals.add(&client, &route.provider, &label, cost),
            None => self
                .unpriced
                .get((route.provider.clone(), label), |(provider, model)| {
                    let labels = [("provider", provider.as_str().to_owned()), ("model", model.to_string())];
                    metrics::counter!(crate::metrics::UNPRICED, &labels)
                })
                .increment(1),
        }
        cost
    }
}

/// The completion line as a `tracing` event. Everything the request
/// learned goes in this one event, each field once with its final value:
/// fields recorded on the span would be formatted again (and appended
/// again) at every later record.
fn finished(span: &Span, line: &Completion<'_>) {
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                parent: span,
                $level,
                status = line.status,
                provider = line.provider.map(tracing::field::display),
                model = line.model,
                key = line.key().map(tracing::field::display),
                attempts = (!line.attempts.is_empty()).then_some(tracing::field::debug(AttemptsTrail(line.attempts))),
                tokens_in = line.tokens.map(|u| u.prompt_tokens),
                tokens_out = line.tokens.map(|u| u.completion_tokens),
                code = line.code,
                outcome = line.outcome,
                headers_after_ms = line.headers_after_ms,
                duration_ms = line.duration_ms,
                "request finished"
            )
        };
    }
    if line.level == Level::DEBUG {
        event!(Level::DEBUG);
    } else {
        event!(Level::INFO);
    }
}
