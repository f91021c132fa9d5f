//! [`prepare`]: the provider's request, built from the client's. Pure: no
//! I/O, so it can be tested (and read) without a network.

use std::sync::Arc;

use bytes::Bytes;
use http::{
    HeaderValue, Request,
    header::{ACCEPT_ENCODING, CONTENT_TYPE},
};
use http_body_util::Full;

use super::{
    dialect::{
        self,
        client::{ClientHints, ClientRequest},
    },
    headers,
};
use crate::{
    BoxError,
    error::{MissingExtension, UnsupportedRequest},
    extensions::{Endpoint, Inbound, RouteTarget},
    pool::KeyLease,
    provider::Dialect,
    record::RequestRecord,
};

/// How a request crosses from the client's dialect to the provider's: one
/// cell of the inbound x outbound matrix.
#[derive(Clone, Debug)]
pub(super) enum Crossing {
    /// OpenAI chat completions or embeddings in, the provider's dialect out
    /// (passed through to OpenAI-compatible providers, translated for the
    /// others).
    Hub,
    /// The client speaks the provider's own dialect: passed through, model
    /// and credentials aside.
    Native,
    /// Another dialect in: translated to chat completions, then to the
    /// provider's dialect; the answer comes back the same way.
    Translated(ClientHints),
}

/// What the answer needs to know about the request.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(super) dialect: Dialect,
    pub(super) endpoint: Endpoint,
    pub(super) crossing: Crossing,
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
    /// The stored response a `DELETE` removes, to forget with it.
    pub(super) deleted_response: Option<Arc<str>>,
}

impl Plan {
    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The dialect the client speaks, whose shapes its answer and errors take.
    pub fn inbound(&self) -> Inbound {
        self.endpoint.inbound()
    }
}

/// Builds the provider's request from the client's: pure, no I/O.
pub fn prepare(req: Request<Bytes>) -> Result<(Request<Full<Bytes>>, KeyLease, Plan), BoxError> {
    let (mut parts, body) = req.into_parts();
    let target = parts.extensions.remove::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let lease = parts.extensions.remove::<KeyLease>().ok_or_else(|| MissingExtension::new("KeyLease"))?;
    let record = parts.extensions.remove::<RequestRecord>();
    let provider = lease.provider();
    let (model, stream, endpoint) = (target.model(), target.stream(), target.endpoint());
    let unsupported = |err: dialect::TranslateError| UnsupportedRequest::new(provider.id().as_str(), &err.0);
    let provider_dialect = dialect::for_dialect(provider.dialect());
    // Asked of the client's body, before translation drops `stream_options`.
    let client_wants_usage = stream && target.wants_usage();
    let mut include_usage = client_wants_usage && provider.dialect() != Dialect::OpenAi;
    let crossing = match endpoint.inbound() {
        Inbound::OpenAi => Crossing::Hub,
        _ if provider.passes_through(endpoint) => Crossing::Native,
        inbound => {
            let client = dialect::client::for_inbound(inbound).ok_or_else(|| unsupported(no_translation(endpoint)))?;
            if endpoint == Endpoint::ResponseResource {
                return Err(unsupported(no_translation(endpoint)).into());
            }
            let chat = client.to_chat(&ClientRequest::new(endpoint, &body, model, stream)).map_err(unsupported)?;
            // The client's events carry the usage: ask the provider for it.
            include_usage = stream;
            return finish(parts, lease, record, &target, chat.body, Crossing::Translated(chat.hints), include_usage);
        }
    };
    let (uri, body, hints) = match crossing {
        Crossing::Native => {
            let path = provider_dialect
                .native_path(endpoint, model, parts.uri.path())
                .ok_or_else(|| unsupported(no_translation(endpoint)))?;
            let body = match target.model_span() {
                Some(span) => dialect::openai::rewrite_model(&body, span, model),
                None => body,
            };
            (native_uri(provider, &path, parts.uri.query())?, body, dialect::AnswerHints::default())
        }
        _ => {
            let outbound =
                dialect::OutboundRequest::new(endpoint, &body, model, stream).with_model_span(target.model_span());
            let translated = provider_dialect.request(&outbound).map_err(unsupported)?;
            let uri = match provider.dialect() {
                // Joined once, when the provider was built.
                Dialect::OpenAi => provider.endpoint_uri(endpoint),
                _ => provider.api_base().join(&translated.path),
            };
            (uri, translated.body, translated.hints)
        }
    };
    // Every stream is counted: ask an OpenAI-compatible upstream for the
    // usage chunk, which is dropped before the client if it did not ask.
    let usage_injected = matches!(crossing, Crossing::Hub)
        && stream
        && !client_wants_usage
        && provider.dialect() == Dialect::OpenAi
        && provider.asks_stream_usage()
        && endpoint == Endpoint::ChatCompletions;
    let body = match usage_injected {
        true => dialect::openai::ask_for_stream_usage(&body, target.has_stream_options()),
        false => body,
    };
    let native = matches!(crossing, Crossing::Native);
    let plan = Plan {
        dialect: provider.dialect(),
        endpoint,
        crossing,
        stream,
        include_usage,
        hints,
        split_think: provider.splits_think_tags(),
        usage_injected,
        record,
        model: target.model_arc(),
        deleted_response: (parts.method == http::Method::DELETE)
            .then(|| target.required_key().map(|k| k.response_id.clone()))
            .flatten(),
    };
    parts.uri = uri;
    Ok((finish_headers(parts, &lease, body, native, &plan), lease, plan))
}

/// A translated request: the chat-completions body `chat` in the provider's
/// dialect.
fn finish(
    mut parts: http::request::Parts,
    lease: KeyLease,
    record: Option<RequestRecord>,
    target: &RouteTarget,
    chat: Bytes,
    crossing: Crossing,
    include_usage: bool,
) -> Result<(Request<Full<Bytes>>, KeyLease, Plan), BoxError> {
    let provider = lease.provider();
    let (model, stream) = (target.model(), target.stream());
    let unsupported = |err: dialect::TranslateError| UnsupportedRequest::new(provider.id().as_str(), &err.0);
    // A server that refuses `stream_options` answers without usage.
    let chat = match provider.dialect() == Dialect::OpenAi && !provider.asks_stream_usage() && stream {
        true => dialect::openai::without_stream_options(&chat),
        false => chat,
    };
    let outbound = dialect::OutboundRequest::new(Endpoint::ChatCompletions, &chat, model, stream);
    let translated = dialect::for_dialect(provider.dialect()).request(&outbound).map_err(unsupported)?;
    parts.uri = match provider.dialect() {
        Dialect::OpenAi => provider.endpoint_uri(Endpoint::ChatCompletions),
        _ => provider.api_base().join(&translated.path),
    };
    parts.method = http::Method::POST;
    let plan = Plan {
        dialect: provider.dialect(),
        endpoint: target.endpoint(),
        crossing,
        stream,
        include_usage,
        hints: translated.hints,
        split_think: provider.splits_think_tags(),
        usage_injected: false,
        record,
        model: target.model_arc(),
        deleted_response: None,
    };
    Ok((finish_headers(parts, &lease, translated.body, false, &plan), lease, plan))
}

/// The provider's URI for a passed-through request: its path below the
/// base URL, with the client's query (less any `key=`, the proxy key as
/// Gemini clients send it).
fn native_uri(provider: &crate::provider::Provider, path: &str, query: Option<&str>) -> Result<http::Uri, BoxError> {
    let kept: Vec<&str> = query.into_iter().flat_map(|q| q.split('&')).filter(|p| !is_key_param(p)).collect();
    let path = match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    };
    Ok(provider.api_base().join(&path))
}

/// Whether a query parameter is `key=...` (Google's way of sending a key).
pub(crate) fn is_key_param(param: &str) -> bool {
    param == "key" || param.starts_with("key=")
}

fn no_translation(endpoint: Endpoint) -> dialect::TranslateError {
    dialect::TranslateError::new(match endpoint {
        Endpoint::ResponseResource => {
            "stored responses exist only at providers that speak the Responses API (set responses_api = true for an \
             OpenAI-compatible provider that does)"
                .to_owned()
        }
        endpoint => format!("the provider's API has no {} endpoint", endpoint.path_suffix()),
    })
}

/// The provider's headers: the client's, less its credentials and
/// hop-by-hop headers, plus the key and the provider's own.
fn finish_headers(
    mut parts: http::request::Parts,
    lease: &KeyLease,
    body: Bytes,
    native: bool,
    plan: &Plan,
) -> Request<Full<Bytes>> {
    let provider = lease.provider();
    parts.version = http::Version::HTTP_11;
    headers::for_upstream(&mut parts.headers);
    let (name, value) = lease.auth_header();
    parts.headers.insert(name.clone(), value.clone());
    for (name, value) in provider.extra_headers() {
        // A client of the provider's own dialect chooses its version
        // (`anthropic-version`); the provider's default fills in.
        if !(native && parts.headers.contains_key(name)) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    let reads_answer = plan.stream || provider.dialect() != Dialect::OpenAi || provider.splits_think_tags();
    if reads_answer || !matches!(plan.crossing, Crossing::Hub) {
        // The proxy reads these answers (streams event by event, translated
        // ones whole, passed-through ones for their usage): it needs plain text.
        parts.headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let has_body = !body.is_empty() || parts.method == http::Method::POST;
    if has_body && (provider.dialect() != Dialect::OpenAi || !parts.headers.contains_key(CONTENT_TYPE)) {
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Per-request state stays in the proxy; the client sees none of it.
    parts.extensions = http::Extensions::new();
    Request::from_parts(parts, Full::new(body))
}
