//! Messages API turns as chat messages: the system prompt first, content
//! blocks as parts, tool calls and results as chat's tool messages.

use serde_json::{Value, json};

use super::{TranslateError, echo, fail};

/// Stands for a tool result whose only content (images, documents) goes in
/// the user message after the tool messages.
const ATTACHED_BELOW: &str = "(attached below)";

/// The chat messages for `system` and `messages`.
pub(super) fn translate_messages(system: Option<&Value>, messages: &[Value]) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let system = system_text(system)?;
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return fail(format!("messages[{i}] must be an object"));
        };
        let content = message.get("content").filter(|c| !c.is_null());
        match message.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(content, i, &mut out)?,
            Some("assistant") => out.extend(assistant_turn(content, i)?),
            Some(other) => {
                return fail(format!("messages[{i}] has role `{}`; expected user or assistant", echo(other)));
            }
            None => return fail(format!("messages[{i}] has no role")),
        }
    }
    Ok(out)
}

/// `system`: a string, or text blocks (their `cache_control` dropped).
fn system_text(system: Option<&Value>) -> Result<String, TranslateError> {
    match system {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => match block.get("text") {
                        Some(Value::String(text)) if text.is_empty() => {}
                        Some(Value::String(text)) => texts.push(text.as_str()),
                        _ => return fail(format!("system[{j}] is a text block without a text string")),
                    },
                    _ => return fail(format!("system[{j}] must be a text block")),
                }
            }
            Ok(texts.join("\n\n"))
        }
        Some(_) => fail("`system` must be a string or an array of text blocks"),
    }
}

/// A message's blocks: a string is one text block.
fn blocks(content: Option<&Value>, i: usize) -> Result<Vec<(usize, &Value)>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(text @ Value::String(_)) => Ok(vec![(0, text)]),
        Some(Value::Array(blocks)) => Ok(blocks.iter().enumerate().collect()),
        Some(_) => fail(format!("messages[{i}].content must be a string or an array of content blocks")),
    }
}

fn block_type<'a>(block: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    match block.get("type") {
        Some(Value::String(kind)) => Ok(kind),
        _ => fail(format!("{at} has no type")),
    }
}

fn block_text<'a>(block: &'a Value, field: &str, at: &str) -> Result<&'a str, TranslateError> {
    match block.get(field) {
        Some(Value::String(text)) => Ok(text),
        _ => fail(format!("{at} has no `{field}` string")),
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A user turn: its tool results as `tool` messages first (they must
/// directly follow the assistant's tool calls), then one user message with
/// the rest, the media of the tool results leading.
fn user_turn(content: Option<&Value>, i: usize, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    if let Some(Value::String(text)) = content {
        if !text.is_empty() {
            out.push(json!({"role": "user", "content": text}));
        }
        return Ok(());
    }
    let mut attached = Vec::new();
    let mut parts = Vec::new();
    for (j, block) in blocks(content, i)? {
        let at = format!("messages[{i}].content[{j}]");
        match block_type(block, &at)? {
            "tool_result" => out.push(tool_message(block, &at, &mut attached)?),
            // Thinking belongs to assistant turns; a stray one means nothing here.
            "thinking" | "redacted_thinking" => {}
            _ => parts.extend(media_or_text(block, &at)?),
        }
    }
    attached.extend(parts);
    match attached.as_slice() {
        [] => {}
        [only] if only["type"] == "text" => out.push(json!({"role": "user", "content": only["text"]})),
        _ => out.push(json!({"role": "user", "content": attached})),
    }
    Ok(())
}

/// A user content block as a chat part: text, image or document (`None`:
/// an empty text, which chat servers may refuse).
fn media_or_text(block: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    match block_type(block, at)? {
        "text" => {
            let text = block_text(block, "text", at)?;
            Ok((!text.is_empty()).then(|| text_part(text)))
        }
        "image" => image_part(block, at).map(Some),
        "document" => document_part(block, at),
        other => fail(format!(
            "{at} is a `{}` block, which only Anthropic providers take: send text, image, document, \
             tool_use or tool_result blocks",
            echo(other)
        )),
    }
}

/// The block's `source`, with its type.
fn source<'a>(block: &'a Value, at: &str) -> Result<(&'a Value, &'a str), TranslateError> {
    let Some(source) = block.get("source").filter(|s| s.is_object()) else {
        return fail(format!("{at} has no source"));
    };
    Ok((source, block_type(source, &format!("{at}.source"))?))
}

/// `data:<media type>;base64,<data>` for a base64 source.
fn data_url(source: &Value, at: &str) -> Result<String, TranslateError> {
    let media_type = block_text(source, "media_type", &format!("{at}.source"))?;
    let data = block_text(source, "data", &format!("{at}.source"))?;
    Ok(format!("data:{media_type};base64,{data}"))
}

fn image_part(block: &Value, at: &str) -> Result<Value, TranslateError> {
    let url = match source(block, at)? {
        (source, "base64") => data_url(source, at)?,
        (source, "url") => block_text(source, "url", &format!("{at}.source"))?.to_owned(),
        (_, "file") => return fail(format!("{at}: images by file_id live at Anthropic; send them as base64")),
        (_, other) => return fail(format!("{at}.source.type `{}` is not base64 or url", echo(other))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A document: a base64 file as a `file` part, text as a text part.
fn document_part(block: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    match source(block, at)? {
        (source, "base64") => {
            let filename = block.get("title").and_then(Value::as_str).filter(|t| !t.is_empty());
            let file = json!({"filename": filename.unwrap_or("document.pdf"), "file_data": data_url(source, at)?});
            Ok(Some(json!({"type": "file", "file": file})))
        }
        (source, "text") => {
            let text = block_text(source, "data", &format!("{at}.source"))?;
            Ok((!text.is_empty()).then(|| text_part(text)))
        }
        (source, "content") => {
            // A document made of blocks: its texts, in one part.
            let texts = match source.get("content") {
                Some(Value::String(text)) => vec![text.as_str()],
                Some(Value::Array(blocks)) => {
                    blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect()
                }
                _ => return fail(format!("{at}.source.content must be a string or an array of blocks")),
            };
            let text = texts.join("\n\n");
            Ok((!text.is_empty()).then(|| text_part(&text)))
        }
        (_, "url") => fail(format!("{at}: documents by URL cannot be sent to this provider; send them as base64")),
        (_, "file") => fail(format!("{at}: documents by file_id live at Anthropic; send them as base64")),
        (_, other) => fail(format!("{at}.source.type `{}` is not base64, text or content", echo(other))),
    }
}

/// A `tool_result` as a `tool` message: its texts joined; its images and
/// documents go to `attached`, for the user message that follows.
fn tool_message(block: &Value, at: &str, attached: &mut Vec<Value>) -> Result<Value, TranslateError> {
    let Some(Value::String(id)) = block.get("tool_use_id") else {
        return fail(format!("{at} (tool_result) has no tool_use_id"));
    };
    let mut text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let had_media = attached.len();
            for (k, inner) in blocks.iter().enumerate() {
                let at = format!("{at}.content[{k}]");
                match media_or_text(inner, &at)? {
                    Some(part) if part["type"] == "text" => {
                        texts.push(part["text"].as_str().unwrap_or_default().to_owned());
                    }
                    Some(part) => attached.push(part),
                    None => {}
                }
            }
            let text = texts.join("\n\n");
            if text.is_empty() && attached.len() > had_media { ATTACHED_BELOW.to_owned() } else { text }
        }
        Some(_) => return fail(format!("{at}.content must be a string or an array of blocks")),
    };
    if block.get("is_error") == Some(&Value::Bool(true)) {
        text = if text.is_empty() { "Error".to_owned() } else { format!("Error: {text}") };
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// An assistant turn: its text, and its `tool_use` blocks as tool calls;
/// nothing when only thinking was in it.
fn assistant_turn(content: Option<&Value>, i: usize) -> Result<Option<Value>, TranslateError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks(content, i)? {
        if let Value::String(s) = block {
            text.push_str(s);
            continue;
        }
        let at = format!("messages[{i}].content[{j}]");
        match block_type(block, &at)? {
            "text" => text.push_str(block_text(block, "text", &at)?),
            "tool_use" => calls.push(tool_call(block, &at)?),
            "thinking" | "redacted_thinking" => {}
            other => {
                return fail(format!(
                    "{at} is a `{}` block, which only Anthropic providers take: assistant turns may hold text, \
                     tool_use and thinking blocks",
                    echo(other)
                ));
            }
        }
    }
    if calls.is_empty() {
        return Ok((!text.is_empty()).then(|| json!({"role": "assistant", "content": text})));
    }
    let content = if text.is_empty() { Value::Null } else { text.into() };
    Ok(Some(json!({"role": "assistant", "content": content, "tool_calls": calls})))
}

fn tool_call(block: &Value, at: &str) -> Result<Value, TranslateError> {
    let id = block_text(block, "id", at)?;
    let name = block_text(block, "name", at)?;
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(input @ Value::Object(_)) => input.to_string(),
        Some(_) => return fail(format!("{at}.input must be a JSON object")),
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}
