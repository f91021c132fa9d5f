//! Google's Gemini API (`generativelanguage.googleapis.com`, `v1beta`):
//! OpenAI chat and embeddings requests in, Gemini's `generateContent`,
//! `streamGenerateContent?alt=sse` and `batchEmbedContents` bodies out, and
//! their answers back as OpenAI's. Pure functions over JSON; no I/O.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::gemini;
//!
//! let body = br#"{"model":"gemini/gemini-2.5-flash","messages":[
//!     {"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#;
//! let out = gemini::chat_request(body, "gemini-2.5-flash", false).unwrap();
//! let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(out["systemInstruction"]["parts"][0]["text"], "Be brief.");
//! assert_eq!(out["contents"][0]["role"], "user");
//! assert_eq!(gemini::chat_path("gemini-2.5-flash", true),
//!     "v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
//! ```
//!
//! Choices this translation makes, where the two formats do not line up:
//!
//! - `system` and `developer` messages, wherever they stand, become
//!   `systemInstruction`; `assistant` is Gemini's `model`; tool results are
//!   `functionResponse` parts in a `user` turn, named after the earlier tool
//!   call with that `tool_call_id`, with `response` the tool's output when it
//!   is a JSON object and `{"result": <text>}` otherwise. Consecutive turns of
//!   one role are merged (Gemini wants parallel tool results in one turn).
//! - JSON schemas (tool parameters, `response_format`) are cut down to the
//!   OpenAPI subset Gemini accepts: local `$ref`s are inlined (a cycle stops
//!   at a bare `object`), `allOf` is merged, `null` alternatives and `null`
//!   types become `nullable`, `const` becomes `enum`, string formats other
//!   than `enum` and `date-time` are dropped, and keywords Gemini refuses
//!   (`additionalProperties`, `default`, `examples`, `title`, `$schema`...)
//!   go. A `json_schema` answer format also gets `propertyOrdering` in the
//!   order the client wrote its properties (Gemini otherwise answers them
//!   in alphabetical order); a schema expands to at most 10,000 nodes.
//! - Thought signatures: a `functionCall` part's `thoughtSignature` goes to
//!   the client as `tool_calls[].extra_content.google.thought_signature` (the
//!   field Google's own OpenAI endpoint uses) and comes back from it. Gemini
//!   3 refuses a replayed function call without one, so when the client
//!   dropped it, the documented `skip_thought_signature_validator` stands in
//!   (not for the 1.x/2.x families, which do not ask for it).
//! - Tool call ids are `call_<responseId>_<n>` (`n` counting the answer's
//!   calls from 0), unique across a conversation; Gemini's own
//!   `functionCall.id` wins when it sends one.
//! - `reasoning_effort` becomes a `thinkingBudget` (minimal 512, low 1024,
//!   medium 8192, high 24576; none 0) with `includeThoughts`, and thought
//!   parts come back as `reasoning_content`.
//! - `response_format` is `responseMimeType` (and `responseSchema`), `seed`
//!   is `seed`, `n` is `candidateCount`. `logprobs` / `top_logprobs` and
//!   audio output are refused: Gemini's own log probabilities and audio
//!   parts are not translated, and an answer silently without them breaks
//!   the client that asked.
//! - Embeddings: `encoding_format: "base64"` (the OpenAI SDKs' default) is
//!   learned while translating the request ([`AnswerHints`]) and the
//!   vectors come back as base64 of little-endian `f32`s.

mod config;
mod content;
mod embeddings;
mod error;
mod models;
mod request;
mod response;
mod schema;
mod stream;
#[cfg(test)]
mod test_support;

use std::{borrow::Cow, fmt::Write as _};

use bytes::Bytes;
use serde_json::{Map, Value};

pub use self::{
    embeddings::{embeddings_request, embeddings_response, embeddings_response_encoded},
    error::error_body,
    models::{model_ids, next_page_token},
    request::chat_request,
    response::chat_response,
    stream::ChatStream,
};
use super::{AnswerHints, OutboundRequest, ProviderDialect, StreamTranslator, TranslateError, Translated};
use crate::extensions::Endpoint;

/// Gemini's API as a [`ProviderDialect`]: chat completions and embeddings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gemini;

impl ProviderDialect for Gemini {
    fn request(&self, req: &OutboundRequest<'_>) -> Result<Translated, TranslateError> {
        let (model, stream) = (req.model, req.stream);
        match req.endpoint {
            Endpoint::ChatCompletions => Ok(Translated {
                path: Cow::Owned(chat_path(model, stream)),
                body: chat_request(req.body, model, stream)?,
                hints: AnswerHints::default(),
            }),
            Endpoint::Embeddings => {
                let (body, hints) = embeddings::translate(req.body, model)?;
                Ok(Translated { path: Cow::Owned(embeddings_path(model)), body, hints })
            }
            endpoint => Err(super::provider::no_endpoint(crate::provider::Dialect::Gemini, endpoint)),
        }
    }

    fn answer(
        &self,
        endpoint: Endpoint,
        body: &Bytes,
        model: &str,
        created: u64,
        hints: AnswerHints,
    ) -> Result<Bytes, TranslateError> {
        match endpoint {
            Endpoint::ChatCompletions => chat_response(body, model, created),
            Endpoint::Embeddings => embeddings_response_encoded(body, model, hints.embeddings_base64),
            endpoint => Err(super::provider::no_endpoint(crate::provider::Dialect::Gemini, endpoint)),
        }
    }

    fn native_path(&self, endpoint: Endpoint, model: &str, _: &str) -> Option<Cow<'static, str>> {
        let method = match endpoint {
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent | Endpoint::CountTokens => {
                endpoint.path_suffix()
            }
            _ => return None,
        };
        Some(Cow::Owned(format!("v1beta/models/{}:{method}", escape_segment(model))))
    }

    fn stream(
        &self,
        endpoint: Endpoint,
        model: &str,
        include_usage: bool,
        created: u64,
        _: AnswerHints,
    ) -> Option<Box<dyn StreamTranslator>> {
        let stream = ChatStream::new(model, include_usage, created);
        (endpoint == Endpoint::ChatCompletions).then(|| Box::new(stream) as Box<dyn StreamTranslator>)
    }

    fn error_body(&self, status: u16, body: &Bytes) -> Bytes {
        error_body(status, body)
    }

    fn model_ids(&self, body: &[u8]) -> Result<Vec<String>, TranslateError> {
        model_ids(body)
    }
}

/// Where every path below is appended.
pub const BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The header that carries the key.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

// === paths ===

/// `v1beta/models/{model}:generateContent`, or the SSE stream.
pub fn chat_path(model: &str, stream: bool) -> String {
    let model = escape_segment(model);
    if stream {
        format!("v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("v1beta/models/{model}:generateContent")
    }
}

/// `v1beta/models/{model}:batchEmbedContents`.
pub fn embeddings_path(model: &str) -> String {
    format!("v1beta/models/{}:batchEmbedContents", escape_segment(model))
}

/// The model list, as large a page as Gemini gives (the default page is
/// 50 models, fewer than Gemini has); pass the previous page's
/// [`next_page_token`] for the next one.
pub fn models_path(page_token: Option<&str>) -> String {
    match page_token {
        Some(token) => format!("v1beta/models?pageSize=1000&pageToken={}", escape_segment(token)),
        None => "v1beta/models?pageSize=1000".to_owned(),
    }
}

/// Percent-encodes everything but `[A-Za-z0-9._-]`, so a model name cannot
/// leave its path segment (`/`, `?`, `#`, `:`, `%`...).
fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// === helpers ===

fn err(message: impl Into<String>) -> TranslateError {
    TranslateError::new(message)
}

fn parse_object(body: &[u8], what: &str) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(err(format!("{what} must be a JSON object"))),
        Err(e) => Err(err(format!("{what} is not valid JSON: {e}"))),
    }
}

fn to_vec(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(to_vec(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_escaped_into_one_segment() {
        assert_eq!(escape_segment("gemini-2.5-flash_x.y"), "gemini-2.5-flash_x.y");
        assert_eq!(escape_segment("a/b c:d%é"), "a%2Fb%20c%3Ad%25%C3%A9");
        assert_eq!(chat_path("tunedModels/x", false), "v1beta/models/tunedModels%2Fx:generateContent");
    }
}
