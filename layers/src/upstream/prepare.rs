//! [`prepare`]: the provider's request, built from the client's. Pure: no
//! I/O, so it can be tested (and read) without a network.

use std::sync::Arc;

use bytes::Bytes;
use http::{
    HeaderValue, Request,
    header::{ACCEPT_ENCODING, CONTENT_TYPE},
};
use http_body_util::Full;

use super::{dialect, headers};
use crate::{
    BoxError,
    error::{MissingExtension, UnsupportedRequest},
    extensions::{Endpoint, RouteTarget},
    pool::KeyLease,
    provider::Dialect,
    record::RequestRecord,
};

/// What the answer needs to know about the request.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(super) dialect: Dialect,
    pub(super) endpoint: Endpoint,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// What the request said that shapes the answer (base64 embeddings,
    /// a structured answer through a forced tool...).
    pub(super) hints: dialect::AnswerHints,
    /// Move `<think>` blocks out of the content (an OpenAI-compatible
    /// provider's opt-in).
    pub(super) split_think: bool,
    /// The proxy asked for a usage chunk the client must not see.
    pub(super) usage_injected: bool,
    /// The request's record, for the usage meter and the capture.
    pub(super) record: Option<RequestRecord>,
    pub(super) model: Arc<str>,
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
    let record = parts.extensions.remove::<RequestRecord>();
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
    let outbound =
        dialect::OutboundRequest::new(target.endpoint(), &body, model, stream).with_model_span(target.model_span());
    let translated = dialect::for_dialect(provider.dialect()).request(&outbound).map_err(unsupported)?;
    let uri = match provider.dialect() {
        // Joined once, when the provider was built.
        Dialect::OpenAi => provider.endpoint_uri(target.endpoint()),
        _ => provider.api_base().join(&translated.path),
    };
    let body = match usage_injected {
        true => dialect::openai::ask_for_stream_usage(&translated.body, target.has_stream_options()),
        false => translated.body,
    };
    let plan = Plan {
        dialect: provider.dialect(),
        endpoint: target.endpoint(),
        stream,
        include_usage,
        hints: translated.hints,
        split_think: provider.splits_think_tags(),
        usage_injected,
        record,
        model: target.model_arc(),
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
