//! A whole `chat.completion` as a Messages API `message`, and the usage and
//! stop reasons the stream shares.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{TranslateError, fail, fresh_id};

/// Token counts as the Messages API reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(super) struct MessagesUsage {
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) cache_creation_input_tokens: u64,
    pub(super) cache_read_input_tokens: u64,
}

impl MessagesUsage {
    /// Chat's `usage` object: `prompt_tokens` includes the cached tokens,
    /// Anthropic's `input_tokens` does not. Absent or odd counts are 0.
    pub(super) fn from_chat(usage: &Value) -> Self {
        let count = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
        let prompt = count(usage.get("prompt_tokens"));
        let cached = count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")));
        Self {
            input_tokens: prompt.saturating_sub(cached),
            output_tokens: count(usage.get("completion_tokens")),
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
        }
    }

    /// The counts as the proxy meters them (chat's).
    pub(super) fn metered(&self) -> crate::usage::Usage {
        crate::usage::Usage::new(self.input_tokens.saturating_add(self.cache_read_input_tokens), self.output_tokens)
            .with_cached(self.cache_read_input_tokens)
    }
}

/// Anthropic's `stop_reason` for chat's `finish_reason`; `calls_tools`:
/// the answer has tool calls (some servers finish those with `stop`).
pub(super) fn stop_reason(finish_reason: Option<&str>, calls_tools: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ if calls_tools => "tool_use",
        // stop (a stop sequence or the end of the turn: chat cannot tell),
        // none, and reasons yet to come.
        _ => "end_turn",
    }
}

/// The message id for a chat id: `chatcmpl-msg_1` (the outbound
/// translator's) is `msg_1` again; others get the `msg_` prefix.
pub(super) fn message_id(chat_id: Option<&str>) -> String {
    let id = chat_id.unwrap_or_default();
    let id = id.strip_prefix("chatcmpl-").unwrap_or(id);
    match id {
        "" => fresh_id("msg_"),
        id if id.starts_with("msg_") => id.to_owned(),
        id => format!("msg_{id}"),
    }
}

/// A `tool_use` block's `input` for chat's `arguments` string.
pub(super) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str(arguments) {
        Ok(input @ Value::Object(_)) => input,
        // Kept, so that the tool fails on it visibly instead of running
        // with no arguments.
        _ => json!({"_raw": arguments}),
    }
}

/// The error message of a chat answer or chunk that is `{"error": ...}`.
pub(super) fn error_message(error: &Value) -> String {
    let message = match error {
        Value::String(message) => Some(message.as_str()),
        error => error.get("message").and_then(Value::as_str),
    };
    message.filter(|m| !m.is_empty()).unwrap_or("the provider reported an error").to_owned()
}

/// A reasoning text: `reasoning_content`, or OpenRouter's `reasoning`.
pub(super) fn reasoning(object: &Map<String, Value>) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|field| object.get(*field).and_then(Value::as_str).filter(|r| !r.is_empty()))
}

/// The Messages API `message` for a whole `chat.completion`; `model` is the
/// name the answer carries.
pub(super) fn message(chat: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    let chat: Value = serde_json::from_slice(chat)
        .map_err(|e| TranslateError::new(format!("the provider's answer is not JSON: {e}")))?;
    let Some(chat) = chat.as_object() else {
        return fail("the provider's answer is not a JSON object");
    };
    if let Some(error) = chat.get("error").filter(|e| !e.is_null()) {
        return fail(error_message(error));
    }
    let Some(choice) = chat.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
        return fail("the provider's answer has no choices");
    };
    let empty = Map::new();
    let message = choice.get("message").and_then(Value::as_object).unwrap_or(&empty);

    let mut content = Vec::new();
    if let Some(thinking) = reasoning(message) {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        // Content parts, as a few servers send them.
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    };
    let text = match message.get("refusal").and_then(Value::as_str) {
        Some(refusal) if text.is_empty() => refusal.to_owned(),
        _ => text,
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for call in calls {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(arguments)) => tool_input(arguments),
            Some(input @ Value::Object(_)) => input.clone(),
            _ => json!({}),
        };
        let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let id = id.map_or_else(|| fresh_id("toolu_"), str::to_owned);
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": arguments}));
    }

    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    let usage = chat.get("usage").map(MessagesUsage::from_chat).unwrap_or_default();
    let answer = json!({
        "id": message_id(chat.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish_reason, !calls.is_empty()),
        "stop_sequence": null,
        "usage": usage,
    });
    let body =
        serde_json::to_vec(&answer).map_err(|e| TranslateError::new(format!("cannot encode the message: {e}")))?;
    Ok(Bytes::from(body))
}
