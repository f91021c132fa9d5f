//! The `response` object and its output items, shared by whole answers and
//! streams, and the hints that carry the request's echoes to them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::upstream::dialect::client::ClientHints;

/// What OpenAI says for a field the request left out.
type Fallback = fn() -> Value;

/// The request fields a `response` object repeats, with what OpenAI says
/// when the request left them out.
const ECHOED: [(&str, Fallback); 10] = [
    ("instructions", || Value::Null),
    ("max_output_tokens", || Value::Null),
    ("metadata", || json!({})),
    ("parallel_tool_calls", || Value::Bool(true)),
    ("reasoning", || json!({"effort": null, "summary": null})),
    ("temperature", || Value::Null),
    ("text", || json!({"format": {"type": "text"}})),
    ("tool_choice", || Value::String("auto".into())),
    ("tools", || json!([])),
    ("top_p", || Value::Null),
];

/// Reads and writes the [`ClientHints`] of a Responses request:
/// `{"echo": {<the fields in ECHOED>}, "custom_tools": [<names>]}`.
pub(super) struct Hints;

impl Hints {
    /// Takes the echoed fields out of the request (translated already).
    pub(super) fn from_request(request: &mut Map<String, Value>, custom_tools: Vec<String>) -> ClientHints {
        let mut echo = Map::new();
        for (field, default) in ECHOED {
            let value = request.get_mut(field).map(Value::take).filter(|v| !v.is_null()).unwrap_or_else(default);
            echo.insert(field.into(), value);
        }
        ClientHints::new(json!({"echo": echo, "custom_tools": custom_tools}))
    }

    /// Whether the chat function `name` stands for a custom tool.
    pub(super) fn is_custom(hints: &ClientHints, name: &str) -> bool {
        hints
            .get()
            .and_then(|h| h.get("custom_tools"))
            .and_then(Value::as_array)
            .is_some_and(|names| names.iter().any(|n| n == name))
    }
}

/// Where a response stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    /// Stopped early, for this `incomplete_details.reason`.
    Incomplete(&'static str),
    /// The provider's answer broke off.
    Failed(String),
}

impl Status {
    /// The status a chat `finish_reason` gives.
    pub(super) fn from_finish_reason(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => Self::Incomplete("max_output_tokens"),
            Some("content_filter") => Self::Incomplete("content_filter"),
            _ => Self::Completed,
        }
    }

    /// The `status` of an output item cut by this response's end.
    pub(super) fn item_status(&self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete(_) | Self::Failed(_) => "incomplete",
        }
    }

    /// The stream event that ends a response in this status.
    pub(super) fn final_event(&self) -> &'static str {
        match self {
            Self::InProgress => "response.in_progress",
            Self::Completed => "response.completed",
            Self::Incomplete(_) => "response.incomplete",
            Self::Failed(_) => "response.failed",
        }
    }
}

/// A response's identity: its id and creation time.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub(super) id: String,
    pub(super) created_at: u64,
}

impl Identity {
    /// A new response's: a random id, created now.
    pub(super) fn new() -> Self {
        let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { id: random_id("resp"), created_at }
    }
}

/// `<prefix>_` and 32 random hex digits, as OpenAI's ids look.
pub(super) fn random_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", fastrand::u128(..))
}

/// The whole `response` object.
pub(super) fn response(
    identity: &Identity,
    model: &str,
    status: &Status,
    output: Vec<Value>,
    usage: Option<Value>,
    hints: &ClientHints,
) -> Value {
    let (status_name, incomplete, error) = match status {
        Status::InProgress => ("in_progress", Value::Null, Value::Null),
        Status::Completed => ("completed", Value::Null, Value::Null),
        Status::Incomplete(reason) => ("incomplete", json!({"reason": reason}), Value::Null),
        Status::Failed(message) => ("failed", Value::Null, json!({"code": "server_error", "message": message})),
    };
    let mut out = Map::new();
    out.insert("id".into(), identity.id.as_str().into());
    out.insert("object".into(), "response".into());
    out.insert("created_at".into(), identity.created_at.into());
    out.insert("status".into(), status_name.into());
    out.insert("error".into(), error);
    out.insert("incomplete_details".into(), incomplete);
    out.insert("model".into(), model.into());
    out.insert("output".into(), Value::Array(output));
    out.insert("previous_response_id".into(), Value::Null);
    out.insert("usage".into(), usage.unwrap_or(Value::Null));
    let echo = hints.get().and_then(|h| h.get("echo")).and_then(Value::as_object);
    for (field, default) in ECHOED {
        let value = echo.and_then(|e| e.get(field)).cloned().unwrap_or_else(default);
        out.insert(field.into(), value);
    }
    Value::Object(out)
}

/// A chat `usage` object, as the translation reads it.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(super) struct ChatUsage {
    #[serde(default)]
    pub(super) prompt_tokens: u64,
    #[serde(default)]
    pub(super) completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    /// The Responses `usage` object.
    pub(super) fn responses(&self) -> Value {
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        // Required by the Responses API's usage schema (the official SDKs'
        // models have no default for it): 0 when the provider says nothing.
        let written = self.prompt_tokens_details.and_then(|d| d.cache_write_tokens).unwrap_or(0);
        let reasoning = self.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0);
        let total = self.total_tokens.unwrap_or(self.prompt_tokens.saturating_add(self.completion_tokens));
        json!({
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": total,
        })
    }

    /// The proxy's own count.
    pub(super) fn usage(&self) -> crate::usage::Usage {
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        crate::usage::Usage::new(self.prompt_tokens, self.completion_tokens).with_cached(cached)
    }
}

/// A `reasoning` item, its text as one summary part.
pub(super) fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]})
}

/// An output text part.
pub(super) fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// An assistant `message` item with one text part.
pub(super) fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": [text_part(text)]})
}

/// A chat tool call as a `function_call` item, or as a `custom_tool_call`
/// when `name` stands for a custom tool.
pub(super) fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, custom: bool) -> Value {
    if custom {
        return json!({"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name,
            "input": custom_input(arguments), "status": "completed"});
    }
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments,
        "status": "completed"})
}

/// A custom tool's input, from the `{"input": ...}` arguments of the
/// function standing for it (or the arguments as they are, if the model
/// wrote something else).
pub(super) fn custom_input(arguments: &str) -> String {
    #[derive(Deserialize)]
    struct Input {
        input: String,
    }
    match serde_json::from_str::<Input>(arguments) {
        Ok(Input { input }) => input,
        Err(_) => arguments.to_owned(),
    }
}

/// The id prefix of a call item.
pub(super) fn call_prefix(custom: bool) -> &'static str {
    if custom { "ctc" } else { "fc" }
}
