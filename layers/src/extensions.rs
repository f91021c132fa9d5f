//! The request and response extensions through which layers talk.
//!
//! Identities go in extensions (they are cloned for every attempt); RAII
//! resources (in-flight guards, permits) go in futures and bodies.
//!
//! | extension | inserted by | read by |
//! |---|---|---|
//! | [`RequestId`] | RequestLog (from `x-request-id` or generated) | anyone logging |
//! | [`RequestRecord`](crate::record::RequestRecord) | RequestLog | written through named methods by Parse, RetryRotate and the usage meter; read by RequestLog |
//! | [`Endpoint`] | the router, when it has recognised the path (optional) | Parse (else it reads the path) |
//! | [`Deadline`] | Deadline | anyone who waits (key selection, retries) |
//! | [`RouteTarget`] | Parse | RetryRotate, KeySelect, KeyConcurrency, Upstream |
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

/// The inbound OpenAI endpoints the proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// Recognises `/v1/chat/completions` and `/v1/embeddings`, with or
    /// without the `/v1` prefix.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.strip_prefix("/v1").unwrap_or(path);
        match path.trim_end_matches('/') {
            "/chat/completions" => Some(Self::ChatCompletions),
            "/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }

    /// The path below an OpenAI-compatible base URL.
    pub fn path_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
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
        }
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

/// The few-valued code of the error a response carries, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);
