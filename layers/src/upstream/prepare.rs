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

/// What every crossing builds its request from.
struct Parts {
    head: http::request::Parts,
    body: Bytes,
    target: RouteTarget,
    lease: KeyLease,
    record: Option<RequestRecord>,
}

type Prepared = (Request<Full<Bytes>>, KeyLease, Plan);

impl Parts {
    fn unsupported(&self, err: dialect::TranslateError) -> UnsupportedRequest {
        UnsupportedRequest::new(self.lease.provider_id().as_str(), &err.0)
    }

    /// The plan of a request that crosses as `crossing`, with nothing
    /// special about its answer; each crossing adds what it knows.
    fn plan(&mut self, crossing: Crossing) -> Plan {
        let provider = self.lease.provider();
        Plan {
            dialect: provider.dialect(),
            endpoint: self.target.endpoint(),
            crossing,
            stream: self.target.stream(),
            include_usage: false,
            hints: dialect::AnswerHints::default(),
            split_think: provider.splits_think_tags(),
            usage_injected: false,
            record: self.record.take(),
            model: self.target.model_arc(),
            deleted_response: None,
        }
    }

    /// The request with its new URI and body, and the provider's headers.
    fn finish(self, uri: http::Uri, body: Bytes, plan: Plan) -> Prepared {
        let Self { mut head, lease, .. } = self;
        head.uri = uri;
        let request = finish_headers(head, &lease, body, &plan);
        (request, lease, plan)
    }
}

/// Builds the provider's request from the client's: pure, no I/O.
pub fn prepare(req: Request<Bytes>) -> Result<Prepared, BoxError> {
    let (mut head, body) = req.into_parts();
    let target = head.extensions.remove::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let lease = head.extensions.remove::<KeyLease>().ok_or_else(|| MissingExtension::new("KeyLease"))?;
    let record = head.extensions.remove::<RequestRecord>();
    let endpoint = target.endpoint();
    let parts = Parts { head, body, target, lease, record };
    match endpoint.inbound() {
        Inbound::OpenAi => hub(parts),
        _ if parts.lease.provider().passes_through(endpoint) => native(parts),
        inbound => translated(parts, inbound),
    }
}

/// OpenAI's chat completions or embeddings, to any provider.
fn hub(mut parts: Parts) -> Result<Prepared, BoxError> {
    let (uri, body, hints, include_usage, usage_injected) = {
        let (provider, target) = (parts.lease.provider(), &parts.target);
        let (endpoint, stream) = (target.endpoint(), target.stream());
        let outbound = dialect::OutboundRequest::new(endpoint, &parts.body, target.model(), stream)
            .with_model_span(target.model_span());
        let translated =
            dialect::for_dialect(provider.dialect()).request(&outbound).map_err(|e| parts.unsupported(e))?;
        let uri = match provider.dialect() {
            // Joined once, when the provider was built.
            Dialect::OpenAi => provider.endpoint_uri(endpoint),
            _ => provider.api_base().join(&translated.path),
        };
        // Asked of the client's body, before translation drops `stream_options`.
        let client_wants_usage = stream && target.wants_usage();
        // Every stream is counted: ask an OpenAI-compatible upstream for the
        // usage chunk, which is dropped before the client if it did not ask.
        let usage_injected = stream
            && !client_wants_usage
            && provider.dialect() == Dialect::OpenAi
            && provider.asks_stream_usage()
            && endpoint == Endpoint::ChatCompletions;
        let body = match usage_injected {
            true => dialect::openai::ask_for_stream_usage(&translated.body, target.has_stream_options()),
            false => translated.body,
        };
        let include_usage = client_wants_usage && provider.dialect() != Dialect::OpenAi;
        (uri, body, translated.hints, include_usage, usage_injected)
    };
    let mut plan = parts.plan(Crossing::Hub);
    plan.include_usage = include_usage;
    plan.usage_injected = usage_injected;
    plan.hints = hints;
    Ok(parts.finish(uri, body, plan))
}

/// The provider's own dialect: the body as it came, `model` aside.
fn native(mut parts: Parts) -> Result<Prepared, BoxError> {
    let provider = parts.lease.provider().clone();
    let target = &parts.target;
    let (endpoint, model) = (target.endpoint(), target.model());
    let path = dialect::for_dialect(provider.dialect())
        .native_path(endpoint, model, parts.head.uri.path())
        .ok_or_else(|| parts.unsupported(no_translation(endpoint)))?;
    let body = match target.model_span() {
        Some(span) => dialect::openai::rewrite_model(&parts.body, span, model),
        None => parts.body.clone(),
    };
    let uri = native_uri(&provider, &path, parts.head.uri.query());
    let deleted = (parts.head.method == http::Method::DELETE).then(|| target.required_key()).flatten();
    let deleted = deleted.map(|key| key.response_id.clone());
    let mut plan = parts.plan(Crossing::Native);
    plan.deleted_response = deleted;
    Ok(parts.finish(uri, body, plan))
}

/// Another dialect: through chat completions, then the provider's.
fn translated(mut parts: Parts, inbound: Inbound) -> Result<Prepared, BoxError> {
    let provider = parts.lease.provider().clone();
    let target = &parts.target;
    let (endpoint, model, stream) = (target.endpoint(), target.model(), target.stream());
    let client = match dialect::client::for_inbound(inbound) {
        Some(client) if endpoint != Endpoint::ResponseResource => client,
        _ => return Err(parts.unsupported(no_translation(endpoint)).into()),
    };
    let chat =
        client.to_chat(&ClientRequest::new(endpoint, &parts.body, model, stream)).map_err(|e| parts.unsupported(e))?;
    // A server that refuses `stream_options` answers without usage.
    let chat_body = match provider.dialect() == Dialect::OpenAi && !provider.asks_stream_usage() && stream {
        true => dialect::openai::without_stream_options(&chat.body),
        false => chat.body,
    };
    let outbound = dialect::OutboundRequest::new(Endpoint::ChatCompletions, &chat_body, model, stream);
    let translated = dialect::for_dialect(provider.dialect()).request(&outbound).map_err(|e| parts.unsupported(e))?;
    let uri = match provider.dialect() {
        Dialect::OpenAi => provider.endpoint_uri(Endpoint::ChatCompletions),
        _ => provider.api_base().join(&translated.path),
    };
    parts.head.method = http::Method::POST;
    let mut plan = parts.plan(Crossing::Translated(chat.hints));
    // The client's events carry the usage: the provider is asked for it.
    plan.include_usage = stream;
    plan.hints = translated.hints;
    Ok(parts.finish(uri, translated.body, plan))
}

/// The provider's URI for a passed-through request: its path below the
/// base URL, with the client's query (less any `key=`, the proxy key as
/// Gemini clients send it).
fn native_uri(provider: &crate::provider::Provider, path: &str, query: Option<&str>) -> http::Uri {
    provider.api_base().join(&crate::credentials::path_without_query_key(path, query))
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
fn finish_headers(mut parts: http::request::Parts, lease: &KeyLease, body: Bytes, plan: &Plan) -> Request<Full<Bytes>> {
    let native = matches!(plan.crossing, Crossing::Native);
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
