//! `UpstreamService`: sends the request to the provider with the leased key.
//!
//! For OpenAI-compatible providers the URI becomes the provider's base plus
//! the endpoint (`{api_base}/chat/completions`), the leased key goes in the
//! provider's auth header, `model` is replaced by the upstream model name,
//! and client credentials and hop-by-hop headers are dropped. The response
//! body streams back frame by frame as it arrives; nothing is collected. A
//! stream that stays silent longer than its idle timeout fails (RetryRotate
//! turns a failing stream into one final SSE error event).
//!
//! Reads [`RouteTarget`] and [`KeyLease`]; copies the lease onto the
//! response. Fails with [`UpstreamUnreachable`] (502) when the provider
//! cannot be reached or breaks before answering. An upstream error status
//! (400, 404, 429, 5xx...) is a response like any other and passes through.
//!
//! The request the provider gets is built by [`prepare`], which is pure: here
//! for an Anthropic provider, without sending anything.
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use keyrelay_layers::{
//!     extensions::{Endpoint, RouteTarget}, pool::{KeyPool, Secret}, provider::{Dialect, Provider, ProviderId},
//!     upstream::{build_client, prepare, ClientOptions, UpstreamService},
//! };
//!
//! let client = build_client(&ClientOptions::default()).unwrap();
//! let _upstream = UpstreamService::new(client); // the innermost service of the stack
//!
//! let anthropic = Provider::new("anthropic", "https://api.anthropic.com", Dialect::Anthropic).unwrap();
//! let keys = vec![Secret::new("sk-ant-1")];
//! let pool = KeyPool::builder().provider(anthropic, Default::default(), keys).build().unwrap();
//! let (lease, _in_flight) = pool.provider("anthropic").unwrap().lease().unwrap();
//!
//! let body = r#"{"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]}"#;
//! let mut req = Request::post("/v1/chat/completions").header("cookie", "session=1").body(Bytes::from(body)).unwrap();
//! let target = RouteTarget::new(ProviderId::new("anthropic"), "claude-sonnet-4-5", Endpoint::ChatCompletions, false);
//! req.extensions_mut().insert(target);
//! req.extensions_mut().insert(lease);
//!
//! let (out, _lease, plan) = prepare(req).unwrap();
//! assert_eq!(out.uri(), "https://api.anthropic.com/v1/messages");
//! assert_eq!(out.headers()["x-api-key"], "sk-ant-1");
//! assert_eq!(out.headers()["anthropic-version"], "2023-06-01");
//! assert!(out.headers().get("cookie").is_none(), "nothing of the client's credentials goes upstream");
//! assert!(!plan.stream());
//! ```

mod client;
pub mod dialect;
pub mod headers;
mod models;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{
    HeaderValue, Request, Response,
    header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE},
};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use tower::Service;

pub use self::{
    client::{ClientOptions, HttpsClient, build_client},
    models::{ModelCatalog, ModelInfo},
};
use crate::{
    BoxError, ProxyBody,
    body::{CoalescedBody, IdleTimeoutBody, full},
    error::{MissingExtension, UnsupportedRequest, UpstreamFailed, UpstreamUnreachable},
    extensions::{Endpoint, MetricLabels, RouteTarget, UsageInjected},
    pool::KeyLease,
    provider::Dialect,
};

/// Sends requests to providers; see the [module docs](self).
#[derive(Clone)]
pub struct UpstreamService {
    client: HttpsClient,
    stream_idle_timeout: Duration,
}

/// Default bound on silence between the chunks of a stream.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A translated provider's whole answer is read up to this size.
const MAX_TRANSLATED_BODY: usize = 32 << 20;
/// A translated provider's error body is read up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;

impl UpstreamService {
    /// Sends through `client` (see [`build_client`]), with
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`].
    pub fn new(client: HttpsClient) -> Self {
        Self { client, stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT }
    }

    /// A stream that sends nothing for this long fails (and so ends with an
    /// error event, and counts against its key).
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle_timeout = idle;
        self
    }
}

impl fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamService").finish_non_exhaustive()
    }
}

/// The [`UpstreamService`] future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

impl Service<Request<Bytes>> for UpstreamService {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready: it queues on its own pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let (req, lease, plan) = match prepare(req) {
            Ok(prepared) => prepared,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let sent = self.client.request(req);
        let idle = self.stream_idle_timeout;
        Box::pin(async move {
            let res = sent.await.map_err(|err| UpstreamUnreachable::new(lease.provider_id().as_str(), err))?;
            answer(res, lease, &plan, idle).await
        })
    }
}

/// What the answer needs to know about the request.
#[derive(Clone, Debug)]
pub struct Plan {
    dialect: Dialect,
    endpoint: Endpoint,
    stream: bool,
    include_usage: bool,
    /// OpenAI SDKs ask for base64 embeddings by default.
    embeddings_base64: bool,
    /// Move `<think>` blocks out of the content (an OpenAI-compatible
    /// provider's opt-in).
    split_think: bool,
    /// The proxy asked for a usage chunk the client must not see.
    usage_injected: bool,
    /// Where a request log wants the provider's own answer bytes.
    capture: Option<MetricLabels>,
    model: Arc<str>,
}

impl Plan {
    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.stream
    }
}

/// Builds the provider's request from the client's: pure, no I/O.
pub fn prepare(req: Request<Bytes>) -> Result<(Request<Full<Bytes>>, KeyLease, Plan), BoxError> {
    let (mut parts, body) = req.into_parts();
    let target = parts.extensions.remove::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let lease = parts.extensions.remove::<KeyLease>().ok_or_else(|| MissingExtension::new("KeyLease"))?;
    let capture = parts.extensions.get::<MetricLabels>().filter(|cell| cell.captures_upstream()).cloned();
    let provider = lease.provider();
    let (model, stream) = (target.model(), target.stream());
    let unsupported = |err: dialect::TranslateError| UnsupportedRequest::new(provider.id().as_str(), &err.0);
    // Asked of the client's body, before translation drops `stream_options`.
    let client_wants_usage = stream && target.wants_usage();
    let include_usage = client_wants_usage && provider.dialect() != Dialect::OpenAi;
    // Every stream is counted: ask an OpenAI-compatible upstream for the
    // usage chunk, which is dropped before the client if it did not ask.
    let usage_injected = stream
        && !client_wants_usage
        && provider.dialect() == Dialect::OpenAi
        && provider.asks_stream_usage()
        && target.endpoint() == Endpoint::ChatCompletions;
    let embeddings_base64 = provider.dialect() == Dialect::Gemini
        && target.endpoint() == Endpoint::Embeddings
        && dialect::gemini::embeddings_want_base64(&body);
    let (uri, body) = match (provider.dialect(), target.endpoint()) {
        (Dialect::OpenAi, endpoint) => {
            let body = match target.model_span() {
                Some(span) => dialect::openai::rewrite_model(&body, span, model),
                None => body,
            };
            let body = match usage_injected {
                true => dialect::openai::ask_for_stream_usage(&body, target.has_stream_options()),
                false => body,
            };
            (provider.endpoint_uri(endpoint), body)
        }
        (Dialect::Anthropic, Endpoint::ChatCompletions) => (
            provider.api_base().join(dialect::anthropic::chat_path()),
            dialect::anthropic::chat_request(&body, model, stream).map_err(unsupported)?,
        ),
        (Dialect::Gemini, Endpoint::ChatCompletions) => (
            provider.api_base().join(&dialect::gemini::chat_path(model, stream)),
            dialect::gemini::chat_request(&body, model, stream).map_err(unsupported)?,
        ),
        (Dialect::Gemini, Endpoint::Embeddings) => (
            provider.api_base().join(&dialect::gemini::embeddings_path(model)),
            dialect::gemini::embeddings_request(&body, model).map_err(unsupported)?,
        ),
        (dialect, endpoint) => {
            let what = format!("the {} API has no {} endpoint", dialect.as_str(), endpoint.path_suffix());
            return Err(UnsupportedRequest::new(provider.id().as_str(), &what).into());
        }
    };
    let plan = Plan {
        dialect: provider.dialect(),
        endpoint: target.endpoint(),
        stream,
        include_usage,
        embeddings_base64,
        split_think: provider.splits_think_tags(),
        usage_injected,
        capture,
        model: model.into(),
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    headers::for_upstream(&mut parts.headers);
    let (name, value) = lease.auth_header();
    parts.headers.insert(name.clone(), value.clone());
    for (name, value) in provider.extra_headers() {
        parts.headers.insert(name.clone(), value.clone());
    }
    if stream || provider.dialect() != Dialect::OpenAi || provider.splits_think_tags() {
        // The proxy reads these answers (streams event by event, translated
        // ones whole): it needs plain text.
        parts.headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    if provider.dialect() != Dialect::OpenAi {
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if !parts.headers.contains_key(CONTENT_TYPE) {
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Per-request state stays in the proxy; the client sees none of it.
    parts.extensions = http::Extensions::new();
    Ok((Request::from_parts(parts, Full::new(body)), lease, plan))
}

/// The provider's answer as the client gets it.
async fn answer(
    res: Response<hyper::body::Incoming>,
    lease: KeyLease,
    plan: &Plan,
    idle: Duration,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = res.into_parts();
    if let Some(cell) = &plan.capture {
        cell.restart_upstream_with(lease.secret());
    }
    let body = CapturedBody { inner: body, cell: plan.capture.clone() };
    // Events that arrive in one read leave in one write (see CoalescedBody),
    // and a stream's first events with the response head.
    let success = parts.status.is_success();
    let mut body = CoalescedBody::new(body);
    if plan.stream && success {
        std::future::poll_fn(|cx| Pin::new(&mut body).poll_prefetch(cx)).await;
    }
    headers::for_client(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    parts.extensions.insert(lease.clone());
    if plan.usage_injected && success {
        parts.extensions.insert(UsageInjected);
    }
    let split_think = plan.split_think && success && plan.endpoint == Endpoint::ChatCompletions;
    if plan.dialect == Dialect::OpenAi && !split_think {
        let body = match plan.stream {
            true if success => IdleTimeoutBody::new(body, idle).boxed_unsync(),
            _ => body.boxed_unsync(),
        };
        return Ok(Response::from_parts(parts, body));
    }
    // A translated answer: new bytes, new length, the proxy's content type.
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(http::header::CONTENT_ENCODING);
    let provider = lease.provider_id().as_str().to_owned();
    let unreadable = |err: BoxError| UpstreamFailed::new(&provider, 1, format!("unreadable answer: {err}"));
    if success && plan.stream && plan.endpoint == Endpoint::ChatCompletions {
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let translator: Box<dyn dialect::StreamTranslator> = match plan.dialect {
            Dialect::Anthropic => Box::new(dialect::anthropic::ChatStream::new(&plan.model, plan.include_usage, now())),
            Dialect::Gemini => Box::new(dialect::gemini::ChatStream::new(&plan.model, plan.include_usage, now())),
            _ => Box::new(dialect::think::ThinkSplitter::new()),
        };
        // With a usage chunk for the client, the body's usage tap counts it;
        // without, the translator's own count is recorded at the end.
        let count = (!plan.include_usage).then(|| (lease.clone(), plan.model.clone()));
        let body = TranslatedStream::new(IdleTimeoutBody::new(body, idle), translator, count);
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let limit = if success { MAX_TRANSLATED_BODY } else { MAX_ERROR_BODY };
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if success => return Err(unreadable(err).into()),
        // An error body that breaks or is huge: what matters is its status.
        Err(_) => Bytes::new(),
    };
    let translated = match (plan.dialect, plan.endpoint, success) {
        (Dialect::OpenAi, _, _) => dialect::think::split_completion(&bytes),
        (Dialect::Anthropic, _, true) => dialect::anthropic::chat_response(&bytes, &plan.model, now()),
        (Dialect::Anthropic, _, false) => Ok(dialect::anthropic::error_body(parts.status.as_u16(), &bytes)),
        (_, Endpoint::Embeddings, true) => {
            dialect::gemini::embeddings_response_encoded(&bytes, &plan.model, plan.embeddings_base64)
        }
        (_, _, true) => dialect::gemini::chat_response(&bytes, &plan.model, now()),
        (_, _, false) => Ok(dialect::gemini::error_body(parts.status.as_u16(), &bytes)),
    };
    let translated = translated.map_err(|err| unreadable(err.into()))?;
    Ok(Response::from_parts(parts, full(translated)))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pin_project! {
    /// A provider's event stream as OpenAI chunks, event by event. The
    /// events one upstream frame completes leave as one frame.
    struct TranslatedStream<B> {
        #[pin]
        inner: B,
        framer: dialect::SseFramer,
        translator: Box<dyn dialect::StreamTranslator>,
        count_usage: Option<(KeyLease, Arc<str>)>,
        failed: Option<BoxError>,
        done: bool,
    }
}

impl<B> TranslatedStream<B> {
    fn new(
        inner: B,
        translator: Box<dyn dialect::StreamTranslator>,
        count_usage: Option<(KeyLease, Arc<str>)>,
    ) -> Self {
        Self { inner, framer: dialect::SseFramer::new(), translator, count_usage, failed: None, done: false }
    }
}

impl<B> http_body::Body for TranslatedStream<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(err) = this.failed.take() {
                *this.done = true;
                return Poll::Ready(Some(Err(err)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { continue };
                    let whole_events = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                    if whole_events && this.framer.is_idle() {
                        if this.translator.passes_unchanged(data) {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        match this.translator.keep_whole_events(data) {
                            Some(kept) if kept.is_empty() => continue,
                            Some(kept) => return Poll::Ready(Some(Ok(Frame::data(kept)))),
                            None => {}
                        }
                    }
                    for event in this.framer.push(data) {
                        match this.translator.event(&event) {
                            Ok(chunks) => chunks.iter().for_each(|c| out.extend_from_slice(c)),
                            Err(err) => {
                                *this.failed = Some(format!("the provider reported an error mid-stream: {err}").into());
                                break;
                            }
                        }
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                None => {
                    if let Some(event) = this.framer.finish() {
                        match this.translator.event(&event) {
                            Ok(chunks) => chunks.iter().for_each(|c| out.extend_from_slice(c)),
                            Err(err) => {
                                *this.failed = Some(format!("the provider reported an error mid-stream: {err}").into())
                            }
                        }
                    }
                    if this.failed.is_none() && !this.translator.is_complete() {
                        // A clean end of the body is not the end of the answer.
                        *this.failed = Some("the provider's stream ended before the answer was complete".into());
                    }
                    if this.failed.is_none() {
                        this.translator.finish().iter().for_each(|c| out.extend_from_slice(c));
                        if let (Some((lease, model)), Some(usage)) = (this.count_usage.take(), this.translator.usage())
                        {
                            lease.count_usage(&model, usage);
                        }
                        *this.done = true;
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }
}

/// Drops the usage-only chunk the proxy asked for on the client's behalf,
/// after the usage tap inside has counted it. A frame of whole events
/// passes as it came, less the usage chunk's bytes; a frame that splits an
/// event is re-framed (comments and `id:` lines are not kept), and a half
/// event is held until it is whole.
pub fn drop_usage_chunk<B>(body: B) -> impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    TranslatedStream::new(body, Box::new(UsageChunkFilter), None)
}

/// The [`dialect::StreamTranslator`] behind [`drop_usage_chunk`].
struct UsageChunkFilter;

impl dialect::StreamTranslator for UsageChunkFilter {
    fn passes_unchanged(&mut self, frame: &[u8]) -> bool {
        // Any usage object, even one split over data lines, goes through
        // `event` below, which drops the usage chunk.
        crate::usage::only_null_usage(frame)
    }

    fn keep_whole_events(&mut self, frame: &Bytes) -> Option<Bytes> {
        // Events end at a blank line; with `\r` line ends in play, leave
        // the framing to the framer.
        if memchr::memchr(b'\r', frame).is_some() {
            return None;
        }
        let mut kept: Option<BytesMut> = None;
        let mut kept_from = 0;
        // Each event is looked at once, however many `"usage"` keys it has.
        let mut looked_to = 0;
        for at in memchr::memmem::find_iter(frame, b"\"usage\"") {
            if at < looked_to {
                continue;
            }
            let start = memchr::memmem::rfind(&frame[..at], b"\n\n").map_or(0, |end| end + 2);
            let end = memchr::memmem::find(&frame[at..], b"\n\n").map(|end| at + end + 2)?;
            looked_to = end;
            // With usage asked for, every chunk says `"usage":null`: only
            // an event with a usage object is worth framing and parsing.
            if crate::usage::only_null_usage(&frame[start..end]) {
                continue;
            }
            let events = dialect::SseFramer::new().push(&frame[start..end]);
            let [event] = events.as_slice() else { return None };
            if dialect::openai::is_usage_only_chunk(&event.data) {
                kept.get_or_insert_with(|| BytesMut::with_capacity(frame.len()))
                    .extend_from_slice(&frame[kept_from..start]);
                kept_from = end;
            }
        }
        Some(match kept {
            None => frame.clone(),
            Some(mut kept) => {
                kept.extend_from_slice(&frame[kept_from..]);
                kept.freeze()
            }
        })
    }

    fn event(&mut self, event: &dialect::SseEvent) -> Result<Vec<Bytes>, dialect::TranslateError> {
        Ok(if dialect::openai::is_usage_only_chunk(&event.data) {
            Vec::new()
        } else {
            vec![dialect::sse::encode_event(event)]
        })
    }

    fn finish(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

pin_project! {
    /// The provider's answer as it arrives, copied (bounded) for the
    /// request log when one asked for it.
    struct CapturedBody<B> {
        #[pin]
        inner: B,
        cell: Option<MetricLabels>,
    }
}

impl<B> http_body::Body for CapturedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(cell), Some(Ok(frame))) = (this.cell.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            cell.push_upstream(data, crate::log::CAPTURE_LIMIT);
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
