//! OpenAI's Responses API (`POST /v1/responses`) as a client speaks it
//! (Codex CLI with `wire_api = "responses"`, the OpenAI SDKs'
//! `client.responses.create(...)` and `.stream(...)`): Responses requests
//! become chat-completions requests, and chat answers, whole or streamed,
//! become `response` objects and Responses stream events.
//!
//! Requests:
//!
//! | Responses | chat completions |
//! |---|---|
//! | `instructions`, `system` / `developer` messages | `system` messages (the instructions first) |
//! | `input` as a string | one `user` message |
//! | `message` items (`type` optional) | messages of that role; `input_text` / `output_text` / `refusal` -> text, `input_image` -> `image_url`, `input_file` -> `file` |
//! | `function_call` items | an assistant message's `tool_calls` (consecutive calls in one message, `id` = `call_id`) |
//! | `function_call_output` items | `tool` messages (`tool_call_id` = `call_id`) |
//! | `custom_tool_call` / `custom_tool_call_output` | a function call with arguments `{"input": <text>}` / a `tool` message |
//! | `reasoning` items | dropped: their encrypted content is readable only by OpenAI |
//! | `function` tools | function tools |
//! | `custom` tools (Codex's freeform `apply_patch`) | a function with one string parameter `input`; its grammar, if any, goes into the description |
//! | `tool_choice`, `parallel_tool_calls` | the same, only next to tools (chat providers refuse them alone) |
//! | `max_output_tokens` | `max_tokens` |
//! | `temperature`, `top_p` | the same |
//! | `reasoning.effort` | `reasoning_effort` (`minimal` is `low`) |
//! | `text.format` `json_schema` / `json_object` | `response_format` |
//! | `user`, else `safety_identifier` | `user` |
//!
//! Dropped silently, since they change nothing a chat provider can act on:
//! `store`, `include`, `metadata` (echoed in the answer all the same),
//! `truncation`, `service_tier`, `prompt_cache_key`, `stream_options`,
//! `max_tool_calls` (it limits OpenAI's built-in tools, which are refused),
//! `reasoning.summary`, `text.verbosity`, and item `id`s and `status`es.
//!
//! Refused with a [`TranslateError`] that says what to do: what needs
//! OpenAI's stored state (`previous_response_id`, `conversation`,
//! `background: true`, `prompt`, `item_reference` items, files by
//! `file_id`); OpenAI's built-in tools (`web_search`, `file_search`,
//! `code_interpreter`, `computer_use_preview`, `image_generation`, `mcp`,
//! `local_shell`...) and their calls in the history, which run only at
//! OpenAI; `top_logprobs`, whose answer part is not translated back.
//!
//! Answers: a `response` object (`id` `resp_` and 32 random hex digits)
//! with a `reasoning` item (the chat answer's `reasoning_content` or
//! `reasoning` as one summary text), a `message` item (its text; a
//! refusal is text too), then one `function_call` item per tool call (a
//! `custom_tool_call` for a custom tool, its `input` read back from the
//! arguments). `finish_reason` `length` makes it `incomplete` with reason
//! `max_output_tokens`, `content_filter` with reason `content_filter`. The
//! request's settings are echoed (`instructions`, `tools`, `tool_choice`,
//! `temperature`...), as the SDKs expect; they travel from
//! [`ClientDialect::to_chat`] to the answer in the [`ClientHints`].
//!
//! Streams: `response.created`, `response.in_progress`, then each output
//! item whole before the next (added, its parts and deltas, done), and
//! `response.completed` (or `response.incomplete`) with the whole
//! `response`, usage included: it waits for the chat stream's usage chunk,
//! `[DONE]` or the end. A chat stream that switches from reasoning to text
//! or to a tool call closes the item it was in. Tool calls must come one
//! after the other, as OpenAI and keyrelay's own translators send them; a
//! provider that interleaves the pieces of two calls fails the stream.
//! A custom tool call's input is sent whole when the call ends (the chat
//! stream carries it JSON-encoded).
//!
//! ```
//! use keyrelay_layers::extensions::Endpoint;
//! use keyrelay_layers::upstream::dialect::client::{ClientDialect, ClientRequest, responses::Responses};
//! use serde_json::{json, Value};
//!
//! let body = br#"{"model": "anthropic/claude-sonnet-4-5", "instructions": "Be brief.", "input": "Hi",
//!     "max_output_tokens": 100}"#;
//! let chat = Responses.to_chat(&ClientRequest::new(Endpoint::Responses, body, "claude-sonnet-4-5", false)).unwrap();
//! let request: Value = serde_json::from_slice(&chat.body).unwrap();
//! assert_eq!(request["messages"], json!([
//!     {"role": "system", "content": "Be brief."},
//!     {"role": "user", "content": "Hi"},
//! ]));
//! assert_eq!(request["max_tokens"], 100);
//!
//! let completion = br#"{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0,
//!     "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
//!     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}"#;
//! let answer = Responses.answer(completion, "anthropic/claude-sonnet-4-5", &chat.hints).unwrap();
//! let answer: Value = serde_json::from_slice(&answer).unwrap();
//! assert_eq!(answer["object"], "response");
//! assert_eq!(answer["status"], "completed");
//! assert_eq!(answer["instructions"], "Be brief.");
//! assert_eq!(answer["output"][0]["content"][0]["text"], "Hello!");
//! assert_eq!(answer["usage"]["total_tokens"], 12);
//! ```

mod answer;
mod count;
mod input;
mod request;
mod shape;
mod stream;
mod tools;

use bytes::Bytes;

pub use self::stream::ResponsesStream;
use super::{ChatRequest, ClientDialect, ClientHints, ClientRequest};
use crate::upstream::dialect::{StreamTranslator, TranslateError, echo, fail};

/// The Responses API's [`ClientDialect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Responses;

impl ClientDialect for Responses {
    fn to_chat(&self, req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
        let (body, hints) = request::to_chat(req.body, req.model, req.stream)?;
        Ok(ChatRequest { body, hints })
    }

    fn answer(&self, chat: &[u8], model: &str, hints: &ClientHints) -> Result<Bytes, TranslateError> {
        answer::answer(chat, model, hints)
    }

    fn stream(&self, model: &str, hints: &ClientHints) -> Box<dyn StreamTranslator> {
        Box::new(ResponsesStream::new(model, hints.clone()))
    }

    fn count_tokens(&self, req: &ClientRequest<'_>) -> Result<Bytes, TranslateError> {
        count::count_tokens(req.body)
    }
}

/// A field that is there and not `null`.
fn present<'a>(object: &'a serde_json::Map<String, serde_json::Value>, field: &str) -> Option<&'a serde_json::Value> {
    object.get(field).filter(|v| !v.is_null())
}
