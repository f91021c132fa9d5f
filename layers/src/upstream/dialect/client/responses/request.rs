//! The chat-completions request for a Responses request: the request-wide
//! parameters, and what the answer must echo; input items and tools have
//! their own files.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    TranslateError, echo, fail,
    input::translate_input,
    present,
    shape::Hints,
    tools::{translate_tool_choice, translate_tools},
};
use crate::upstream::dialect::client::ClientHints;

/// Fields that only make sense with OpenAI's stored state, and why.
const STATEFUL: [(&str, &str); 3] = [
    ("previous_response_id", "continues a conversation OpenAI stored"),
    ("conversation", "names a conversation OpenAI stored"),
    ("prompt", "names a prompt template OpenAI stored"),
];

/// What to do instead of relying on OpenAI's stored state.
pub(super) const SEND_IT_ALL: &str =
    "send the whole conversation in `input`, or use a provider that speaks the Responses API";

/// The chat request for a Responses request body, and the hints its answer needs.
pub(super) fn to_chat(body: &[u8], model: &str, stream: bool) -> Result<(Bytes, ClientHints), TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut request) = request else {
        return fail("the request body must be a JSON object");
    };
    for (field, why) in STATEFUL {
        if present(&request, field).is_some() {
            return fail(format!("`{field}` {why}, which this provider cannot read: {SEND_IT_ALL}"));
        }
    }
    if present(&request, "background").and_then(Value::as_bool) == Some(true) {
        return fail(format!("`background: true` needs OpenAI to store the response: {SEND_IT_ALL}"));
    }
    if present(&request, "top_logprobs").is_some() {
        return fail("`top_logprobs` is not translated for this provider: remove it");
    }

    let mut messages = Vec::new();
    match present(&request, "instructions") {
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return fail("`instructions` must be a string"),
    }
    let input = request.get_mut("input").map(Value::take);
    translate_input(input, &mut messages)?;
    if !messages.iter().any(|m| m["role"] != "system") {
        return fail("`input` has no message: send at least one user message");
    }

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), Value::Array(messages));

    // Chat providers refuse `parallel_tool_calls` and `tool_choice` without
    // tools; with none, neither changes anything.
    let (tools, custom_tools) = translate_tools(present(&request, "tools"))?;
    let choice = present(&request, "tool_choice").map(translate_tool_choice).transpose()?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(parallel) = present(&request, "parallel_tool_calls") {
            if !parallel.is_boolean() {
                return fail("`parallel_tool_calls` must be true or false");
            }
            out.insert("parallel_tool_calls".into(), parallel.clone());
        }
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
    }

    if let Some(max) = present(&request, "max_output_tokens") {
        let Some(max) = max.as_u64() else {
            return fail("`max_output_tokens` must be a non-negative integer");
        };
        out.insert("max_tokens".into(), max.into());
    }
    for field in ["temperature", "top_p"] {
        if let Some(value) = present(&request, field) {
            if !value.is_number() {
                return fail(format!("`{field}` must be a number"));
            }
            out.insert(field.into(), value.clone());
        }
    }
    if let Some(effort) = reasoning_effort(&request)? {
        out.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(format) = response_format(&request)? {
        out.insert("response_format".into(), format);
    }
    let user = present(&request, "user").or_else(|| present(&request, "safety_identifier"));
    if let Some(user) = user {
        if !user.is_string() {
            return fail("`user` / `safety_identifier` must be a string");
        }
        out.insert("user".into(), user.clone());
    }
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }

    let hints = Hints::from_request(&mut request, custom_tools);
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::new(format!("cannot encode the chat request: {e}")))?;
    Ok((Bytes::from(body), hints))
}

/// `reasoning.effort` as chat's `reasoning_effort`.
fn reasoning_effort(request: &Map<String, Value>) -> Result<Option<&'static str>, TranslateError> {
    let Some(reasoning) = present(request, "reasoning") else {
        return Ok(None);
    };
    let Value::Object(reasoning) = reasoning else {
        return fail("`reasoning` must be an object");
    };
    let Some(effort) = present(reasoning, "effort") else {
        return Ok(None);
    };
    Ok(Some(match effort.as_str() {
        Some("none") => "none",
        // Chat providers outside OpenAI know no `minimal`.
        Some("minimal" | "low") => "low",
        Some("medium") => "medium",
        Some("high") => "high",
        Some("xhigh") => "xhigh",
        Some(other) => {
            return fail(format!(
                "`reasoning.effort` `{}` is not one of none, minimal, low, medium, high, xhigh",
                echo(other)
            ));
        }
        None => return fail("`reasoning.effort` must be a string"),
    }))
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(text) = present(request, "text") else {
        return Ok(None);
    };
    let Value::Object(text) = text else {
        return fail("`text` must be an object");
    };
    let Some(format) = present(text, "format") else {
        return Ok(None);
    };
    let Value::Object(format) = format else {
        return fail("`text.format` must be an object");
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(name) = present(format, "name").filter(|n| n.is_string()) else {
                return fail("`text.format` of type json_schema needs a `name`");
            };
            let Some(schema) = present(format, "schema").filter(|s| s.is_object()) else {
                return fail("`text.format` of type json_schema needs a `schema` object");
            };
            let mut json_schema = json!({"name": name, "schema": schema});
            for field in ["strict", "description"] {
                if let Some(value) = present(format, field) {
                    json_schema[field] = value.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": json_schema})))
        }
        Some(other) => {
            fail(format!("`text.format` has type `{}`; expected text, json_object or json_schema", echo(other)))
        }
        None => fail("`text.format` has no type"),
    }
}
