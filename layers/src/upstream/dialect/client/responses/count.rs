//! `POST /v1/responses/input_tokens`, estimated: the answer is
//! `{"object": "response.input_tokens", "input_tokens": N}`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{TranslateError, fail};
use crate::upstream::dialect::client::estimate_tokens;

/// Tokens for each input item's framing (role, separators), as chat
/// formats spend a few per message.
const PER_ITEM: u64 = 4;

/// An image or a file, whose size in tokens depends on what the provider
/// makes of it: a middling guess rather than its base64 length.
const PER_ATTACHMENT: u64 = 768;

/// Fields whose strings are not read by the model as text (ids, kinds,
/// opaque or binary payloads).
const NOT_TEXT: [&str; 11] = [
    "type",
    "role",
    "id",
    "call_id",
    "status",
    "detail",
    "image_url",
    "file_data",
    "file_id",
    "file_url",
    "encrypted_content",
];

/// The estimated input tokens of a Responses request body.
pub(super) fn count_tokens(body: &[u8]) -> Result<Bytes, TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(request) = request else {
        return fail("the request body must be a JSON object");
    };
    let mut tokens = 0;
    if let Some(Value::String(instructions)) = request.get("instructions") {
        tokens += estimate_tokens(instructions) + PER_ITEM;
    }
    match request.get("input") {
        Some(Value::String(text)) => tokens += estimate_tokens(text) + PER_ITEM,
        Some(Value::Array(items)) => {
            // Reasoning items are not sent on (see `input.rs`).
            let sent = items.iter().filter(|item| item.get("type").is_none_or(|t| t != "reasoning"));
            for item in sent {
                tokens += PER_ITEM + content_tokens(item);
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => return fail("`input` must be a string or an array of input items"),
    }
    if let Some(tools @ Value::Array(_)) = request.get("tools") {
        tokens += estimate_tokens(&tools.to_string());
    }
    let answer = json!({"object": "response.input_tokens", "input_tokens": tokens});
    Ok(Bytes::from(answer.to_string()))
}

/// The tokens of the text in `value`, attachments counted whole.
fn content_tokens(value: &Value) -> u64 {
    match value {
        Value::String(text) => estimate_tokens(text),
        Value::Array(values) => values.iter().map(content_tokens).sum(),
        Value::Object(object) => {
            let attachment = matches!(object.get("type").and_then(Value::as_str), Some("input_image" | "input_file"));
            let text: u64 = object
                .iter()
                .filter(|(key, _)| !NOT_TEXT.contains(&key.as_str()))
                .map(|(_, value)| content_tokens(value))
                .sum();
            text + if attachment { PER_ATTACHMENT } else { 0 }
        }
        Value::Number(_) | Value::Bool(_) | Value::Null => 0,
    }
}
