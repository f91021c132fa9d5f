//! Gemini's whole `GenerateContentResponse` as an OpenAI
//! `chat.completion`, and the pieces the stream shares (ids, tool calls,
//! finish reasons, usage).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{TranslateError, err, error::error_message, escape_segment, parse_object, to_bytes};

/// An OpenAI `chat.completion` from a `GenerateContentResponse`.
pub fn chat_response(body: &[u8], model: &str, created: u64) -> Result<Bytes, TranslateError> {
    let response = parse_object(body, "Gemini's answer")?;
    if let Some(error) = response.get("error") {
        return Err(err(format!("Gemini answered with an error: {}", error_message(error))));
    }
    let response_id = response.get("responseId").and_then(Value::as_str).filter(|id| !id.is_empty());
    let mut ids = CallIds::new(response_id);
    let mut choices = Vec::new();
    let candidates = response.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (position, candidate) in candidates.iter().enumerate() {
        let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        let mut text = String::new();
        let mut has_text = false;
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        for part in parts_of(candidate) {
            if let Some(call) = part.get("functionCall") {
                let mut tool_call = tool_call(call, part, &mut ids);
                if let Value::Object(fields) = &mut tool_call {
                    fields.remove("index");
                }
                tool_calls.push(tool_call);
            } else if let Some(t) = part.get("text").and_then(Value::as_str) {
                if is_thought(part) {
                    reasoning.push_str(t);
                } else {
                    text.push_str(t);
                    has_text = true;
                }
            }
        }
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        let content = if has_text || tool_calls.is_empty() { Value::String(text) } else { Value::Null };
        message.insert("content".into(), content);
        if !reasoning.is_empty() {
            message.insert("reasoning_content".into(), reasoning.into());
        }
        let reason = finish_reason(candidate.get("finishReason"), !tool_calls.is_empty()).unwrap_or("stop");
        if !tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": null,
            "finish_reason": reason,
        }));
    }
    if choices.is_empty() {
        // No candidate: the prompt was blocked (or nothing came back).
        let blocked = response.get("promptFeedback").and_then(|f| f.get("blockReason")).is_some();
        let (content, reason) = if blocked { (Value::Null, "content_filter") } else { ("".into(), "stop") };
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "logprobs": null,
            "finish_reason": reason,
        }));
    }
    let out = json!({
        "id": completion_id(response_id, created),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(response.get("usageMetadata")),
    });
    Ok(to_bytes(&out))
}

pub(super) fn completion_id(response_id: Option<&str>, created: u64) -> String {
    match response_id {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-gemini-{created}"),
    }
}

pub(super) fn parts_of(candidate: &Value) -> &[Value] {
    candidate.pointer("/content/parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

pub(super) fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool).unwrap_or(false)
}

/// Ids for the tool calls of one answer.
#[derive(Debug)]
pub(super) struct CallIds {
    prefix: String,
    next: usize,
}

impl CallIds {
    pub(super) fn new(response_id: Option<&str>) -> Self {
        let prefix = match response_id {
            Some(id) => format!("call_{}_", escape_segment(id)),
            None => "call_".to_owned(),
        };
        Self { prefix, next: 0 }
    }

    pub(super) fn next(&mut self) -> String {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

/// An OpenAI tool call (with an `index` of 0, for the stream to set) from
/// a `functionCall` and the part that holds it.
pub(super) fn tool_call(call: &Value, part: &Value, ids: &mut CallIds) -> Value {
    let generated = ids.next();
    let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()).map_or(generated, str::to_owned);
    let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
    let arguments = match call.get("args") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(args) => args.to_string(),
    };
    let mut out = json!({
        "index": 0,
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    });
    if let (Some(signature), Value::Object(fields)) = (part.get("thoughtSignature").and_then(Value::as_str), &mut out) {
        fields.insert("extra_content".into(), json!({ "google": { "thought_signature": signature } }));
    }
    out
}

/// OpenAI's `finish_reason` for Gemini's, `None` while there is none.
pub(super) fn finish_reason(reason: Option<&Value>, called: bool) -> Option<&'static str> {
    let reason = reason?.as_str()?;
    let filtered = ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED", "SPII"];
    Some(match reason {
        "MAX_TOKENS" => "length",
        r if filtered.iter().any(|f| r.contains(f)) => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    })
}

/// OpenAI `usage` from `usageMetadata` (thinking counts as completion).
pub(super) fn usage(metadata: Option<&Value>) -> Value {
    let count = |field: &str| metadata.and_then(|m| m.get(field)).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("promptTokenCount") + count("toolUsePromptTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let completion = count("candidatesTokenCount") + thoughts;
    let total = metadata.and_then(|m| m.get("totalTokenCount")).and_then(Value::as_u64).unwrap_or(prompt + completion);
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    });
    if let Value::Object(fields) = &mut usage {
        let cached = count("cachedContentTokenCount");
        if cached > 0 {
            fields.insert("prompt_tokens_details".into(), json!({ "cached_tokens": cached }));
        }
        if thoughts > 0 {
            fields.insert("completion_tokens_details".into(), json!({ "reasoning_tokens": thoughts }));
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn responses_without_candidates_or_parts() {
        let out = |body: Value| -> Value {
            serde_json::from_slice(&chat_response(body.to_string().as_bytes(), "m", 1).unwrap()).unwrap()
        };
        let empty = out(json!({ "candidates": [] }));
        assert_eq!(empty["choices"][0]["message"]["content"], "");
        assert_eq!(empty["choices"][0]["finish_reason"], "stop");
        assert_eq!(empty["id"], "chatcmpl-gemini-1");
        assert_eq!(empty["usage"], json!({ "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 }));
        let filtered = out(json!({ "candidates": [{ "finishReason": "SAFETY", "index": 0 }] }));
        assert_eq!(filtered["choices"][0]["message"]["content"], "");
        assert_eq!(filtered["choices"][0]["finish_reason"], "content_filter");
        let two = out(json!({ "candidates": [
            { "content": { "parts": [{ "text": "a" }] }, "finishReason": "STOP", "index": 0 },
            { "content": { "parts": [{ "text": "b" }] }, "finishReason": "MAX_TOKENS", "index": 1 },
        ] }));
        assert_eq!(two["choices"][1]["index"], 1);
        assert_eq!(two["choices"][1]["message"]["content"], "b");
        assert_eq!(two["choices"][1]["finish_reason"], "length");

        let error = chat_response(br#"{"error":{"code":500,"message":"boom"}}"#, "m", 1).unwrap_err();
        assert_eq!(error.0, "Gemini answered with an error: boom");
        assert!(chat_response(b"[]", "m", 1).is_err());
    }
}
