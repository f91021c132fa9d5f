//! The chat-completions request for a Messages request: the request-wide
//! parameters; messages and tools have their own files.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    TranslateError, echo, fail,
    messages::translate_messages,
    tools::{translate_tool_choice, translate_tools},
};

/// The chat-completions body for a Messages request; `model` is the
/// upstream model name, `stream` whether the client asked for a stream.
pub(super) fn to_chat(body: &[u8], model: &str, stream: bool) -> Result<Bytes, TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(request) = request else {
        return fail("the request body must be a JSON object");
    };
    if present(&request, "mcp_servers").is_some_and(|servers| servers.as_array().is_none_or(|s| !s.is_empty())) {
        return fail(
            "`mcp_servers` needs Anthropic's MCP connector: only Anthropic providers run it; \
             use an Anthropic model or give the MCP tools to the client",
        );
    }

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    let messages = match present(&request, "messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return fail("`messages` is empty: send at least one message"),
        None => return fail("`messages` is required"),
        Some(_) => return fail("`messages` must be an array of messages"),
    };
    out.insert("messages".into(), Value::Array(translate_messages(present(&request, "system"), messages)?));

    if let Some(max_tokens) = present(&request, "max_tokens") {
        if max_tokens.as_u64().is_none() {
            return fail("`max_tokens` must be a non-negative integer");
        }
        out.insert("max_tokens".into(), max_tokens.clone());
    }
    for field in ["temperature", "top_p"] {
        if let Some(value) = present(&request, field) {
            if !value.is_number() {
                return fail(format!("`{field}` must be a number"));
            }
            out.insert(field.into(), value.clone());
        }
    }
    match present(&request, "stop_sequences") {
        None => {}
        Some(Value::Array(stops)) if stops.is_empty() => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        Some(_) => return fail("`stop_sequences` must be an array of strings"),
    }
    if let Some(effort) = reasoning_effort(&request)? {
        out.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(format) = response_format(&request)? {
        out.insert("response_format".into(), format);
    }

    let tools = translate_tools(present(&request, "tools"))?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        // A tool choice without tools is refused by some servers, and
        // means nothing: it goes only with them.
        if let Some(choice) = present(&request, "tool_choice") {
            let (choice, serial) = translate_tool_choice(choice)?;
            out.insert("tool_choice".into(), choice);
            if serial {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        }
    }

    if let Some(metadata) = present(&request, "metadata") {
        match metadata.get("user_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(user)) => {
                out.insert("user".into(), user.as_str().into());
            }
            Some(_) => return fail("`metadata.user_id` must be a string"),
        }
    }
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }

    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::new(format!("cannot encode the chat request: {e}")))?;
    Ok(Bytes::from(body))
}

/// A field that is there and not `null`.
pub(super) fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

/// `reasoning_effort` for `thinking` and `output_config.effort`: a budget
/// maps to the effort whose budget the outbound translator gives back
/// (1024, 4096, 16384), so a round trip keeps it.
fn reasoning_effort(request: &Map<String, Value>) -> Result<Option<&'static str>, TranslateError> {
    let effort = match present(request, "output_config").and_then(|config| config.get("effort")) {
        None | Some(Value::Null) => None,
        Some(Value::String(effort)) => Some(match effort.as_str() {
            "low" => "low",
            "medium" => "medium",
            // Chat completions' highest effort that every server takes.
            "high" | "xhigh" | "max" => "high",
            other => {
                return fail(format!(
                    "`output_config.effort` `{}` is not one of low, medium, high, xhigh, max",
                    echo(other)
                ));
            }
        }),
        Some(_) => return fail("`output_config.effort` must be a string"),
    };
    let Some(thinking) = present(request, "thinking") else {
        return Ok(effort);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("enabled") => match thinking.get("budget_tokens").and_then(Value::as_u64) {
            Some(budget) if budget < 4096 => Ok(Some("low")),
            Some(budget) if budget < 16384 => Ok(Some("medium")),
            Some(_) => Ok(Some("high")),
            None => fail("`thinking.budget_tokens` must be a non-negative integer"),
        },
        // Anthropic's default effort is high.
        Some("adaptive") => Ok(Some(effort.unwrap_or("high"))),
        _ => fail("`thinking.type` must be enabled, adaptive or disabled"),
    }
}

/// `response_format` for structured outputs: `output_config.format`, or
/// the beta's top-level `output_format`.
fn response_format(request: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let (field, format) = match present(request, "output_config").and_then(|config| config.get("format")) {
        Some(format) if !format.is_null() => ("output_config.format", format),
        _ => match present(request, "output_format") {
            Some(format) => ("output_format", format),
            None => return Ok(None),
        },
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return fail(format!("`{field}.type` must be json_schema"));
    }
    let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
        return fail(format!("`{field}.schema` must be a JSON schema object"));
    };
    Ok(Some(json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}})))
}
