//! OpenAI messages as Messages API turns: system texts apart, roles
//! alternating, content parts as blocks, tool calls and results.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, fail};

/// The `system` texts and the alternating turns.
pub(super) fn translate_messages(messages: Vec<Value>) -> Result<(Vec<String>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        let Value::Object(mut message) = message else {
            return fail(format!("messages[{i}] must be an object"));
        };
        let content = message.get_mut("content").map(Value::take).filter(|c| !c.is_null());
        let role = match message.remove("role") {
            Some(Value::String(role)) => role,
            Some(_) => return fail(format!("messages[{i}].role must be a string")),
            None => return fail(format!("messages[{i}] has no role")),
        };
        let (role, blocks) = match role.as_str() {
            "system" | "developer" => {
                let text = plain_text(content, i)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", user_content(content, i)?),
            "assistant" => ("assistant", assistant_content(&mut message, content, i)?),
            "tool" => ("user", vec![tool_result(&message, content, i)?]),
            "function" => {
                return fail(format!(
                    "messages[{i}] has the legacy role `function`: send tool results as `tool` messages with a tool_call_id"
                ));
            }
            other => {
                return fail(format!(
                    "messages[{i}] has role `{}`; expected system, developer, user, assistant or tool",
                    echo(other)
                ));
            }
        };
        // Anthropic refuses empty turns and wants the roles to alternate.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, last_blocks)) if *last == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return fail("the request has no user or assistant message with content: Anthropic needs at least one");
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results must open their user turn; the sort is stable.
            if role == "user" {
                blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({"role": role, "content": blocks})
        })
        .collect();
    Ok((system, turns))
}

/// The text of a message whose content may only be text (string or text parts).
fn plain_text(content: Option<Value>, i: usize) -> Result<String, TranslateError> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match part_type(&part, i, j)? {
                    "text" => texts.push(part_text(part, i, j)?),
                    other => {
                        return fail(format!(
                            "messages[{i}].content[{j}] has type `{}`; system messages take only text",
                            echo(other)
                        ));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        Some(_) => fail(format!("messages[{i}].content must be a string or an array of content parts")),
    }
}

fn part_type(part: &Value, i: usize, j: usize) -> Result<&str, TranslateError> {
    match part.get("type") {
        Some(Value::String(kind)) => Ok(kind),
        _ => fail(format!("messages[{i}].content[{j}] has no type")),
    }
}

fn part_text(mut part: Value, i: usize, j: usize) -> Result<String, TranslateError> {
    match part.get_mut("text").map(Value::take) {
        Some(Value::String(text)) => Ok(text),
        _ => fail(format!("messages[{i}].content[{j}] is a text part without a text string")),
    }
}

fn text_block(text: String) -> Value {
    json!({"type": "text", "text": text})
}

/// User content (also a tool result's): text, images, documents.
fn user_content(content: Option<Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    let parts = match content {
        None => return Ok(Vec::new()),
        // Anthropic refuses empty text blocks.
        Some(Value::String(text)) if text.is_empty() => return Ok(Vec::new()),
        Some(Value::String(text)) => return Ok(vec![text_block(text)]),
        Some(Value::Array(parts)) => parts,
        Some(_) => return fail(format!("messages[{i}].content must be a string or an array of content parts")),
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let block = match part_type(&part, i, j)? {
            "text" => {
                let text = part_text(part, i, j)?;
                if text.is_empty() {
                    continue;
                }
                text_block(text)
            }
            "image_url" => image_block(&part, i, j)?,
            "file" => document_block(&part, i, j)?,
            "input_audio" => return fail(format!("messages[{i}].content[{j}]: Anthropic models take no audio input")),
            other => {
                return fail(format!(
                    "messages[{i}].content[{j}] has type `{}`, which Anthropic cannot take (text, image_url, file)",
                    echo(other)
                ));
            }
        };
        blocks.push(block);
    }
    Ok(blocks)
}

/// `image_url` (a string or `{url}`): a data URL becomes a base64 source,
/// an http(s) URL a url source.
fn image_block(part: &Value, i: usize, j: usize) -> Result<Value, TranslateError> {
    let url = match part.get("image_url") {
        Some(Value::String(url)) => url,
        Some(image) => match image.get("url") {
            Some(Value::String(url)) => url,
            _ => return fail(format!("messages[{i}].content[{j}].image_url has no url")),
        },
        None => return fail(format!("messages[{i}].content[{j}] is an image_url part without image_url")),
    };
    if let Some((media_type, data)) = data_url(url) {
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    fail(format!(
        "messages[{i}].content[{j}].image_url.url must be an http(s) URL or a base64 data URL (data:image/png;base64,...)"
    ))
}

/// `file` with inline `file_data` (a base64 data URL, e.g. a PDF).
fn document_block(part: &Value, i: usize, j: usize) -> Result<Value, TranslateError> {
    let file = part.get("file");
    match file.and_then(|f| f.get("file_data")) {
        Some(Value::String(data)) => match data_url(data) {
            Some((media_type, data)) => {
                Ok(json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}))
            }
            None => fail(format!(
                "messages[{i}].content[{j}].file.file_data must be a base64 data URL (data:application/pdf;base64,...)"
            )),
        },
        _ if file.and_then(|f| f.get("file_id")).is_some() => {
            fail(format!("messages[{i}].content[{j}]: files by file_id cannot be sent to Anthropic; inline file_data"))
        }
        _ => fail(format!("messages[{i}].content[{j}] is a file part without file.file_data")),
    }
}

/// `data:<media type>[;params];base64,<data>` -> (media type, data).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:").or_else(|| url.strip_prefix("DATA:"))?;
    let (header, data) = rest.split_once(',')?;
    let mut params = header.split(';');
    let media_type = params.next().filter(|m| !m.is_empty())?;
    params.any(|p| p.eq_ignore_ascii_case("base64")).then_some((media_type, data))
}

/// Assistant text (and refusals), then its tool calls as `tool_use` blocks.
fn assistant_content(
    message: &mut Map<String, Value>,
    content: Option<Value>,
    i: usize,
) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    match content {
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => blocks.push(text_block(text)),
        Some(Value::Array(parts)) => {
            for (j, mut part) in parts.into_iter().enumerate() {
                let text = match part_type(&part, i, j)? {
                    "text" => part_text(part, i, j)?,
                    "refusal" => match part.get_mut("refusal").map(Value::take) {
                        Some(Value::String(text)) => text,
                        _ => return fail(format!("messages[{i}].content[{j}] is a refusal part without refusal text")),
                    },
                    other => {
                        return fail(format!(
                            "messages[{i}].content[{j}] has type `{}`; assistant messages take only text",
                            echo(other)
                        ));
                    }
                };
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
        }
        Some(_) => return fail(format!("messages[{i}].content must be a string or an array of content parts")),
    }
    match message.get_mut("tool_calls").map(Value::take) {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.into_iter().enumerate() {
                blocks.push(tool_use(call, i, j)?);
            }
        }
        Some(_) => return fail(format!("messages[{i}].tool_calls must be an array")),
    }
    Ok(blocks)
}

fn tool_use(mut call: Value, i: usize, j: usize) -> Result<Value, TranslateError> {
    let at = format!("messages[{i}].tool_calls[{j}]");
    let Some(id) = call.get_mut("id").map(Value::take).filter(Value::is_string) else {
        return fail(format!("{at} has no id"));
    };
    if call.get("type").is_some_and(|t| t != "function") {
        return fail(format!("{at} is not a function call; Anthropic takes only function tool calls"));
    }
    let Some(function) = call.get_mut("function") else {
        return fail(format!("{at} has no function"));
    };
    let Some(name) = function.get_mut("name").map(Value::take).filter(Value::is_string) else {
        return fail(format!("{at}.function has no name"));
    };
    let input = match function.get_mut("arguments").map(Value::take) {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(arguments)) if arguments.trim().is_empty() => json!({}),
        Some(Value::String(arguments)) => serde_json::from_str(&arguments)
            .map_err(|e| TranslateError::new(format!("{at}.function.arguments is not valid JSON: {e}")))?,
        // Some clients send the arguments already parsed.
        Some(object @ Value::Object(_)) => object,
        Some(_) => return fail(format!("{at}.function.arguments must be a JSON string")),
    };
    if !input.is_object() {
        return fail(format!("{at}.function.arguments must encode a JSON object"));
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn tool_result(message: &Map<String, Value>, content: Option<Value>, i: usize) -> Result<Value, TranslateError> {
    let Some(Value::String(id)) = message.get("tool_call_id") else {
        return fail(format!("messages[{i}] (role tool) has no tool_call_id"));
    };
    let mut block = json!({"type": "tool_result", "tool_use_id": id});
    match content {
        // An empty result is sent without content (Anthropic refuses empty text).
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => block["content"] = text.into(),
        content @ Some(Value::Array(_)) => {
            let blocks = user_content(content, i)?;
            if !blocks.is_empty() {
                block["content"] = Value::Array(blocks);
            }
        }
        Some(_) => return fail(format!("messages[{i}].content must be a string or an array of content parts")),
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::upstream::dialect::anthropic::test_support::request;

    #[test]
    fn tool_results_open_their_user_turn() {
        let out = request(json!({"messages": [
            {"role": "user", "content": "run it"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "user", "content": "and hurry"},
            {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "done"}, {"type": "image_url", "image_url": "https://x/y.png"}]},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "run it"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "text", "text": "done"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ]},
                    {"type": "text", "text": "and hurry"}
                ]}
            ])
        );
    }

    #[test]
    fn assistant_refusals_and_empty_turns() {
        let out = request(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": ""}]},
            {"role": "user", "content": "ok"},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "I can't."}]},
                {"role": "user", "content": [{"type": "text", "text": "ok"}]}
            ])
        );
    }

    #[test]
    fn data_urls() {
        assert_eq!(data_url("data:image/png;base64,AAAA"), Some(("image/png", "AAAA")));
        assert_eq!(data_url("data:image/webp;name=x.webp;base64,QQ=="), Some(("image/webp", "QQ==")));
        assert_eq!(data_url("data:;base64,AAAA"), None);
        assert_eq!(data_url("data:text/plain,hello"), None);
        assert_eq!(data_url("https://example.com/a.png"), None);
    }
}
