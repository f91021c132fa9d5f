//! `POST /v1/messages/count_tokens`, estimated: `{"input_tokens": N}`.
//!
//! The text of the request at [`estimate_tokens`]' rate, plus what
//! Anthropic's own count adds around it: a few tokens a message for its
//! role and framing, and a flat cost for each image or PDF (their real cost
//! depends on pixels and pages, which are not read here).

use bytes::Bytes;
use serde_json::{Value, json};

use super::{TranslateError, fail};
use crate::upstream::dialect::client::estimate_tokens;

/// Tokens a message costs besides its content (role, turn markers).
const PER_MESSAGE: u64 = 4;

/// Tokens an image or a PDF is counted for: about what Anthropic charges a
/// picture of a megapixel, or a page.
const PER_MEDIA: u64 = 1600;

/// The estimated count for a Messages (or count_tokens) request body.
pub(super) fn count_tokens(body: &[u8]) -> Result<Bytes, TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Some(request) = request.as_object() else {
        return fail("the request body must be a JSON object");
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return fail("`messages` must be an array of messages");
    };
    let mut tokens = 0u64;
    if let Some(system) = request.get("system") {
        tokens = tokens.saturating_add(content_tokens(system));
    }
    for message in messages {
        let content = message.get("content").unwrap_or(&Value::Null);
        tokens = tokens.saturating_add(PER_MESSAGE).saturating_add(content_tokens(content));
    }
    for tool in request.get("tools").and_then(Value::as_array).into_iter().flatten() {
        tokens = tokens.saturating_add(estimate_tokens(&tool.to_string()));
    }
    Ok(Bytes::from(json!({"input_tokens": tokens}).to_string()))
}

/// A string, or blocks: their text (tool inputs as JSON), media flat.
fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => estimate_tokens(text),
        Value::Array(blocks) => blocks.iter().map(block_tokens).fold(0, u64::saturating_add),
        _ => 0,
    }
}

fn block_tokens(block: &Value) -> u64 {
    let text = |field: &str| block.get(field).and_then(Value::as_str).map_or(0, estimate_tokens);
    match block.get("type").and_then(Value::as_str) {
        Some("text") => text("text"),
        Some("thinking") => text("thinking"),
        Some("tool_use") => {
            let input = block.get("input").map_or(0, |input| estimate_tokens(&input.to_string()));
            text("name").saturating_add(input)
        }
        Some("tool_result") => block.get("content").map_or(0, content_tokens),
        Some("image") => PER_MEDIA,
        Some("document") => match block.get("source") {
            Some(source) if source.get("type").and_then(Value::as_str) == Some("text") => {
                source.get("data").and_then(Value::as_str).map_or(0, estimate_tokens)
            }
            Some(source) if source.get("type").and_then(Value::as_str) == Some("content") => {
                source.get("content").map_or(0, content_tokens)
            }
            _ => PER_MEDIA,
        },
        // redacted_thinking, server tool blocks: counted as the JSON they are.
        _ => estimate_tokens(&block.to_string()),
    }
}
