//! Anthropic's Messages API (`POST /v1/messages`, `anthropic-version:
//! 2023-06-01`): OpenAI chat requests in, Messages requests out, and the
//! answers (whole, streamed, or errors) back into OpenAI's shapes.
//!
//! Requests:
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages | `system`, joined by blank lines |
//! | `user`, `assistant` messages | turns; consecutive turns of one role merged |
//! | content parts `text`, `image_url`, `file` | `text`, `image` (base64 or url source), `document` |
//! | assistant `tool_calls` | `tool_use` blocks (arguments parsed to `input`) |
//! | `tool` messages | a user turn of `tool_result` blocks (first in their turn) |
//! | `tools`, `tool_choice`, `parallel_tool_calls: false` | `tools`, `tool_choice`, `disable_parallel_tool_use` |
//! | `max_completion_tokens` / `max_tokens` | `max_tokens` (else [`DEFAULT_MAX_TOKENS`]) |
//! | `stop` | `stop_sequences` |
//! | `temperature`, `top_p` | the same, but only one (`temperature`), and neither with thinking |
//! | `reasoning_effort` | `thinking` with a token budget |
//! | `user` | `metadata.user_id` |
//!
//! Other OpenAI fields are ignored. What Anthropic cannot express (`n > 1`,
//! audio, files by id, a legacy `function` role) is a [`TranslateError`].
//!
//! Answers: text blocks become `content`, `thinking` blocks
//! `reasoning_content`, `tool_use` blocks `tool_calls`; `stop_reason` becomes
//! `finish_reason`; cache reads and writes count as prompt tokens.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::{anthropic, sse::DONE, SseEvent, StreamTranslator};
//! use serde_json::{json, Value};
//!
//! let body = br#"{"model": "anthropic/claude-sonnet-4-5", "stream": true, "messages": [
//!     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#;
//! let out = anthropic::chat_request(body, "claude-sonnet-4-5", true).unwrap();
//! let out: Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(out["model"], "claude-sonnet-4-5");
//! assert_eq!(out["system"], "Be brief.");
//! assert_eq!(out["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]));
//! assert_eq!(out["max_tokens"], anthropic::DEFAULT_MAX_TOKENS);
//!
//! // The answer's events, as the SSE framer hands them over, become OpenAI chunks.
//! let mut stream = anthropic::ChatStream::new("claude-sonnet-4-5", false, 1_700_000_000);
//! let mut sent = Vec::new();
//! for data in [
//!     json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
//!     json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello!"}}),
//!     json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
//!     json!({"type": "message_stop"}),
//! ] {
//!     sent.extend(stream.event(&SseEvent { event: None, data: data.to_string() }).unwrap());
//! }
//! sent.extend(stream.finish());
//! assert_eq!(&sent.pop().unwrap()[..], DONE);
//! let chunks: Vec<Value> = sent
//!     .iter()
//!     .map(|event| serde_json::from_slice(event.strip_prefix(b"data: ").unwrap()).unwrap())
//!     .collect();
//! assert_eq!(chunks[0]["id"], "chatcmpl-msg_1");
//! assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
//! assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello!");
//! assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
//! assert!(stream.is_complete());
//! assert_eq!(stream.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((9, 3)));
//! ```

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json, value::RawValue};

use super::{
    StreamTranslator, TranslateError,
    sse::{self, SseEvent},
};

/// Sent as the `anthropic-version` header.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client sets neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The chat endpoint, relative to the provider's base (`https://api.anthropic.com`).
pub fn chat_path() -> &'static str {
    "v1/messages"
}

fn fail<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError::new(message))
}

/// Client-chosen words are quoted back at most this many characters long.
const ECHO_LIMIT: usize = 60;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// The Anthropic Messages request for an OpenAI chat request; `model` is the
/// upstream model name.
pub fn chat_request(body: &[u8], model: &str, stream: bool) -> Result<Bytes, TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut request) = request else {
        return fail("the request body must be a JSON object");
    };

    if let Some(n) = request.get("n").filter(|n| !n.is_null()) {
        match n.as_u64() {
            Some(0 | 1) => {}
            Some(_) => {
                return fail("`n` greater than 1 is not supported for Anthropic models: send one request per choice");
            }
            None => return fail("`n` must be a positive integer"),
        }
    }

    let messages = match request.get_mut("messages").map(Value::take) {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return fail("`messages` is empty: send at least one message"),
        Some(Value::Null) | None => return fail("`messages` is required"),
        Some(_) => return fail("`messages` must be an array of messages"),
    };
    let (system, turns) = translate_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }

    let mut max_tokens = match present(&request, "max_completion_tokens").or_else(|| present(&request, "max_tokens")) {
        Some(value) => value.as_u64().ok_or_else(|| {
            TranslateError::new("`max_tokens` / `max_completion_tokens` must be a non-negative integer")
        })?,
        None => DEFAULT_MAX_TOKENS,
    };
    if let Some(effort) = present(&request, "reasoning_effort") {
        let Some(effort) = effort.as_str() else {
            return fail("`reasoning_effort` must be a string");
        };
        if let Some(budget) = thinking_budget(effort)? {
            // Anthropic counts thinking inside max_tokens and wants room
            // left for the answer: the client's limit stays the answer's.
            if max_tokens <= budget {
                max_tokens = max_tokens.saturating_add(budget);
            }
            out.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
        }
    }
    out.insert("max_tokens".into(), max_tokens.into());
    out.insert("stream".into(), stream.into());

    // Recent Claude models refuse temperature and top_p together (the
    // temperature is kept), and thinking refuses changed sampling.
    let thinking = out.contains_key("thinking");
    for field in ["temperature", "top_p"] {
        if let Some(value) = present(&request, field) {
            if !value.is_number() {
                return fail(format!("`{field}` must be a number"));
            }
            if !thinking && !out.contains_key("temperature") {
                out.insert(field.into(), value.clone());
            }
        }
    }

    match present(&request, "stop") {
        None => {}
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            if !stops.iter().all(Value::is_string) {
                return fail("`stop` must be a string or an array of strings");
            }
            if !stops.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return fail("`stop` must be a string or an array of strings"),
    }

    let tools = match request.get_mut("tools").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => {
            tools.into_iter().enumerate().map(|(i, tool)| translate_tool(i, tool)).collect::<Result<_, _>>()?
        }
        Some(_) => return fail("`tools` must be an array"),
    };
    if !tools.is_empty() {
        let mut choice = match present(&request, "tool_choice") {
            Some(choice) => translate_tool_choice(choice)?,
            None => json!({"type": "auto"}),
        };
        let serial = present(&request, "parallel_tool_calls").and_then(Value::as_bool) == Some(false);
        if serial && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = true.into();
        }
        if present(&request, "tool_choice").is_some() || serial {
            out.insert("tool_choice".into(), choice);
        }
        out.insert("tools".into(), Value::Array(tools));
    }

    if let Some(user) = present(&request, "user") {
        let Some(user) = user.as_str() else {
            return fail("`user` must be a string");
        };
        out.insert("metadata".into(), json!({ "user_id": user }));
    }

    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::new(format!("cannot encode the Anthropic request: {e}")))?;
    Ok(Bytes::from(body))
}

/// A field that is there and not `null`.
fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

/// Thinking tokens for an OpenAI `reasoning_effort` (`None`: no thinking).
fn thinking_budget(effort: &str) -> Result<Option<u64>, TranslateError> {
    Ok(Some(match effort {
        "none" => return Ok(None),
        // Anthropic's smallest budget is 1024.
        "minimal" | "low" => 1024,
        "medium" => 4096,
        "high" => 16384,
        "xhigh" => 32768,
        other => {
            return fail(format!(
                "`reasoning_effort` `{}` is not one of none, minimal, low, medium, high, xhigh",
                echo(other)
            ));
        }
    }))
}

/// The `system` texts and the alternating turns.
fn translate_messages(messages: Vec<Value>) -> Result<(Vec<String>, Vec<Value>), TranslateError> {
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

fn translate_tool(i: usize, mut tool: Value) -> Result<Value, TranslateError> {
    match tool.get("type") {
        None => {}
        Some(kind) if kind == "function" => {}
        Some(kind) => {
            return fail(format!(
                "tools[{i}] has type {}; Anthropic takes only function tools",
                echo(&kind.to_string())
            ));
        }
    }
    let Some(function) = tool.get_mut("function").filter(|f| f.is_object()) else {
        return fail(format!("tools[{i}] has no function"));
    };
    let Some(name) = function.get_mut("name").map(Value::take).filter(Value::is_string) else {
        return fail(format!("tools[{i}].function has no name"));
    };
    let mut out = Map::new();
    out.insert("name".into(), name);
    match function.get_mut("description").map(Value::take) {
        None | Some(Value::Null) => {}
        Some(description @ Value::String(_)) => {
            out.insert("description".into(), description);
        }
        Some(_) => return fail(format!("tools[{i}].function.description must be a string")),
    }
    let schema = match function.get_mut("parameters").map(Value::take) {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema,
        Some(_) => return fail(format!("tools[{i}].function.parameters must be a JSON schema object")),
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn translate_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    let named = |name: &Value| match name {
        Value::String(name) => Ok(json!({"type": "tool", "name": name})),
        _ => fail("`tool_choice.function.name` must be a string"),
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => fail(format!("`tool_choice` `{}` is not one of auto, none, required", echo(other))),
        },
        Value::Object(object) => match (object.get("type"), object.get("function").and_then(|f| f.get("name"))) {
            (Some(kind), Some(name)) if kind == "function" => named(name),
            _ => fail(
                "`tool_choice` must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}",
            ),
        },
        _ => fail("`tool_choice` must be a string or an object"),
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// Token counts as Anthropic reports them; a field that is absent or `null` is unknown.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Later counts (`message_delta`'s are cumulative) replace earlier ones.
    fn update(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    fn openai(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails { cached_tokens: cached }),
        }
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and reasons yet to come.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct AnthropicMessage {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Vec<AnthropicBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    thinking: Option<String>,
    id: Option<String>,
    name: Option<String>,
    /// Kept as the model wrote it: it becomes the `arguments` string.
    input: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: CompletionMessage,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct CompletionMessage {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
struct ToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall,
}

#[derive(Serialize)]
struct FunctionCall {
    name: String,
    arguments: String,
}

/// An OpenAI `chat.completion` for Anthropic's whole answer; `model` is the
/// name the client asked for.
pub fn chat_response(body: &[u8], model: &str, created: u64) -> Result<Bytes, TranslateError> {
    let message: AnthropicMessage = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("Anthropic's answer is not a Messages API message: {e}")))?;
    if message.kind.as_deref().is_some_and(|k| k != "message") {
        return fail(format!("Anthropic's answer has type `{}`, not `message`", message.kind.unwrap_or_default()));
    }
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block.kind.as_str() {
            "text" => text.get_or_insert_default().push_str(block.text.as_deref().unwrap_or("")),
            "thinking" => reasoning.get_or_insert_default().push_str(block.thinking.as_deref().unwrap_or("")),
            "tool_use" => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return fail("Anthropic's answer has a tool_use block without id or name");
                };
                let arguments = block.input.map_or_else(|| "{}".to_owned(), |input| input.get().to_owned());
                tool_calls.push(ToolCall { id, kind: "function", function: FunctionCall { name, arguments } });
            }
            // redacted_thinking, server tool blocks: nothing the client can use.
            _ => {}
        }
    }
    let content = match text {
        Some(text) => Some(text),
        None if !tool_calls.is_empty() => None,
        None => Some(String::new()),
    };
    let completion = Completion {
        id: format!("chatcmpl-{}", message.id),
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: CompletionMessage { role: "assistant", content, reasoning_content: reasoning, tool_calls },
            finish_reason: finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
        usage: message.usage.openai(),
    };
    let body = serde_json::to_vec(&completion)
        .map_err(|e| TranslateError::new(format!("cannot encode the completion: {e}")))?;
    Ok(Bytes::from(body))
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// One Anthropic stream event's data; only what the translation reads.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    index: Option<u64>,
    message: Option<StartMessage>,
    #[serde(borrow)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow)]
    delta: Option<EventDelta<'a>>,
    usage: Option<AnthropicUsage>,
    error: Option<StreamError>,
}

#[derive(Deserialize)]
struct StartMessage {
    id: Option<String>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// What an Anthropic content block streams into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// A client tool call: its OpenAI `tool_calls` index.
    Tool(u32),
    /// Text, thinking, and blocks the client never sees (server tools,
    /// redacted thinking): their deltas say what they are.
    Other,
}

/// Anthropic stream events in, OpenAI `chat.completion.chunk` events out.
#[derive(Debug)]
pub struct ChatStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    /// Anthropic block index -> what it streams into.
    blocks: Vec<(u64, Block)>,
    tools: u32,
    usage: AnthropicUsage,
    /// A `message_delta` arrived: the usage is final and owed if asked for.
    ended: bool,
    usage_sent: bool,
    done: bool,
}

impl ChatStream {
    /// `model` is the name the client asked for; `include_usage` adds the
    /// final usage chunk (`choices: []`) OpenAI sends for
    /// `stream_options.include_usage`.
    pub fn new(model: &str, include_usage: bool, created: u64) -> Self {
        Self {
            id: "chatcmpl-".to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            started: false,
            blocks: Vec::new(),
            tools: 0,
            usage: AnthropicUsage::default(),
            ended: false,
            usage_sent: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choices = [ChunkChoice { index: 0, delta, finish_reason }];
        self.encode(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: None,
        })
    }

    fn usage_chunk(&mut self) -> Bytes {
        self.usage_sent = true;
        self.encode(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &[],
            usage: Some(self.usage.openai()),
        })
    }

    fn encode(&self, chunk: &Chunk<'_>) -> Bytes {
        // Plain structs of strings and numbers: encoding cannot fail.
        let json = serde_json::to_vec(chunk).unwrap_or_default();
        sse::data_event(&json)
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<Bytes>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None));
        }
    }

    fn block(&self, index: Option<u64>) -> Option<Block> {
        let index = index?;
        self.blocks.iter().rev().find(|(i, _)| *i == index).map(|(_, b)| *b)
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        if event.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let data: StreamEvent<'_> = serde_json::from_str(&event.data)
            .map_err(|e| TranslateError::new(format!("Anthropic sent a stream event that is not valid JSON: {e}")))?;
        let kind = data.kind.as_deref().or(event.event.as_deref()).unwrap_or("");
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                if let Some(message) = data.message {
                    if let Some(id) = message.id {
                        self.id = format!("chatcmpl-{id}");
                    }
                    if let Some(usage) = message.usage {
                        self.usage.update(usage);
                    }
                }
                self.start(&mut out);
            }
            "content_block_start" => {
                self.start(&mut out);
                let Some(block) = data.content_block else {
                    return Ok(out);
                };
                let kind = match block.kind.as_ref() {
                    "tool_use" => {
                        let index = self.tools;
                        self.tools += 1;
                        let id = block.id.as_deref().unwrap_or_default();
                        let name = block.name.as_deref().unwrap_or_default();
                        let call = ToolCallDelta {
                            index,
                            id: Some(id),
                            kind: Some("function"),
                            function: FunctionDelta { name: Some(name), arguments: "" },
                        };
                        out.push(self.chunk(Delta { tool_calls: Some([call]), ..Delta::default() }, None));
                        Block::Tool(index)
                    }
                    "text" => {
                        if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            out.push(self.chunk(Delta { content: Some(text), ..Delta::default() }, None));
                        }
                        Block::Other
                    }
                    "thinking" => {
                        if let Some(text) = block.thinking.as_deref().filter(|t| !t.is_empty()) {
                            out.push(self.chunk(Delta { reasoning_content: Some(text), ..Delta::default() }, None));
                        }
                        Block::Other
                    }
                    _ => Block::Other,
                };
                if let Some(index) = data.index {
                    self.blocks.push((index, kind));
                }
            }
            "content_block_delta" => {
                self.start(&mut out);
                let Some(delta) = data.delta else {
                    return Ok(out);
                };
                match delta.kind.as_deref().unwrap_or("") {
                    "text_delta" => {
                        if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                            out.push(self.chunk(Delta { content: Some(text), ..Delta::default() }, None));
                        }
                    }
                    "thinking_delta" => {
                        if let Some(text) = delta.thinking.as_deref().filter(|t| !t.is_empty()) {
                            out.push(self.chunk(Delta { reasoning_content: Some(text), ..Delta::default() }, None));
                        }
                    }
                    "input_json_delta" => {
                        // Server tools (web search) stream their input too; only
                        // the client's own tool calls are passed on.
                        if let Some(Block::Tool(index)) = self.block(data.index)
                            && let Some(fragment) = delta.partial_json.as_deref().filter(|f| !f.is_empty())
                        {
                            let call = ToolCallDelta {
                                index,
                                id: None,
                                kind: None,
                                function: FunctionDelta { name: None, arguments: fragment },
                            };
                            out.push(self.chunk(Delta { tool_calls: Some([call]), ..Delta::default() }, None));
                        }
                    }
                    // signature_delta, citations_delta: nothing OpenAI can carry.
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(&mut out);
                if let Some(usage) = data.usage {
                    self.usage.update(usage);
                }
                if let Some(reason) = data.delta.and_then(|d| d.stop_reason) {
                    out.push(self.chunk(Delta::default(), Some(finish_reason(&reason))));
                }
                self.ended = true;
            }
            "message_stop" if self.include_usage && !self.usage_sent => out.push(self.usage_chunk()),
            "error" => {
                let error = data.error;
                let message = error
                    .as_ref()
                    .and_then(|e| e.message.as_deref().filter(|m| !m.is_empty()).or(e.kind.as_deref()))
                    .unwrap_or("Anthropic reported an error mid-stream");
                return Err(TranslateError::new(message));
            }
            // ping, content_block_stop, and event types yet to come.
            _ => {}
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out = Vec::new();
        if self.include_usage && self.ended && !self.usage_sent {
            out.push(self.usage_chunk());
        }
        out.push(Bytes::from_static(sse::DONE));
        out
    }

    fn is_complete(&self) -> bool {
        self.ended
    }

    fn usage(&self) -> Option<crate::usage::Usage> {
        let usage = self.usage.openai();
        self.ended.then_some(crate::usage::Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
    }
}

// ---------------------------------------------------------------------------
// Errors and models
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize)]
struct ErrorObject {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<()>,
    code: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// Anthropic's error type for a status, when the body does not say.
fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// At most this many characters of a body that is not Anthropic's JSON.
const MAX_TEXT: usize = 500;

fn clip(text: &str) -> String {
    text.trim().chars().take(MAX_TEXT).collect()
}

/// An OpenAI-shaped error for an Anthropic error answer: Anthropic's
/// `error.type` becomes both `type` and `code` (so [`crate::classify`]
/// reads it as before), the message is kept word for word.
pub fn error_body(status: u16, body: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let (message, kind, code, details) = match (error, &parsed) {
        (Some(Value::Object(error)), _) => {
            let string = |field: &str| error.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
            let kind = string("type").unwrap_or_else(|| type_for_status(status)).to_owned();
            let code = match error.get("code") {
                Some(code @ (Value::String(_) | Value::Number(_))) => code.clone(),
                _ => Value::String(kind.clone()),
            };
            let message = string("message").map_or_else(|| clip(&text), str::to_owned);
            (message, kind, code, error.get("details").filter(|d| !d.is_null()).cloned())
        }
        (Some(Value::String(message)), _) => (clip(message), type_for_status(status).to_owned(), Value::Null, None),
        (_, Some(value)) if value.get("message").is_some_and(Value::is_string) => {
            let message = value.get("message").and_then(Value::as_str).unwrap_or_default();
            (clip(message), type_for_status(status).to_owned(), Value::Null, None)
        }
        _ => {
            let trimmed = text.trim();
            // A bare "Too Many Requests" from a proxy in front still reads as a rate limit.
            let kind = if matches!(trimmed.to_ascii_lowercase().as_str(), "too many requests" | "rate limit exceeded") {
                "rate_limit_error"
            } else {
                type_for_status(status)
            };
            (clip(trimmed), kind.to_owned(), Value::Null, None)
        }
    };
    let message = if message.is_empty() { format!("Anthropic answered HTTP {status}") } else { message };
    let code = if code.is_null() { Value::String(kind.clone()) } else { code };
    let body = ErrorBody { error: ErrorObject { message, kind, param: None, code, details } };
    // Strings and JSON values only: encoding cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The model ids in Anthropic's `GET /v1/models` answer.
pub fn model_ids(body: &[u8]) -> Result<Vec<String>, TranslateError> {
    let list: ModelList = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("Anthropic's model list is not what its API documents: {e}")))?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<Value, TranslateError> {
        let out = chat_request(body.to_string().as_bytes(), "claude-test", false)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn user(content: Value) -> Value {
        json!({"messages": [{"role": "user", "content": content}]})
    }

    fn request_error(body: &[u8]) -> String {
        chat_request(body, "claude-test", false).expect_err("a translate error").0
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "`messages` is required"),
            (r#"{"messages":null}"#, "`messages` is required"),
            (r#"{"messages":[]}"#, "`messages` is empty"),
            (r#"{"messages":{}}"#, "must be an array"),
            (r#"{"messages":["hi"]}"#, "messages[0] must be an object"),
            (r#"{"messages":[{"content":"hi"}]}"#, "messages[0] has no role"),
            (r#"{"messages":[{"role":7,"content":"hi"}]}"#, "messages[0].role must be a string"),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"role":"robot","content":"hi"}]}"#,
                "messages[1] has role `robot`",
            ),
            (r#"{"messages":[{"role":"function","name":"f","content":"1"}]}"#, "legacy role `function`"),
            (r#"{"messages":[{"role":"system","content":"only a system prompt"}]}"#, "no user or assistant message"),
            (r#"{"messages":[{"role":"user","content":7}]}"#, "messages[0].content must be a string or an array"),
            (r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#, "messages[0].content[0] has no type"),
            (r#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#, "without a text string"),
            (r#"{"messages":[{"role":"user","content":[{"type":"video","video":{}}]}]}"#, "type `video`"),
            (r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#, "no audio"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
                "http(s) URL or a base64 data URL",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/svg+xml,<svg/>"}}]}]}"#,
                "base64 data URL",
            ),
            (r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#, "has no url"),
            (r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#, "file_id"),
            (
                r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":"https://x"}]},{"role":"user","content":"hi"}]}"#,
                "system messages take only text",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}]}"#,
                "messages[0].tool_calls[0].function.arguments is not valid JSON",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
                "must encode a JSON object",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#,
                "tool_calls[0] has no id",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","function":{"arguments":"{}"}}]}]}"#,
                "function has no name",
            ),
            (r#"{"messages":[{"role":"tool","content":"42"}]}"#, "messages[0] (role tool) has no tool_call_id"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#, "`n` greater than 1"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#, "non-negative integer"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":"lots"}"#, "non-negative integer"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"warm"}"#, "`temperature` must be a number"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stop":7}"#, "`stop` must be"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a",1]}"#, "`stop` must be"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"extreme"}"#,
                "`reasoning_effort` `extreme`",
            ),
            (r#"{"messages":[{"role":"user","content":"hi"}],"user":42}"#, "`user` must be a string"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"tools":{}}"#, "`tools` must be an array"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"custom","custom":{"name":"x"}}]}"#,
                "only function tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{}}]}"#,
                "tools[0].function has no name",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"sometimes"}"#,
                "`tool_choice` `sometimes`",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function"}}"#,
                "`tool_choice` must be",
            ),
        ];
        for (body, expected) in cases {
            let message = request_error(body.as_bytes());
            assert!(message.contains(expected), "{body}: {message:?} should say {expected:?}");
        }
    }

    #[test]
    fn client_words_are_quoted_bounded() {
        let role = "r".repeat(10_000);
        let message = request_error(json!({"messages": [{"role": role, "content": "hi"}]}).to_string().as_bytes());
        assert!(message.len() < 200, "{message}");
        assert!(message.contains(&format!("`{}...`", "r".repeat(ECHO_LIMIT))));
    }

    #[test]
    fn tool_choice_modes() {
        let with = |choice: Value, parallel: Option<bool>| {
            let mut body = user(json!("hi"));
            body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
            body["tool_choice"] = choice;
            if let Some(parallel) = parallel {
                body["parallel_tool_calls"] = parallel.into();
            }
            request(body).unwrap().get("tool_choice").cloned()
        };
        assert_eq!(with(json!("auto"), None), Some(json!({"type": "auto"})));
        assert_eq!(with(json!("none"), None), Some(json!({"type": "none"})));
        assert_eq!(with(json!("required"), None), Some(json!({"type": "any"})));
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "f"}}), None),
            Some(json!({"type": "tool", "name": "f"}))
        );
        assert_eq!(with(Value::Null, None), None, "Anthropic's default (auto) is left implicit");
        assert_eq!(with(Value::Null, Some(true)), None);
        assert_eq!(with(Value::Null, Some(false)), Some(json!({"type": "auto", "disable_parallel_tool_use": true})));
        assert_eq!(
            with(json!("required"), Some(false)),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(with(json!("none"), Some(false)), Some(json!({"type": "none"})));
        // No tools: no tool_choice either.
        let mut body = user(json!("hi"));
        body["tool_choice"] = json!("required");
        body["tools"] = json!([]);
        let out = request(body).unwrap();
        assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
    }

    #[test]
    fn reasoning_effort_budgets_leave_room_for_the_answer() {
        let with = |effort: &str, max_tokens: Option<u64>| {
            let mut body = user(json!("hi"));
            body["reasoning_effort"] = effort.into();
            if let Some(max) = max_tokens {
                body["max_tokens"] = max.into();
            }
            let out = request(body).unwrap();
            (out.get("thinking").map(|t| t["budget_tokens"].as_u64().unwrap()), out["max_tokens"].as_u64().unwrap())
        };
        assert_eq!(with("none", None), (None, DEFAULT_MAX_TOKENS));
        assert_eq!(with("minimal", None), (Some(1024), 4096));
        assert_eq!(with("low", None), (Some(1024), 4096));
        assert_eq!(with("medium", None), (Some(4096), 8192));
        assert_eq!(with("medium", Some(4097)), (Some(4096), 4097));
        assert_eq!(with("high", None), (Some(16384), 20480));
        assert_eq!(with("high", Some(32000)), (Some(16384), 32000));
        assert_eq!(with("xhigh", Some(100)), (Some(32768), 32868));
    }

    #[test]
    fn one_sampling_parameter_and_none_with_thinking() {
        let with = |fields: Value| {
            let mut body = user(json!("hi"));
            body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let out = request(body).unwrap();
            (out.get("temperature").cloned(), out.get("top_p").cloned())
        };
        assert_eq!(with(json!({"temperature": 0.5, "top_p": 0.9})), (Some(json!(0.5)), None));
        assert_eq!(with(json!({"top_p": 0.9})), (None, Some(json!(0.9))));
        assert_eq!(with(json!({"temperature": 0, "top_p": null})), (Some(json!(0)), None));
        assert_eq!(with(json!({"temperature": 0.5, "top_p": 0.9, "reasoning_effort": "low"})), (None, None));
        assert_eq!(with(json!({"temperature": 0.5, "reasoning_effort": "none"})), (Some(json!(0.5)), None));
    }

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

    fn response(content: Value, stop_reason: Value) -> Value {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": content,
            "stop_reason": stop_reason, "usage": {"input_tokens": 3, "output_tokens": 4}});
        serde_json::from_slice(&chat_response(body.to_string().as_bytes(), "anthropic/x", 5).unwrap()).unwrap()
    }

    #[test]
    fn stop_reasons_become_finish_reasons() {
        for (stop, finish) in [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("pause_turn"), "stop"),
            (json!("model_context_window_exceeded"), "length"),
            (json!("a_reason_from_the_future"), "stop"),
            (Value::Null, "stop"),
        ] {
            let out = response(json!([{"type": "text", "text": "x"}]), stop.clone());
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn an_empty_answer_has_empty_content() {
        let out = response(json!([]), json!("end_turn"));
        assert_eq!(out["choices"][0]["message"], json!({"role": "assistant", "content": ""}));
        assert_eq!(out["usage"], json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}));
    }

    #[test]
    fn answers_that_are_not_messages_fail() {
        for body in [
            &b"not json"[..],
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            br#"{"id":"msg_1","type":"error","content":[]}"#,
            br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","input":{}}]}"#,
        ] {
            assert!(chat_response(body, "m", 0).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    fn event(name: &str, data: Value) -> SseEvent {
        SseEvent { event: Some(name.to_owned()), data: data.to_string() }
    }

    fn text(chunks: &[Bytes]) -> Vec<String> {
        chunks.iter().map(|c| String::from_utf8(c.to_vec()).unwrap()).collect()
    }

    #[test]
    fn an_error_event_fails_the_stream_with_its_message() {
        let mut stream = ChatStream::new("m", true, 1);
        stream.event(&event("message_start", json!({"type": "message_start", "message": {"id": "msg_1"}}))).unwrap();
        let err = stream
            .event(&event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ))
            .unwrap_err();
        assert_eq!(err.0, "Overloaded");
        let err = stream.event(&event("error", json!({"type": "error", "error": {"type": "api_error"}}))).unwrap_err();
        assert_eq!(err.0, "api_error");
        let err = stream.event(&SseEvent { event: Some("message_delta".into()), data: "{oops".into() }).unwrap_err();
        assert!(err.0.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn finish_owes_the_usage_of_a_stream_cut_before_message_stop_and_ends_once() {
        let mut stream = ChatStream::new("m", true, 1);
        let mut out = Vec::new();
        // A delta before message_start still comes after a role chunk.
        out.extend(
            stream
                .event(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
                ))
                .unwrap(),
        );
        out.extend(stream.event(&SseEvent { event: Some("ping".into()), data: String::new() }).unwrap());
        out.extend(stream.event(&event("mystery", json!({"type": "mystery"}))).unwrap());
        out.extend(
            stream
                .event(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 5, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                ))
                .unwrap(),
        );
        out.extend(
            stream
                .event(&event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"input_tokens": 2, "output_tokens": 3}}),
                ))
                .unwrap(),
        );
        out.extend(stream.finish());
        assert!(stream.finish().is_empty());
        assert_eq!(
            text(&out),
            [
                r#"data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#.to_owned() + "\n\n",
                r#"data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#.to_owned() + "\n\n",
                r#"data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.to_owned() + "\n\n",
                r#"data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#.to_owned() + "\n\n",
                "data: [DONE]\n\n".to_owned(),
            ]
        );
    }

    #[test]
    fn a_stream_without_usage_asked_ends_with_done_only() {
        let mut stream = ChatStream::new("m", false, 1);
        stream.event(&event("message_start", json!({"type": "message_start", "message": {"id": "msg_1"}}))).unwrap();
        stream
            .event(&event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}})))
            .unwrap();
        assert!(stream.event(&event("message_stop", json!({"type": "message_stop"}))).unwrap().is_empty());
        assert_eq!(text(&stream.finish()), ["data: [DONE]\n\n"]);
    }

    #[test]
    fn the_event_name_stands_in_for_a_missing_type() {
        let mut stream = ChatStream::new("m", false, 1);
        let out = stream.event(&event("message_start", json!({"message": {"id": "msg_9"}}))).unwrap();
        assert!(text(&out)[0].contains(r#""id":"chatcmpl-msg_9""#));
    }

    #[test]
    fn error_bodies_keep_anthropics_fields() {
        let out = |status, body: &str| serde_json::from_slice::<Value>(&error_body(status, body.as_bytes())).unwrap();
        assert_eq!(
            out(
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Spend limit reached","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#
            ),
            json!({"error": {"message": "Spend limit reached", "type": "rate_limit_error", "param": null,
                "code": "rate_limit_error", "details": {"error_code": "enforced_spend_limit_reached"}}})
        );
        // A proxy in front answering in OpenAI's shape keeps its code.
        assert_eq!(
            out(429, r#"{"error":{"message":"quota","type":"requests","code":"insufficient_quota"}}"#)["error"]["code"],
            "insufficient_quota"
        );
        assert_eq!(out(400, r#"{"error":"bad thing"}"#)["error"]["message"], "bad thing");
        assert_eq!(out(400, r#"{"message":"top-level"}"#)["error"]["message"], "top-level");
        assert_eq!(
            out(500, r#"{"type":"error","error":{"type":"api_error"}}"#)["error"]["message"],
            r#"{"type":"error","error":{"type":"api_error"}}"#
        );
        assert_eq!(out(418, "  \n")["error"]["message"], "Anthropic answered HTTP 418");
        assert_eq!(out(418, "")["error"]["type"], "invalid_request_error");
    }
}
