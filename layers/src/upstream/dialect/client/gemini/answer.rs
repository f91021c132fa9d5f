//! A whole `chat.completion` as a `GenerateContentResponse`, and the
//! pieces the stream shares (function calls, finish reasons, usage).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{TranslateError, echo, err, parse_object, to_bytes};
use crate::upstream::dialect::client::ClientHints;

/// The client's `GenerateContentResponse` for a chat completion.
pub(super) fn answer(chat: &[u8], model: &str, hints: &ClientHints) -> Result<Bytes, TranslateError> {
    let chat = parse_object(chat, "the chat completion")?;
    if let Some(error) = chat.get("error").filter(|e| !e.is_null()) {
        return Err(err(error_message(error)));
    }
    let choices = chat.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let choice = choices.iter().find(|c| c.get("index").and_then(Value::as_u64) == Some(0)).or(choices.first());
    let mut parts = Vec::new();
    let mut reason = "STOP";
    if let Some(choice) = choice {
        let message = choice.get("message").unwrap_or(&Value::Null);
        if include_thoughts(hints)
            && let Some(reasoning) = reasoning_of(message).filter(|r| !r.is_empty())
        {
            parts.push(thought_part(reasoning));
        }
        let text = content_text(message);
        if !text.is_empty() {
            parts.push(json!({ "text": text }));
        }
        let calls = message.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (k, call) in calls.iter().enumerate() {
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let function = call.get("function").unwrap_or(&Value::Null);
            parts.push(function_call_part(id, str_of(function, "name"), str_of(function, "arguments"), k)?);
        }
        if let Some(function) = message.get("function_call").filter(|f| f.is_object()) {
            parts.push(function_call_part("", str_of(function, "name"), str_of(function, "arguments"), calls.len())?);
        }
        reason = finish_reason(choice.get("finish_reason").and_then(Value::as_str));
    }
    let mut out = Map::new();
    out.insert("candidates".into(), json!([candidate(parts, Some(reason))]));
    if let Some(metadata) = chat.get("usage").and_then(usage_metadata) {
        out.insert("usageMetadata".into(), metadata);
    }
    out.insert("modelVersion".into(), model.into());
    out.insert("responseId".into(), chat.get("id").and_then(Value::as_str).unwrap_or_default().into());
    Ok(to_bytes(&Value::Object(out)))
}

/// Whether the client wants thought parts (unless it said
/// `includeThoughts: false`).
pub(super) fn include_thoughts(hints: &ClientHints) -> bool {
    hints.get().and_then(|h| h.get("includeThoughts")).and_then(Value::as_bool) != Some(false)
}

/// The reasoning of a message or delta (`reasoning` is OpenRouter's name).
pub(super) fn reasoning_of(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().find_map(|key| message.get(*key).and_then(Value::as_str))
}

pub(super) fn thought_part(text: &str) -> Value {
    json!({ "text": text, "thought": true })
}

/// A message's content as text: a string, or text parts; a refusal when
/// there is nothing else.
fn content_text(message: &Value) -> String {
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    };
    if text.is_empty()
        && let Some(refusal) = message.get("refusal").and_then(Value::as_str)
    {
        return refusal.to_owned();
    }
    text
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// One candidate (index 0, the only one chat gives) with these parts.
pub(super) fn candidate(parts: Vec<Value>, reason: Option<&str>) -> Value {
    let mut candidate = json!({ "content": { "role": "model", "parts": parts }, "index": 0 });
    if let (Some(reason), Value::Object(fields)) = (reason, &mut candidate) {
        fields.insert("finishReason".into(), reason.into());
    }
    candidate
}

/// A whole `functionCall` part; a call without an id gets `call_<k>`.
/// Gemini's `args` is an object: arguments that are not one are an error
/// rather than a call the client cannot run.
pub(super) fn function_call_part(id: &str, name: &str, arguments: &str, k: usize) -> Result<Value, TranslateError> {
    let args = if arguments.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_str::<Value>(arguments) {
            Ok(args @ Value::Object(_)) => args,
            _ => {
                return Err(err(format!(
                    "the model called `{}` with arguments that are not a JSON object",
                    echo(name)
                )));
            }
        }
    };
    let id = if id.is_empty() { format!("call_{k}") } else { id.to_owned() };
    Ok(json!({ "functionCall": { "name": name, "args": args, "id": id } }))
}

/// Gemini's `finishReason` for chat's (`None`: the answer just ended).
pub(super) fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        None | Some("stop" | "tool_calls" | "function_call") => "STOP",
        Some("length") => "MAX_TOKENS",
        Some("content_filter") => "SAFETY",
        Some(_) => "OTHER",
    }
}

/// `usageMetadata` from chat's `usage`: reasoning tokens are Gemini's
/// `thoughtsTokenCount`, apart from `candidatesTokenCount`.
pub(super) fn usage_metadata(usage: &Value) -> Option<Value> {
    if !usage.is_object() {
        return None;
    }
    let count = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("/prompt_tokens");
    let completion = count("/completion_tokens");
    let thoughts = count("/completion_tokens_details/reasoning_tokens").min(completion);
    let cached = count("/prompt_tokens_details/cached_tokens");
    let total = usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(prompt + completion);
    let mut metadata = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion - thoughts,
        "totalTokenCount": total,
    });
    if let Value::Object(fields) = &mut metadata {
        if cached > 0 {
            fields.insert("cachedContentTokenCount".into(), cached.into());
        }
        if thoughts > 0 {
            fields.insert("thoughtsTokenCount".into(), thoughts.into());
        }
    }
    Some(metadata)
}

/// The message of a chat `error` object (or the object itself).
pub(super) fn error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) if !message.is_empty() => message.to_owned(),
        _ => match error {
            Value::String(message) => message.clone(),
            other => format!("the upstream answered with an error: {other}"),
        },
    }
}
