//! [`ProviderDialect`]: one provider wire format as a set of pure
//! functions, and [`for_dialect`], the one place that maps a
//! [`Dialect`] to its implementation.
//!
//! The trait is object safe (`&'static dyn ProviderDialect`), so the
//! upstream service holds no per-dialect `match`: a request is translated
//! by [`ProviderDialect::request`], and whatever its answer needs to know
//! about the request travels in [`AnswerHints`] (plain `Copy` data, kept
//! in the request's plan) to [`ProviderDialect::answer`] or
//! [`ProviderDialect::stream`].

use std::{borrow::Cow, ops::Range};

use bytes::Bytes;

use super::{StreamTranslator, TranslateError, anthropic, gemini, openai};
use crate::{extensions::Endpoint, provider::Dialect};

/// A client's OpenAI request, as a dialect needs it to build the
/// provider's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutboundRequest<'a> {
    /// The OpenAI endpoint the client called.
    pub endpoint: Endpoint,
    /// The client's body, as it came.
    pub body: &'a Bytes,
    /// The upstream model name (without the `provider/` prefix).
    pub model: &'a str,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Where Parse found the `model` string token (quotes included), so a
    /// pass-through dialect can replace just that token.
    pub model_span: Option<Range<usize>>,
}

impl<'a> OutboundRequest<'a> {
    /// A request to `endpoint` with this body, for the upstream `model`.
    pub fn new(endpoint: Endpoint, body: &'a Bytes, model: &'a str, stream: bool) -> Self {
        Self { endpoint, body, model, stream, model_span: None }
    }

    /// The same, with the `model` token's span Parse recorded
    /// ([`crate::extensions::RouteTarget::model_span`]).
    pub fn with_model_span(mut self, span: Option<Range<usize>>) -> Self {
        self.model_span = span;
        self
    }
}

/// The provider's request: where it goes and what it says.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Translated {
    /// The path (and query) below the provider's base URL, e.g.
    /// `v1/messages`; join it with [`crate::provider::ApiBase::join`].
    pub path: Cow<'static, str>,
    /// The provider's body (JSON).
    pub body: Bytes,
    /// What the answer's translation must know about this request.
    pub hints: AnswerHints,
}

/// What a request said that shapes its answer, learned while translating
/// it (so the body is parsed once), for [`ProviderDialect::answer`] and
/// [`ProviderDialect::stream`]. The default is "nothing special".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnswerHints {
    /// Embeddings: the client asked for base64 vectors
    /// (`encoding_format: "base64"`, the OpenAI SDKs' default).
    pub embeddings_base64: bool,
    /// Chat: the provider was asked for a structured answer through a
    /// forced tool (Anthropic's stand-in for `response_format`); that
    /// tool's input is the answer's `content`, not a tool call.
    pub json_via_tool: bool,
}

/// One provider wire format: pure translations between OpenAI's API, which
/// clients speak, and the provider's. No I/O; every method may be called
/// from any thread.
///
/// ```
/// use bytes::Bytes;
/// use keyrelay_layers::{
///     extensions::Endpoint,
///     provider::Dialect,
///     upstream::dialect::{OutboundRequest, ProviderDialect, SseEvent, for_dialect},
/// };
///
/// let gemini: &dyn ProviderDialect = for_dialect(Dialect::Gemini);
/// let body = Bytes::from_static(br#"{"model": "gemini/text-embedding-004", "input": "Hi", "encoding_format": "base64"}"#);
/// let out = gemini.request(&OutboundRequest::new(Endpoint::Embeddings, &body, "text-embedding-004", false)).unwrap();
/// assert_eq!(out.path, "v1beta/models/text-embedding-004:batchEmbedContents");
/// assert!(out.hints.embeddings_base64, "learned once, while translating");
///
/// let answer = Bytes::from_static(br#"{"embeddings": [{"values": [1.0]}]}"#);
/// let vectors = gemini.answer(Endpoint::Embeddings, &answer, "text-embedding-004", 0, out.hints).unwrap();
/// let vectors: serde_json::Value = serde_json::from_slice(&vectors).unwrap();
/// assert_eq!(vectors["data"][0]["embedding"], "AACAPw==");
///
/// // Streams are translated event by event; OpenAI's pass through (None).
/// let mut stream = gemini.stream(Endpoint::ChatCompletions, "gemini-2.5-flash", false, 0, Default::default()).unwrap();
/// let event = SseEvent { event: None, data: r#"{"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}"#.into() };
/// assert!(String::from_utf8_lossy(&stream.event(&event).unwrap()[0]).contains(r#""content":"Hi""#));
/// assert!(for_dialect(Dialect::OpenAi).stream(Endpoint::ChatCompletions, "gpt-4o", false, 0, Default::default()).is_none());
/// ```
pub trait ProviderDialect: Send + Sync + 'static {
    /// The provider's path and body for the client's request. `Err`: the
    /// provider's API cannot express it (the proxy answers 400
    /// `unsupported_request` with the message), including an endpoint the
    /// provider does not have.
    fn request(&self, req: &OutboundRequest<'_>) -> Result<Translated, TranslateError>;

    /// The provider's whole successful answer at `endpoint` as OpenAI's;
    /// `model` is the name the answer carries, `created` its timestamp,
    /// `hints` what [`request`](Self::request) returned. `Err`: the answer
    /// is not what the provider's API documents.
    fn answer(
        &self,
        endpoint: Endpoint,
        body: &Bytes,
        model: &str,
        created: u64,
        hints: AnswerHints,
    ) -> Result<Bytes, TranslateError>;

    /// A translator for the provider's successful stream at `endpoint`, or
    /// `None` when the stream passes through as it comes. `include_usage`:
    /// end with OpenAI's usage chunk (`stream_options.include_usage`).
    fn stream(
        &self,
        endpoint: Endpoint,
        model: &str,
        include_usage: bool,
        created: u64,
        hints: AnswerHints,
    ) -> Option<Box<dyn StreamTranslator>>;

    /// An error answer (`status` and body) in OpenAI's shape, keeping the
    /// provider's machine-readable fields for [`crate::classify`].
    fn error_body(&self, status: u16, body: &Bytes) -> Bytes;

    /// The model ids in the provider's model list answer.
    fn model_ids(&self, body: &[u8]) -> Result<Vec<String>, TranslateError>;

    /// The provider's path for a request in its own dialect, which passes
    /// through as it came: `endpoint` is what the client called, `model`
    /// the upstream model, `client_path` the path it called (for paths that
    /// carry more than the endpoint, such as a response id). `None`: the
    /// dialect has no such endpoint of its own. The client's query string
    /// is the caller's to append.
    fn native_path(&self, endpoint: Endpoint, model: &str, client_path: &str) -> Option<Cow<'static, str>> {
        let _ = (endpoint, model, client_path);
        None
    }
}

/// The implementation of a provider's dialect.
pub fn for_dialect(dialect: Dialect) -> &'static dyn ProviderDialect {
    match dialect {
        Dialect::OpenAi => &openai::OpenAi,
        Dialect::Anthropic => &anthropic::Anthropic,
        Dialect::Gemini => &gemini::Gemini,
    }
}

/// The error for an endpoint `dialect`'s API does not have (the words the
/// upstream service used before the trait).
pub(super) fn no_endpoint(dialect: Dialect, endpoint: Endpoint) -> TranslateError {
    TranslateError::new(format!("the {} API has no {} endpoint", dialect.as_str(), endpoint.path_suffix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_refuses_what_it_lacks_and_passes_openai_through() {
        let body = Bytes::from_static(br#"{"model": "p/m", "input": "x"}"#);
        let embeddings = OutboundRequest::new(Endpoint::Embeddings, &body, "m", false);
        let error = for_dialect(Dialect::Anthropic).request(&embeddings).unwrap_err();
        assert_eq!(error.0, "the anthropic API has no embeddings endpoint");

        let openai = for_dialect(Dialect::OpenAi);
        let out = openai.request(&embeddings.clone().with_model_span(Some(10..15))).unwrap();
        assert_eq!(out.path, "embeddings");
        assert_eq!(&out.body[..], br#"{"model": "m", "input": "x"}"#);
        assert_eq!(out.hints, AnswerHints::default());
        let out = openai.request(&embeddings).unwrap();
        assert_eq!(out.body, body, "without a span the body goes as it came");
        let error = Bytes::from_static(br#"{"error":{"message":"no"}}"#);
        assert_eq!(openai.error_body(400, &error), error);
        assert_eq!(openai.answer(Endpoint::ChatCompletions, &error, "m", 0, AnswerHints::default()).unwrap(), error);
        assert_eq!(openai.model_ids(br#"{"data":[{"id":"gpt-4o"}]}"#).unwrap(), ["gpt-4o"]);
    }
}
