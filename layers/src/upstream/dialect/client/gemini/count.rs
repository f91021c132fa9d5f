//! `countTokens`, estimated from the request's text: the upstream cannot
//! count in Gemini's dialect.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{TranslateError, err, field, parse_object, to_bytes};
use crate::upstream::dialect::client::estimate_tokens;

/// What each turn costs beyond its text (role and framing).
const TOKENS_PER_TURN: u64 = 4;
/// What an image, document or audio part is guessed to cost (Gemini
/// counts 258 tokens for an image up to 384 pixels a side).
const TOKENS_PER_MEDIA: u64 = 258;

/// `{"totalTokens": N}` for a `countTokens` body: `{"contents": [...]}`
/// or `{"generateContentRequest": {...}}`. Lenient: a request
/// `generateContent` would refuse (Google-only tools, say) still counts.
pub(super) fn count_tokens(body: &[u8]) -> Result<Bytes, TranslateError> {
    let body = parse_object(body, "the countTokens request")?;
    let request = match field(&body, "generateContentRequest") {
        Some(Value::Object(request)) => request,
        Some(_) => return Err(err("generateContentRequest must be an object")),
        None => &body,
    };
    let contents = match field(request, "contents") {
        Some(Value::Array(contents)) => contents.as_slice(),
        Some(_) => return Err(err("`contents` must be an array of Content objects")),
        None if field(request, "systemInstruction").is_some() => &[],
        None => return Err(err("`contents` is required")),
    };
    let mut total = 0;
    if let Some(system) = field(request, "systemInstruction") {
        total += TOKENS_PER_TURN + content_tokens(system);
    }
    for content in contents {
        total += TOKENS_PER_TURN + content_tokens(content);
    }
    if let Some(tools) = field(request, "tools") {
        total += estimate_tokens(&tools.to_string());
    }
    Ok(to_bytes(&json!({ "totalTokens": total })))
}

fn content_tokens(content: &Value) -> u64 {
    let parts = match content {
        Value::String(text) => return estimate_tokens(text),
        Value::Object(content) => field(content, "parts").and_then(Value::as_array),
        _ => None,
    };
    parts.into_iter().flatten().map(part_tokens).sum()
}

fn part_tokens(part: &Value) -> u64 {
    let Some(part) = part.as_object() else { return 0 };
    if let Some(text) = field(part, "text").and_then(Value::as_str) {
        return estimate_tokens(text);
    }
    if field(part, "inlineData").is_some() || field(part, "fileData").is_some() {
        return TOKENS_PER_MEDIA;
    }
    // Calls, results, code: their JSON is what the model reads.
    ["functionCall", "functionResponse", "executableCode", "codeExecutionResult"]
        .iter()
        .filter_map(|name| field(part, name))
        .map(|value| estimate_tokens(&value.to_string()))
        .sum()
}
