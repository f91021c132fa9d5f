//! A Responses `input` (a string, or an array of items) as chat messages.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, fail, request::SEND_IT_ALL};

/// Appends the chat messages for `input` to `messages`.
pub(super) fn translate_input(input: Option<Value>, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let items = match input {
        Some(Value::String(text)) => {
            messages.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => return fail("`input` is required: a string or an array of input items"),
        Some(_) => return fail("`input` must be a string or an array of input items"),
    };
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return fail(format!("input[{i}] must be an object"));
        };
        let kind = match item.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            None if item.contains_key("role") => "message",
            _ => return fail(format!("input[{i}] has no type")),
        };
        match kind {
            "message" => messages.push(message(item, i)?),
            "function_call" => {
                let arguments = match item.get("arguments") {
                    Some(Value::String(arguments)) => arguments.clone(),
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(_) => return fail(format!("input[{i}].arguments must be a JSON string")),
                };
                push_tool_call(messages, call_id(&item, i)?, name(&item, i)?, arguments);
            }
            "custom_tool_call" => {
                let Some(Value::String(input)) = item.get("input") else {
                    return fail(format!("input[{i}] (custom_tool_call) has no `input` string"));
                };
                // The custom tool stands as a function taking `{"input": ...}`.
                let arguments = json!({"input": input}).to_string();
                push_tool_call(messages, call_id(&item, i)?, name(&item, i)?, arguments);
            }
            "function_call_output" | "custom_tool_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(text)) => Value::String(text.clone()),
                    Some(Value::Array(parts)) => Value::Array(content_parts(parts, i, "output")?),
                    None | Some(Value::Null) => Value::String(String::new()),
                    Some(_) => return fail(format!("input[{i}].output must be a string or an array of content parts")),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id(&item, i)?, "content": output}));
            }
            // Only the OpenAI organisation that made a reasoning item can read
            // it; the summary is the model's own account, not conversation.
            "reasoning" => {}
            "item_reference" => {
                return fail(format!(
                    "input[{i}] is an item_reference, which needs OpenAI's stored items: {SEND_IT_ALL}"
                ));
            }
            other if other.ends_with("_call") || other.ends_with("_call_output") || other.starts_with("mcp_") => {
                return fail(format!(
                    "input[{i}] is a `{}` item, from a tool that runs only at OpenAI; use an openai/ model or leave it out",
                    echo(other)
                ));
            }
            other => {
                return fail(format!("input[{i}] has type `{}`, which chat completions cannot carry", echo(other)));
            }
        }
    }
    Ok(())
}

/// Adds a tool call to the assistant message it continues, or starts one:
/// chat completions wants a turn's parallel calls in one message.
fn push_tool_call(messages: &mut Vec<Value>, id: String, name: String, arguments: String) {
    let call = json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(Value::Object(last)) = messages.last_mut()
        && last.get("role").is_some_and(|r| r == "assistant")
    {
        match last.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                last.insert("tool_calls".into(), json!([call]));
            }
        }
        return;
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
}

fn call_id(item: &Map<String, Value>, i: usize) -> Result<String, TranslateError> {
    match item.get("call_id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => fail(format!("input[{i}] has no call_id")),
    }
}

fn name(item: &Map<String, Value>, i: usize) -> Result<String, TranslateError> {
    match item.get("name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        _ => fail(format!("input[{i}] has no name")),
    }
}

/// A message item as a chat message.
fn message(mut item: Map<String, Value>, i: usize) -> Result<Value, TranslateError> {
    let role = match item.get("role") {
        Some(Value::String(role)) => role.as_str(),
        Some(_) => return fail(format!("input[{i}].role must be a string")),
        None => return fail(format!("input[{i}] has no role")),
    };
    let role = match role {
        "user" => "user",
        "assistant" => "assistant",
        "system" | "developer" => "system",
        other => {
            return fail(format!(
                "input[{i}] has role `{}`; expected user, assistant, system or developer",
                echo(other)
            ));
        }
    };
    let content = match item.get_mut("content").map(Value::take) {
        Some(Value::String(text)) => Value::String(text),
        Some(Value::Array(parts)) => {
            let parts = content_parts(&parts, i, "content")?;
            if role == "user" {
                Value::Array(parts)
            } else {
                // System and assistant messages carry text only, which every
                // chat provider takes as a plain string.
                Value::String(text_only(parts, i, role)?)
            }
        }
        None | Some(Value::Null) => Value::String(String::new()),
        Some(_) => return fail(format!("input[{i}].content must be a string or an array of content parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

fn text_only(parts: Vec<Value>, i: usize, role: &str) -> Result<String, TranslateError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        match part {
            Value::Object(mut part) if part.get("type").is_some_and(|t| t == "text") => {
                if let Some(Value::String(text)) = part.remove("text") {
                    texts.push(text);
                }
            }
            _ => return fail(format!("input[{i}].content[{j}]: {role} messages take only text")),
        }
    }
    Ok(texts.concat())
}

/// Responses content parts as chat content parts. `field` names where they
/// are (`content` of a message, `output` of a tool result).
fn content_parts(parts: &[Value], i: usize, field: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = || format!("input[{i}].{field}[{j}]");
        let Value::Object(part) = part else {
            return fail(format!("{} must be an object", at()));
        };
        let kind = match part.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => return fail(format!("{} has no type", at())),
        };
        out.push(match kind {
            "input_text" | "output_text" | "text" => match part.get("text") {
                Some(Value::String(text)) => json!({"type": "text", "text": text}),
                _ => return fail(format!("{} is a text part without a text string", at())),
            },
            "refusal" => match part.get("refusal") {
                Some(Value::String(text)) => json!({"type": "text", "text": text}),
                _ => return fail(format!("{} is a refusal part without refusal text", at())),
            },
            "input_image" => image(part, &at())?,
            "input_file" => file(part, &at())?,
            other => {
                return fail(format!(
                    "{} has type `{}`; expected input_text, input_image, input_file, output_text or refusal",
                    at(),
                    echo(other)
                ));
            }
        });
    }
    Ok(out)
}

fn image(part: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    match part.get("image_url") {
        Some(Value::String(url)) => {
            let mut image = json!({"url": url});
            if let Some(Value::String(detail)) = part.get("detail") {
                image["detail"] = detail.as_str().into();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        _ if part.get("file_id").is_some_and(|f| !f.is_null()) => fail(format!(
            "{at}: images by `file_id` need OpenAI's file storage; send the image as a data URL in `image_url`"
        )),
        _ => fail(format!("{at} is an input_image without an image_url")),
    }
}

fn file(part: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    match part.get("file_data") {
        Some(Value::String(data)) => {
            let mut file = json!({"file_data": data});
            if let Some(Value::String(name)) = part.get("filename") {
                file["filename"] = name.as_str().into();
            }
            Ok(json!({"type": "file", "file": file}))
        }
        _ if part.get("file_id").is_some_and(|f| !f.is_null()) => fail(format!(
            "{at}: files by `file_id` need OpenAI's file storage; send the file inline as `file_data` (a base64 data URL)"
        )),
        _ if part.get("file_url").is_some_and(|f| !f.is_null()) => fail(format!(
            "{at}: files by `file_url` are not fetched; send the file inline as `file_data` (a base64 data URL)"
        )),
        _ => fail(format!("{at} is an input_file without file_data")),
    }
}
