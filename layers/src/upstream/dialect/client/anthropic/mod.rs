//! Anthropic's Messages API (`POST /v1/messages`) as a client speaks it
//! (Claude Code, the Anthropic SDKs): Messages requests to chat completions,
//! and chat answers, whole or streamed, back to Messages.
//!
//! It mirrors the outbound translator ([`crate::upstream::dialect::anthropic`]):
//! a Messages request that goes to chat completions here and back to Messages
//! there keeps its meaning (tool ids, thinking budgets, tool choices).
//!
//! Requests:
//!
//! | Messages | chat completions |
//! |---|---|
//! | `system` (a string or text blocks) | one `system` message, texts joined by blank lines |
//! | `text`, `image` (base64 or url source) blocks | `text`, `image_url` parts (base64 as a data URL); one text alone is a string |
//! | `document` (base64 PDF; plain text or content source) | a `file` part (`file_data` data URL, `filename` the title or `document.pdf`); text parts |
//! | assistant `tool_use` blocks | `tool_calls` (same `id`, `arguments` the `input` as a JSON string) |
//! | user `tool_result` blocks | one `tool` message each (`tool_call_id` = `tool_use_id`), right after the assistant message, before the rest of the turn |
//! | images or documents inside a `tool_result` | parts of the user message after the tool messages (the tool message says `(attached below)` if it has no text) |
//! | `tool_result` with `is_error: true` | its content prefixed with `Error: ` |
//! | `thinking`, `redacted_thinking` blocks | dropped (their signatures are only valid at Anthropic) |
//! | `tools` (custom) | function tools (`parameters` = `input_schema`) |
//! | `tool_choice` `auto` / `any` / `tool` / `none` | `auto` / `required` / `{"type": "function", ...}` / `none` |
//! | `disable_parallel_tool_use: true` | `parallel_tool_calls: false` |
//! | `max_tokens` | `max_tokens` (what every OpenAI-compatible server takes) |
//! | `stop_sequences` | `stop` |
//! | `temperature`, `top_p` | the same |
//! | `thinking` `enabled` with `budget_tokens` | `reasoning_effort`: `low` below 4096, `medium` below 16384, else `high` |
//! | `thinking` `adaptive`, `output_config.effort` | `reasoning_effort` (`max` and `xhigh` as `high`; adaptive alone is `high`) |
//! | `output_config.format` / `output_format` `json_schema` | `response_format` `json_schema` (named `output`, strict) |
//! | `metadata.user_id` | `user` |
//! | `stream` | `stream` with `stream_options.include_usage` |
//!
//! Dropped silently, as they change nothing the client reads: `cache_control`
//! and `citations` on any block, `top_k`, `thinking` `disabled`,
//! `service_tier`, `container`, `context_management`, and fields yet to come.
//! Refused with a [`TranslateError`] that names them: Anthropic's server
//! tools (`web_search_*`, `bash_*`, `text_editor_*`, `code_execution_*`,
//! `computer_*`... any tool whose `type` is not `custom`), `mcp_servers`,
//! blocks only Anthropic keeps (`server_tool_use`, `*_tool_result`,
//! `search_result`, `container_upload`...), images or documents by `file_id`
//! or, for documents, by URL (send them inline as base64).
//!
//! Answers: `reasoning_content` (or OpenRouter's `reasoning`) becomes a
//! `thinking` block with an empty `signature`, then the text, then
//! `tool_use` blocks (`input` the parsed arguments; arguments that are not
//! a JSON object are kept as `{"_raw": "<the string>"}`, so that the tool
//! fails visibly rather than running with no arguments). `finish_reason`
//! becomes `stop_reason`: `stop` is `end_turn` (chat cannot say whether a
//! stop sequence ended it), or `tool_use` when the answer calls tools;
//! `length` is `max_tokens`, `tool_calls` `tool_use`, `content_filter`
//! `refusal`. Usage: `input_tokens` is the prompt less its cache reads
//! (Anthropic counts them apart), `cache_read_input_tokens` the cached
//! tokens, `cache_creation_input_tokens` 0 (chat does not report writes).
//!
//! Streams ([`MessagesStream`]) follow Anthropic's event order: see its docs.
//!
//! ```
//! use keyrelay_layers::{
//!     extensions::Endpoint,
//!     upstream::dialect::client::{anthropic::Messages, ClientDialect, ClientHints, ClientRequest},
//! };
//! use serde_json::{json, Value};
//!
//! let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "Be brief.",
//!     "messages": [{"role": "user", "content": "Hi"}]}).to_string();
//! let chat = Messages.to_chat(&ClientRequest::new(Endpoint::Messages, body.as_bytes(), "gpt-4.1", false)).unwrap();
//! let chat: Value = serde_json::from_slice(&chat.body).unwrap();
//! assert_eq!(chat, json!({"model": "gpt-4.1", "max_tokens": 1024, "messages": [
//!     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}));
//!
//! let completion = json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0,
//!     "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
//!     "usage": {"prompt_tokens": 9, "completion_tokens": 3}}).to_string();
//! let answer = Messages.answer(completion.as_bytes(), "gpt-4.1", &ClientHints::default()).unwrap();
//! let answer: Value = serde_json::from_slice(&answer).unwrap();
//! assert_eq!(answer["id"], "msg_1");
//! assert_eq!(answer["content"], json!([{"type": "text", "text": "Hello!"}]));
//! assert_eq!(answer["stop_reason"], "end_turn");
//! assert_eq!(answer["usage"]["input_tokens"], 9);
//!
//! // What only Anthropic can run is refused before anything is sent.
//! let search = json!({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "news?"}],
//!     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}).to_string();
//! let refused = Messages.to_chat(&ClientRequest::new(Endpoint::Messages, search.as_bytes(), "gpt-4.1", false));
//! assert!(refused.unwrap_err().0.contains("only Anthropic providers run it"));
//! ```

mod answer;
mod count;
mod messages;
mod request;
mod stream;
mod tools;

use bytes::Bytes;

pub use self::stream::MessagesStream;
use super::{ChatRequest, ClientDialect, ClientHints, ClientRequest};
use crate::upstream::dialect::{StreamTranslator, TranslateError, echo, fail};

/// The Messages API's [`ClientDialect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Messages;

impl ClientDialect for Messages {
    fn to_chat(&self, req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
        let body = request::to_chat(req.body, req.model, req.stream)?;
        Ok(ChatRequest { body, hints: ClientHints::default() })
    }

    fn answer(&self, chat: &[u8], model: &str, _hints: &ClientHints) -> Result<Bytes, TranslateError> {
        answer::message(chat, model)
    }

    fn stream(&self, model: &str, _hints: &ClientHints) -> Box<dyn StreamTranslator> {
        Box::new(MessagesStream::new(model))
    }

    fn count_tokens(&self, req: &ClientRequest<'_>) -> Result<Bytes, TranslateError> {
        count::count_tokens(req.body)
    }
}

/// A fresh id for what the chat answer did not name: `prefix` and 24
/// random letters and digits, as Anthropic's ids look.
fn fresh_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}
