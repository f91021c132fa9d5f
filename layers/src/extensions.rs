//! The request and response extensions through which layers talk.
//!
//! Identities go in extensions (they are cloned for every attempt); RAII
//! resources (in-flight guards, permits) go in futures and bodies.
//!
//! | extension | inserted by | read by |
//! |---|---|---|
//! | [`RequestId`] | RequestLog (from `x-request-id` or generated) | anyone logging |
//! | [`RequestRecord`](crate::record::RequestRecord) | RequestLog | written through named methods by Parse, FallbackLayer, RetryRotate and the usage meter; read by RequestLog |
//! | [`Endpoint`] | the router, when it has recognised the path (optional) | Parse (else it reads the path) |
//! | [`Deadline`] | Deadline | anyone who waits (key selection, retries) |
//! | [`RouteTarget`] | Parse (Fallback, for an alias's later targets) | Fallback, RetryRotate, KeySelect, KeyConcurrency, Upstream |
//! | [`ExcludedKeys`], [`PinnedKey`] | RetryRotate (each attempt) | KeySelect |
//! | [`KeyLease`](crate::pool::KeyLease) | KeySelect | KeyConcurrency, Upstream |
//! | *response* [`KeyLease`](crate::pool::KeyLease) | KeySelect (the key it leased) | RetryRotate (which key to blame) |
//! | *response* [`ErrorCode`] | ErrorResponse | RequestLog |
//!
//! No extension holds a secret: a [`KeyLease`](crate::pool::KeyLease)
//! names its key and lets the upstream service send it, and every
//! extension is dropped before a request leaves the proxy.
//!
//! A layer that misses one it needs fails with
//! [`MissingExtension`](crate::error::MissingExtension) (500): the stack is
//! mis-assembled, which is never the client's fault.
//!
//! A custom service placed inside Deadline and Parse reads what they wrote:
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{
//!     extensions::{Deadline, Endpoint, RouteTarget}, parse::ParseLayer, pool::KeyPool, provider::Provider,
//!     timeout::DeadlineLayer, BoxError,
//! };
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let groq = Provider::openai_compatible("groq", "https://api.groq.com/openai/v1").unwrap();
//! let pool = KeyPool::builder().provider(groq, Default::default(), vec![]).build().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(30)))
//!     .layer(ParseLayer::new(pool, 1 << 20))
//!     .service(service_fn(|req: Request<Bytes>| async move {
//!         let target = req.extensions().get::<RouteTarget>().unwrap();
//!         assert_eq!((target.provider().as_str(), target.model()), ("groq", "llama-3.1-8b-instant"));
//!         assert_eq!(target.endpoint(), Endpoint::ChatCompletions);
//!         assert!(target.stream());
//!         let Deadline(at) = *req.extensions().get::<Deadline>().unwrap();
//!         let left = at - tokio::time::Instant::now();
//!         assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
//!         Ok::<_, BoxError>(Response::new(Full::new(Bytes::new())))
//!     }));
//! let body = r#"{"model": "groq/llama-3.1-8b-instant", "stream": true, "messages": []}"#;
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
//! svc.oneshot(req).await.unwrap();
//! # });
//! ```

use std::{fmt, ops::Range, sync::Arc};

use tokio::time::Instant;

use crate::{pool::KeyId, provider::ProviderId};

/// The id of one client request, for logs and the `x-request-id` header.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Wraps an id as it is (RequestLog has already checked or generated it).
    pub fn new(id: &str) -> Self {
        Self(id.into())
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// When the whole request must have its answer, on tokio's clock so that
/// paused-clock tests control it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

/// The inbound endpoints the proxy forwards, in every dialect clients
/// speak ([`Inbound`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
    /// `POST /v1/messages/count_tokens`.
    MessagesCountTokens,
    /// `POST /v1/responses` (OpenAI's Responses API).
    Responses,
    /// A stored response: `GET` or `DELETE /v1/responses/{id}`,
    /// `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items`
    /// (the id and the rest stay in the request's path).
    ResponseResource,
    /// `POST /v1/responses/input_tokens`: the Responses API's token count.
    ResponsesInputTokens,
    /// `POST /v1beta/models/{model}:generateContent` (Gemini).
    GenerateContent,
    /// `POST /v1beta/models/{model}:streamGenerateContent`.
    StreamGenerateContent,
    /// `POST /v1beta/models/{model}:countTokens`.
    CountTokens,
}

impl Endpoint {
    /// Recognises the proxied paths: the OpenAI and Anthropic ones with or
    /// without the `/v1` prefix, Gemini's under `/v1beta/models/` (or
    /// `/v1/models/`), with the model in the path.
    pub fn from_path(path: &str) -> Option<Self> {
        if let Some((_, endpoint)) = gemini_path(path) {
            return Some(endpoint);
        }
        let path = path.strip_prefix("/v1").unwrap_or(path);
        match path.trim_end_matches('/') {
            "/chat/completions" => Some(Self::ChatCompletions),
            "/embeddings" => Some(Self::Embeddings),
            "/messages" => Some(Self::Messages),
            "/messages/count_tokens" => Some(Self::MessagesCountTokens),
            "/responses" => Some(Self::Responses),
            "/responses/input_tokens" => Some(Self::ResponsesInputTokens),
            path => response_resource(path).map(|_| Self::ResponseResource),
        }
    }

    /// The path below an OpenAI-compatible base URL (for the OpenAI
    /// endpoints), or the endpoint's name in messages.
    pub fn path_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
            Self::MessagesCountTokens => "messages/count_tokens",
            Self::Responses | Self::ResponseResource => "responses",
            Self::ResponsesInputTokens => "responses/input_tokens",
            Self::GenerateContent => "generateContent",
            Self::StreamGenerateContent => "streamGenerateContent",
            Self::CountTokens => "countTokens",
        }
    }

    /// The dialect the client speaks on this endpoint.
    pub fn inbound(self) -> Inbound {
        match self {
            Self::ChatCompletions | Self::Embeddings => Inbound::OpenAi,
            Self::Messages | Self::MessagesCountTokens => Inbound::Anthropic,
            Self::Responses | Self::ResponseResource | Self::ResponsesInputTokens => Inbound::Responses,
            Self::GenerateContent | Self::StreamGenerateContent | Self::CountTokens => Inbound::Gemini,
        }
    }

    /// Whether the endpoint counts tokens instead of generating.
    pub fn counts_tokens(self) -> bool {
        matches!(self, Self::MessagesCountTokens | Self::CountTokens | Self::ResponsesInputTokens)
    }
}

/// The model and endpoint of a Gemini path,
/// `/v1beta/models/{model}:{method}` (`/v1/models/...` too); the model as
/// the path has it (percent-escapes and all).
pub fn gemini_path(path: &str) -> Option<(&str, Endpoint)> {
    let rest = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    let endpoint = match method.trim_end_matches('/') {
        "generateContent" => Endpoint::GenerateContent,
        "streamGenerateContent" => Endpoint::StreamGenerateContent,
        "countTokens" => Endpoint::CountTokens,
        _ => return None,
    };
    (!model.is_empty()).then_some((model, endpoint))
}

/// The response id and what is asked of it, for a path below `/responses/`
/// (without `/v1`): `/responses/{id}`, `/responses/{id}/cancel`,
/// `/responses/{id}/input_items`.
pub fn response_resource(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/responses/")?.trim_end_matches('/');
    if rest == "input_tokens" {
        return None;
    }
    let (id, action) = match rest.split_once('/') {
        Some((id, action @ ("cancel" | "input_items"))) => (id, Some(action)),
        Some(_) => return None,
        None => (rest, None),
    };
    (!id.is_empty()).then_some((id, action))
}

/// Decodes a path segment's `%XX` escapes; `None` when an escape is cut
/// short, is not hexadecimal, or the bytes are not UTF-8. (`+` stays `+`:
/// it means a space only in query strings.)
///
/// ```
/// use keyrelay_layers::extensions::percent_decode;
///
/// assert_eq!(percent_decode("openai%2Fgpt-4o").as_deref(), Some("openai/gpt-4o"));
/// assert_eq!(percent_decode("100%"), None);
/// ```
pub fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // `from_str_radix` would take a sign: check the digits first.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The API a client speaks, which decides how its requests are read and
/// its answers and errors are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Inbound {
    /// OpenAI's chat completions and embeddings: the hub every other
    /// dialect translates through.
    OpenAi,
    /// Anthropic's Messages API (Claude Code, the Anthropic SDKs).
    Anthropic,
    /// OpenAI's Responses API (Codex CLI, the newer OpenAI SDKs).
    Responses,
    /// Google's Gemini API (Gemini CLI, the Google GenAI SDK).
    Gemini,
}

impl Inbound {
    /// `openai`, `anthropic`, `responses` or `gemini`: the `inbound` label
    /// of metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Responses => "responses",
            Self::Gemini => "gemini",
        }
    }

    /// The dialect of a request path, for shaping an error before (or
    /// without) a router: Anthropic's under `/v1/messages`, Gemini's under
    /// `/v1beta/`, the Responses API's under `/v1/responses`, OpenAI's
    /// everywhere else.
    pub fn from_path(path: &str) -> Self {
        let bare = path.strip_prefix("/v1").unwrap_or(path);
        if path.starts_with("/v1beta/") || gemini_path(path).is_some() {
            Self::Gemini
        } else if bare == "/messages" || bare.starts_with("/messages/") {
            Self::Anthropic
        } else if bare == "/responses" || bare.starts_with("/responses/") {
            Self::Responses
        } else {
            Self::OpenAi
        }
    }
}

/// Where a request goes: what Parse learned from its body.
#[derive(Clone, Debug)]
pub struct RouteTarget {
    provider: ProviderId,
    model: Arc<str>,
    endpoint: Endpoint,
    stream: bool,
    model_span: Option<Range<usize>>,
    stream_options: bool,
    include_usage: bool,
    required_key: Option<RequiredKey>,
    session: Option<Arc<str>>,
    fallbacks: Option<Arc<[crate::parse::AliasTarget]>>,
    estimated_tokens: u64,
    max_output: Option<u64>,
    alias: Option<Arc<str>>,
}

/// The one key a request may use: the key that made the Responses API
/// response it continues (or reads, deletes, cancels), which alone can
/// reach that response's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredKey {
    /// The key.
    pub key: KeyId,
    /// The response it made.
    pub response_id: Arc<str>,
}

impl RequiredKey {
    /// `key` made `response_id`.
    pub fn new(key: KeyId, response_id: &str) -> Self {
        Self { key, response_id: response_id.into() }
    }
}

impl RouteTarget {
    /// `model` is the upstream model name, without the `provider/` prefix;
    /// `stream` whether the client asked for a server-sent event stream.
    pub fn new(provider: ProviderId, model: &str, endpoint: Endpoint, stream: bool) -> Self {
        Self {
            provider,
            model: model.into(),
            endpoint,
            stream,
            model_span: None,
            stream_options: false,
            include_usage: false,
            required_key: None,
            session: None,
            fallbacks: None,
            estimated_tokens: 0,
            max_output: None,
            alias: None,
        }
    }

    /// The model alias the client named, which Parse resolved to this
    /// target (a client's model list may name the alias).
    pub fn with_alias(mut self, alias: &str) -> Self {
        self.alias = Some(alias.into());
        self
    }

    /// The model alias the client named, if it named one.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// The tokens the request may use, prompt and completion, estimated
    /// before it is sent: reserved in the `tpm` window of the key chosen
    /// for it until its answer reports the truth.
    pub fn with_estimated_tokens(mut self, tokens: u64) -> Self {
        self.estimated_tokens = tokens;
        self
    }

    /// The request's token estimate (0 when none was made).
    pub fn estimated_tokens(&self) -> u64 {
        self.estimated_tokens
    }

    /// The completion cap the request names (`max_tokens` and its other
    /// dialects' names), part of the token estimate.
    pub fn with_max_output(mut self, max_output: Option<u64>) -> Self {
        self.max_output = max_output;
        self
    }

    /// The completion cap the request names, if any.
    pub fn max_output(&self) -> Option<u64> {
        self.max_output
    }

    /// The most the request may cost under `prices`: its prompt estimate
    /// and completion cap (see [`crate::price::Price::max_cost`]); 0 for a
    /// token count, `None` when the model has no price.
    pub fn max_cost(&self, prices: &crate::price::PriceTable) -> Option<f64> {
        let price = prices.price(self.provider.as_str(), &self.model)?;
        if self.endpoint.counts_tokens() {
            return Some(0.0);
        }
        let prompt = self.estimated_tokens.saturating_sub(self.max_output.unwrap_or(0));
        Some(price.max_cost(prompt, self.max_output))
    }

    /// The targets to try, in order, when this one's pool cannot serve
    /// (a model alias's later targets; see [`crate::fallback`]).
    pub fn with_fallbacks(mut self, fallbacks: Arc<[crate::parse::AliasTarget]>) -> Self {
        self.fallbacks = (!fallbacks.is_empty()).then_some(fallbacks);
        self
    }

    /// A model alias's targets after this one, when there are any.
    pub fn fallbacks(&self) -> Option<&Arc<[crate::parse::AliasTarget]>> {
        self.fallbacks.as_ref()
    }

    /// The same request sent to `to` instead: endpoint, stream flag, the
    /// body's model span and stream options stay (the upstream rewrites the
    /// body's model token to `to`'s model); no key binding nor fallbacks
    /// carry over, as they belonged to the first target.
    pub fn retarget(&self, to: &crate::parse::AliasTarget) -> Self {
        Self {
            provider: to.provider.clone(),
            model: to.model.clone(),
            required_key: None,
            fallbacks: None,
            ..self.clone()
        }
    }

    /// The conversation the request belongs to, as its client names it
    /// (keyrelay's `x-session-id`, a coding agent's session header,
    /// `prompt_cache_key`, Anthropic's `metadata.user_id`): its requests
    /// prefer one key, where their prompt cache is.
    pub fn with_session(mut self, session: Arc<str>) -> Self {
        self.session = Some(session);
        self
    }

    /// The conversation the request belongs to, when it names one.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Only `key` may serve the request (see [`RequiredKey`]).
    pub fn with_required_key(mut self, key: RequiredKey) -> Self {
        self.required_key = Some(key);
        self
    }

    /// The one key the request may use, if it is bound to one.
    pub fn required_key(&self) -> Option<&RequiredKey> {
        self.required_key.as_ref()
    }

    /// Records where the `model` JSON string token (quotes included) sits in
    /// the body, so an upstream can replace it without re-serialising.
    pub fn with_model_span(mut self, span: Range<usize>) -> Self {
        self.model_span = Some(span);
        self
    }

    /// Records whether the body has `stream_options`, and whether they ask
    /// for `include_usage`, so that later layers need not parse it again.
    pub fn with_stream_options(mut self, present: bool, include_usage: bool) -> Self {
        self.stream_options = present;
        self.include_usage = include_usage;
        self
    }

    /// Whether the body carries `stream_options` at all.
    pub fn has_stream_options(&self) -> bool {
        self.stream_options
    }

    /// Whether the client asked for a usage chunk at the end of its stream.
    pub fn wants_usage(&self) -> bool {
        self.include_usage
    }

    /// The provider named by the `provider/` prefix of `model`.
    pub fn provider(&self) -> &ProviderId {
        &self.provider
    }
    /// The model name the upstream knows, without the `provider/` prefix.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The model name, shared.
    pub(crate) fn model_arc(&self) -> Arc<str> {
        self.model.clone()
    }
    /// The inbound endpoint the request came to.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
    /// Whether the client asked for a server-sent event stream.
    pub fn stream(&self) -> bool {
        self.stream
    }
    /// The byte range of the `model` JSON string token in the body (quotes
    /// included), when Parse recorded it.
    pub fn model_span(&self) -> Option<Range<usize>> {
        self.model_span.clone()
    }
}

/// Keys this request already tried and must not try again (RetryRotate
/// writes it per attempt; KeySelect reads it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExcludedKeys(pub Vec<KeyId>);

/// The key to use when it is available: a same-key retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedKey(pub KeyId);

/// *Response* extension: a provider's error as the proxy judges it (in
/// OpenAI's shape, the provider's machine-readable fields kept), when the
/// body the client gets says it in another dialect's shape. RetryRotate
/// classifies this rather than the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError(pub bytes::Bytes);

/// The few-valued code of the error a response carries, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);
