//! Anthropic's Messages API (`POST /v1/messages`, `anthropic-version:
//! 2023-06-01`): OpenAI chat requests in, Messages requests out, and the
//! answers (whole, streamed, or errors) back into OpenAI's shapes.
//!
//! Requests:
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages | `system`, joined by blank lines |
//! | `user`, `assistant` messages | turns; consecutive turns of one role merged |
//! | content parts `text`, `image_url`, `file` | `text`, `image` (base64 or url source), `document` |
//! | assistant `tool_calls` | `tool_use` blocks (arguments parsed to `input`) |
//! | `tool` messages | a user turn of `tool_result` blocks (first in their turn) |
//! | `tools`, `tool_choice`, `parallel_tool_calls: false` | `tools`, `tool_choice`, `disable_parallel_tool_use` |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` (else [`DEFAULT_MAX_TOKENS`]) |
//! | `stop` | `stop_sequences` |
//! | `temperature`, `top_p` | the same, but only one (`temperature`), and neither with thinking |
//! | `reasoning_effort` | `thinking` with a token budget |
//! | `user` | `metadata.user_id` |
//! | `response_format` `json_schema` / `json_object` | one forced tool whose input is the answer (below) |
//!
//! Other OpenAI fields are ignored when they change nothing in the answer's
//! shape (`seed`, which Anthropic does not have; `frequency_penalty`,
//! `presence_penalty`, `logit_bias`...). What Anthropic cannot express is a
//! [`TranslateError`] naming it: `n > 1`, `logprobs` / `top_logprobs`, audio
//! in or out, files by id, a legacy `function` role, and `response_format`
//! next to client tools or thinking.
//!
//! Answers: text blocks become `content`, `thinking` blocks
//! `reasoning_content`, `tool_use` blocks `tool_calls`; `stop_reason` becomes
//! `finish_reason`; cache reads and writes count as prompt tokens.
//!
//! Structured outputs: Anthropic follows a JSON schema only for a tool's
//! input, so `response_format` becomes a tool standing for the answer and a
//! `tool_choice` forcing it, and the request's [`AnswerHints::json_via_tool`]
//! makes that tool's input the answer's `content` (a JSON string), whole or
//! streamed (`input_json_delta` pieces as `content` pieces), with finish
//! reason `stop` and no `tool_calls`: what OpenAI's SDK `parse()` and
//! LangChain's `with_structured_output` read. Only [`Anthropic`] (the
//! [`ProviderDialect`]) carries the hint from request to answer.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::{anthropic, sse::DONE, SseEvent, StreamTranslator};
//! use serde_json::{json, Value};
//!
//! let body = br#"{"model": "anthropic/claude-sonnet-4-5", "stream": true, "messages": [
//!     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#;
//! let out = anthropic::chat_request(body, "claude-sonnet-4-5", true).unwrap();
//! let out: Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(out["model"], "claude-sonnet-4-5");
//! assert_eq!(out["system"], "Be brief.");
//! assert_eq!(out["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]));
//! assert_eq!(out["max_tokens"], anthropic::DEFAULT_MAX_TOKENS);
//!
//! // The answer's events, as the SSE framer hands them over, become OpenAI chunks.
//! let mut stream = anthropic::ChatStream::new("claude-sonnet-4-5", false, 1_700_000_000);
//! let mut sent = Vec::new();
//! for data in [
//!     json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
//!     json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello!"}}),
//!     json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
//!     json!({"type": "message_stop"}),
//! ] {
//!     sent.extend(stream.event(&SseEvent { event: None, data: data.to_string() }).unwrap());
//! }
//! sent.extend(stream.finish());
//! assert_eq!(&sent.pop().unwrap()[..], DONE);
//! let chunks: Vec<Value> = sent
//!     .iter()
//!     .map(|event| serde_json::from_slice(event.strip_prefix(b"data: ").unwrap()).unwrap())
//!     .collect();
//! assert_eq!(chunks[0]["id"], "chatcmpl-msg_1");
//! assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
//! assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello!");
//! assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
//! assert!(stream.is_complete());
//! assert_eq!(stream.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((9, 3)));
//! ```

mod error;
mod messages;
mod models;
mod request;
mod response;
mod shape;
mod stream;
#[cfg(test)]
mod test_support;
mod tools;

use std::borrow::Cow;

use bytes::Bytes;

pub use self::{
    error::error_body, models::model_ids, request::chat_request, response::chat_response, stream::ChatStream,
};
use super::{
    AnswerHints, OutboundRequest, ProviderDialect, StreamTranslator, TranslateError, Translated, echo, fail,
    provider::no_endpoint,
};
use crate::{extensions::Endpoint, provider::Dialect};

/// Anthropic's Messages API as a [`ProviderDialect`]: chat completions only.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anthropic;

impl ProviderDialect for Anthropic {
    fn request(&self, req: &OutboundRequest<'_>) -> Result<Translated, TranslateError> {
        match req.endpoint {
            Endpoint::ChatCompletions => {
                let (body, hints) = request::translate(req.body, req.model, req.stream)?;
                Ok(Translated { path: Cow::Borrowed(chat_path()), body, hints })
            }
            endpoint => Err(no_endpoint(Dialect::Anthropic, endpoint)),
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
            Endpoint::ChatCompletions => response::completion(body, model, created, hints),
            endpoint => Err(no_endpoint(Dialect::Anthropic, endpoint)),
        }
    }

    fn native_path(&self, endpoint: Endpoint, _: &str, _: &str) -> Option<Cow<'static, str>> {
        match endpoint {
            Endpoint::Messages => Some(Cow::Borrowed("v1/messages")),
            Endpoint::MessagesCountTokens => Some(Cow::Borrowed("v1/messages/count_tokens")),
            _ => None,
        }
    }

    fn stream(
        &self,
        endpoint: Endpoint,
        model: &str,
        include_usage: bool,
        created: u64,
        hints: AnswerHints,
    ) -> Option<Box<dyn StreamTranslator>> {
        let stream = ChatStream::with_hints(model, include_usage, created, hints);
        (endpoint == Endpoint::ChatCompletions).then(|| Box::new(stream) as Box<dyn StreamTranslator>)
    }

    fn error_body(&self, status: u16, body: &Bytes) -> Bytes {
        error_body(status, body)
    }

    fn model_ids(&self, body: &[u8]) -> Result<Vec<String>, TranslateError> {
        model_ids(body)
    }
}

/// Sent as the `anthropic-version` header.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client sets neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The chat endpoint, relative to the provider's base (`https://api.anthropic.com`).
pub fn chat_path() -> &'static str {
    "v1/messages"
}
