//! Google's Gemini API (`generativelanguage.googleapis.com`, `v1beta`):
//! OpenAI chat and embeddings requests in, Gemini's `generateContent`,
//! `streamGenerateContent?alt=sse` and `batchEmbedContents` bodies out, and
//! their answers back as OpenAI's. Pure functions over JSON; no I/O.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::gemini;
//!
//! let body = br#"{"model":"gemini/gemini-2.5-flash","messages":[
//!     {"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#;
//! let out = gemini::chat_request(body, "gemini-2.5-flash", false).unwrap();
//! let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(out["systemInstruction"]["parts"][0]["text"], "Be brief.");
//! assert_eq!(out["contents"][0]["role"], "user");
//! assert_eq!(gemini::chat_path("gemini-2.5-flash", true),
//!     "v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
//! ```
//!
//! Choices this translation makes, where the two formats do not line up:
//!
//! - `system` and `developer` messages, wherever they stand, become
//!   `systemInstruction`; `assistant` is Gemini's `model`; tool results are
//!   `functionResponse` parts in a `user` turn, named after the earlier tool
//!   call with that `tool_call_id`, with `response` the tool's output when it
//!   is a JSON object and `{"result": <text>}` otherwise. Consecutive turns of
//!   one role are merged (Gemini wants parallel tool results in one turn).
//! - JSON schemas (tool parameters, `response_format`) are cut down to the
//!   OpenAPI subset Gemini accepts: local `$ref`s are inlined (a cycle stops
//!   at a bare `object`), `allOf` is merged, `null` alternatives and `null`
//!   types become `nullable`, `const` becomes `enum`, string formats other
//!   than `enum` and `date-time` are dropped, and keywords Gemini refuses
//!   (`additionalProperties`, `default`, `examples`, `title`, `$schema`...)
//!   go.
//! - Thought signatures: a `functionCall` part's `thoughtSignature` goes to
//!   the client as `tool_calls[].extra_content.google.thought_signature` (the
//!   field Google's own OpenAI endpoint uses) and comes back from it. Gemini
//!   3 refuses a replayed function call without one, so when the client
//!   dropped it, the documented `skip_thought_signature_validator` stands in
//!   (not for the 1.x/2.x families, which do not ask for it).
//! - Tool call ids are `call_<responseId>_<n>` (`n` counting the answer's
//!   calls from 0), unique across a conversation; Gemini's own
//!   `functionCall.id` wins when it sends one.
//! - `reasoning_effort` becomes a `thinkingBudget` (minimal 512, low 1024,
//!   medium 8192, high 24576; none 0) with `includeThoughts`, and thought
//!   parts come back as `reasoning_content`.

use std::{collections::HashMap, fmt::Write as _};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    StreamTranslator, TranslateError,
    sse::{DONE, SseEvent, data_event},
};

/// Where every path below is appended.
pub const BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The header that carries the key.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

/// Thinking budgets for OpenAI's `reasoning_effort`.
const THINKING_BUDGETS: &[(&str, u64)] =
    &[("none", 0), ("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)];

/// Stands in for a thought signature the client did not send back
/// (documented by Google for replaying calls it did not sign).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Model families that predate mandatory thought signatures.
const UNSIGNED_FAMILIES: &[&str] = &["gemini-1", "gemini-2", "gemma", "learnlm"];

/// How deep a JSON schema is followed before the rest is cut to `{}`.
const MAX_SCHEMA_DEPTH: usize = 64;

/// The longest message kept from a non-JSON error body, in characters.
const MAX_ERROR_TEXT: usize = 500;

// === paths ===

/// `v1beta/models/{model}:generateContent`, or the SSE stream.
pub fn chat_path(model: &str, stream: bool) -> String {
    let model = escape_segment(model);
    if stream {
        format!("v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("v1beta/models/{model}:generateContent")
    }
}

/// `v1beta/models/{model}:batchEmbedContents`.
pub fn embeddings_path(model: &str) -> String {
    format!("v1beta/models/{}:batchEmbedContents", escape_segment(model))
}

/// The model list, as large a page as Gemini gives (the default page is
/// 50 models, fewer than Gemini has); pass the previous page's
/// [`next_page_token`] for the next one.
pub fn models_path(page_token: Option<&str>) -> String {
    match page_token {
        Some(token) => format!("v1beta/models?pageSize=1000&pageToken={}", escape_segment(token)),
        None => "v1beta/models?pageSize=1000".to_owned(),
    }
}

/// Percent-encodes everything but `[A-Za-z0-9._-]`, so a model name cannot
/// leave its path segment (`/`, `?`, `#`, `:`, `%`...).
fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// === chat request ===

/// The `GenerateContentRequest` for an OpenAI chat request (`model` is the
/// upstream model name; the body is the same with and without `stream`).
pub fn chat_request(body: &[u8], model: &str, stream: bool) -> Result<Bytes, TranslateError> {
    let _ = stream; // Gemini picks streaming by path, not by body.
    let request = parse_object(body, "the chat request")?;
    let messages = match request.get("messages") {
        Some(Value::Array(messages)) => messages,
        _ => return Err(TranslateError::new("`messages` must be an array of chat messages")),
    };
    let sign = !UNSIGNED_FAMILIES.iter().any(|family| model.starts_with(family));
    let mut convo = Conversation { sign, ..Conversation::default() };
    for (i, message) in messages.iter().enumerate() {
        convo.message(message, &format!("messages[{i}]"))?;
    }
    if convo.contents.is_empty() {
        return Err(TranslateError::new(
            "`messages` needs at least one user, assistant or tool message with content for Gemini",
        ));
    }

    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(convo.contents.into_iter().map(Content::into_json).collect()));
    if !convo.system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": convo.system }));
    }
    let declarations = match request.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => {
            tools.iter().enumerate().map(|(i, tool)| declaration(tool, i)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(TranslateError::new("`tools` must be an array")),
    };
    if !declarations.is_empty() {
        out.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        if let Some(config) = tool_config(request.get("tool_choice"))? {
            out.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
        }
    }
    let config = generation_config(&request)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// One `Content` being built: a role and its parts.
#[derive(Debug)]
struct Content {
    role: &'static str,
    parts: Vec<Value>,
}

impl Content {
    fn into_json(self) -> Value {
        json!({ "role": self.role, "parts": self.parts })
    }
}

#[derive(Debug, Default)]
struct Conversation {
    system: Vec<Value>,
    contents: Vec<Content>,
    /// Tool call id -> function name, from the assistant turns seen so far.
    tool_names: HashMap<String, String>,
    /// Whether a replayed function call needs a thought signature.
    sign: bool,
}

impl Conversation {
    fn message(&mut self, message: &Value, at: &str) -> Result<(), TranslateError> {
        let message = message.as_object().ok_or_else(|| err(format!("{at} must be an object")))?;
        let role = message.get("role").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.role is missing")))?;
        let content = message.get("content");
        match role {
            "system" | "developer" => {
                for part in content_parts(content, at)? {
                    if part.get("text").is_none() {
                        return Err(err(format!("{at}: a {role} message can only hold text for Gemini")));
                    }
                    self.system.push(part);
                }
            }
            "user" => {
                let parts = content_parts(content, at)?;
                self.push("user", parts);
            }
            "assistant" => {
                let parts = self.assistant_parts(message, at)?;
                self.push("model", parts);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(format!("{at}.tool_call_id is missing")))?;
                let name = self
                    .tool_names
                    .get(id)
                    .map(String::as_str)
                    .or_else(|| message.get("name").and_then(Value::as_str))
                    .ok_or_else(|| {
                        err(format!("{at}.tool_call_id `{id}` matches no tool call of an earlier assistant message"))
                    })?
                    .to_owned();
                let part = function_response(&name, content, at)?;
                self.push("user", vec![part]);
            }
            "function" => {
                // The legacy form of a tool result, named by `name`.
                let name = message
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(format!("{at}.name is missing")))?
                    .to_owned();
                let part = function_response(&name, content, at)?;
                self.push("user", vec![part]);
            }
            other => return Err(err(format!("{at}.role `{other}` is not a chat role"))),
        }
        Ok(())
    }

    fn assistant_parts(&mut self, message: &Map<String, Value>, at: &str) -> Result<Vec<Value>, TranslateError> {
        let mut parts = content_parts(message.get("content"), at)?;
        let mut calls = Vec::new();
        match message.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tool_calls)) => {
                for (j, call) in tool_calls.iter().enumerate() {
                    let at = format!("{at}.tool_calls[{j}]");
                    let function = call.get("function").ok_or_else(|| err(format!("{at}.function is missing")))?;
                    let (name, part) = function_call(function, call.get("extra_content"), &at)?;
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        self.tool_names.insert(id.to_owned(), name);
                    }
                    calls.push(part);
                }
            }
            Some(_) => return Err(err(format!("{at}.tool_calls must be an array"))),
        }
        if let Some(function) = message.get("function_call").filter(|f| !f.is_null()) {
            calls.push(function_call(function, None, &format!("{at}.function_call"))?.1);
        }
        // Gemini signs the first call of a step; put the stand-in there.
        if self.sign
            && !calls.iter().any(|c| c.get("thoughtSignature").is_some())
            && let Some(Value::Object(first)) = calls.first_mut()
        {
            first.insert("thoughtSignature".into(), SKIP_SIGNATURE.into());
        }
        parts.extend(calls);
        Ok(parts)
    }

    /// Appends parts in `role`, to the last content when it has that role.
    fn push(&mut self, role: &'static str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        match self.contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => self.contents.push(Content { role, parts }),
        }
    }
}

/// `(name, {"functionCall": {name, args}})` from an OpenAI `function` object.
fn function_call(function: &Value, extra: Option<&Value>, at: &str) -> Result<(String, Value), TranslateError> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("{at}.name is missing")))?;
    let args = match function.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).map_err(|e| err(format!("{at}.arguments is not valid JSON: {e}")))?
        }
        Some(other) => other.clone(),
    };
    if !args.is_object() {
        return Err(err(format!("{at}.arguments must be a JSON object for Gemini")));
    }
    let mut part = Map::new();
    part.insert("functionCall".into(), json!({ "name": name, "args": args }));
    let signature = extra.and_then(|e| e.pointer("/google/thought_signature")).and_then(Value::as_str);
    if let Some(signature) = signature {
        part.insert("thoughtSignature".into(), signature.into());
    }
    Ok((name.to_owned(), Value::Object(part)))
}

/// A tool's output as a `functionResponse` part.
fn function_response(name: &str, content: Option<&Value>, at: &str) -> Result<Value, TranslateError> {
    let text = match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (k, part) in parts.iter().enumerate() {
                match part.get("text").and_then(Value::as_str) {
                    Some(t) => text.push_str(t),
                    None => return Err(err(format!("{at}.content[{k}]: a tool result can only hold text for Gemini"))),
                }
            }
            text
        }
        Some(_) => return Err(err(format!("{at}.content must be a string or an array of text parts"))),
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
}

/// A message's `content` (a string, an array of parts, or null) as Gemini parts.
fn content_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({ "text": text })]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (k, part) in parts.iter().enumerate() {
                out.extend(content_part(part, &format!("{at}.content[{k}]"))?);
            }
            Ok(out)
        }
        Some(_) => Err(err(format!("{at}.content must be a string, an array of parts or null"))),
    }
}

fn content_part(part: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    let kind = part.get("type").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.type is missing")))?;
    let text = |field: &str| -> Result<Option<Value>, TranslateError> {
        let text = part.get(field).and_then(Value::as_str).ok_or_else(|| err(format!("{at}.{field} is missing")))?;
        Ok((!text.is_empty()).then(|| json!({ "text": text })))
    };
    match kind {
        "text" => text("text"),
        "refusal" => text("refusal"),
        "image_url" => {
            let url = match part.get("image_url") {
                Some(Value::String(url)) => url.as_str(),
                Some(image) => image.get("url").and_then(Value::as_str).unwrap_or_default(),
                None => "",
            };
            if url.is_empty() {
                return Err(err(format!("{at}.image_url.url is missing")));
            }
            media_part(url, "image/jpeg", at).map(Some)
        }
        "input_audio" => {
            let audio = part.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => {
                    Ok(Some(json!({ "inlineData": { "mimeType": format!("audio/{format}"), "data": data } })))
                }
                _ => Err(err(format!("{at}.input_audio needs `data` and `format`"))),
            }
        }
        "file" => {
            let file = part.get("file");
            let data = file.and_then(|f| f.get("file_data")).and_then(Value::as_str);
            let id = file.and_then(|f| f.get("file_id")).and_then(Value::as_str);
            match (data, id) {
                (Some(data), _) if data.starts_with("data:") => media_part(data, "application/pdf", at).map(Some),
                (Some(data), _) => {
                    // Bare base64, as some clients send it: the name says what it is.
                    let name = file.and_then(|f| f.get("filename")).and_then(Value::as_str).unwrap_or_default();
                    let mime = guess_mime(name).unwrap_or("application/pdf");
                    Ok(Some(json!({ "inlineData": { "mimeType": mime, "data": data } })))
                }
                (None, Some(id)) if is_remote(id) => media_part(id, "application/pdf", at).map(Some),
                _ => Err(err(format!("{at}.file needs `file_data` (base64 or a data: URL) or a URL as `file_id`"))),
            }
        }
        other => Err(err(format!("{at}.type `{other}` is not a content part Gemini takes"))),
    }
}

fn is_remote(url: &str) -> bool {
    ["https://", "http://", "gs://"].iter().any(|scheme| url.starts_with(scheme))
}

/// A data URL as `inlineData`, a remote URL as `fileData`.
fn media_part(url: &str, default_mime: &str, at: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) =
            rest.split_once(',').ok_or_else(|| err(format!("{at}: a data: URL needs a `,` before its data")))?;
        let mut fields = header.split(';');
        let mime = fields.next().unwrap_or_default().trim();
        if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
            return Err(err(format!("{at}: only base64 data: URLs can be sent to Gemini")));
        }
        let mime = if mime.is_empty() { default_mime } else { mime };
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    if is_remote(url) {
        let mime = guess_mime(url).unwrap_or(default_mime);
        return Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }));
    }
    Err(err(format!("{at}: a media URL must be a base64 data: URL or an http(s) or gs:// URL")))
}

/// The MIME type a URL's or file name's extension says.
fn guess_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, ext) = name.rsplit_once('.')?;
    let mime = match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "aac" => "audio/aac",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    };
    Some(mime)
}

/// One OpenAI tool as a `FunctionDeclaration`.
fn declaration(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    let at = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => return Err(err(format!("{at}.type `{other}` is not supported for Gemini (only `function`)"))),
    }
    let function = tool.get("function").ok_or_else(|| err(format!("{at}.function is missing")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("{at}.function.name is missing")))?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out.insert("description".into(), description.into());
    }
    if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
        let cleaned = clean_schema(parameters);
        // Gemini refuses an object schema without properties: a function
        // without arguments simply has no `parameters`.
        let empty_object = cleaned.get("type").and_then(Value::as_str) == Some("object")
            && cleaned.get("properties").is_none()
            && cleaned.get("anyOf").is_none();
        if !empty_object && cleaned.as_object().is_some_and(|o| !o.is_empty()) {
            out.insert("parameters".into(), cleaned);
        }
    }
    Ok(Value::Object(out))
}

/// `tool_choice` as a `functionCallingConfig`.
fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "none" => json!({ "mode": "NONE" }),
            "required" => json!({ "mode": "ANY" }),
            other => return Err(err(format!("tool_choice `{other}` is not one of auto, none, required"))),
        },
        Some(object) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
            None => {
                return Err(err(
                    "tool_choice must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}",
                ));
            }
        },
    };
    Ok(Some(config))
}

fn generation_config(request: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")] {
        if let Some(value) = number(request, from)? {
            config.insert(to.into(), value);
        }
    }
    let max_tokens = match number(request, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => number(request, "max_tokens")?,
    };
    if let Some(n) = max_tokens {
        config.insert("maxOutputTokens".into(), n);
    }
    if let Some(n) = number(request, "n")? {
        config.insert("candidateCount".into(), n);
    }
    if let Some(seed) = number(request, "seed")? {
        config.insert("seed".into(), seed);
    }
    match request.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                config.insert("stopSequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return Err(err("`stop` must be a string or an array of strings")),
    }
    match request.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = format.pointer("/json_schema/schema").filter(|s| !s.is_null()) {
                    config.insert("responseSchema".into(), clean_schema(schema));
                }
            }
            _ => return Err(err("response_format.type must be text, json_object or json_schema")),
        },
    }
    match request.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(effort) => {
            let effort = effort.as_str().unwrap_or_default();
            let budget = THINKING_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .map(|(_, budget)| *budget)
                .ok_or_else(|| err("reasoning_effort must be one of none, minimal, low, medium, high"))?;
            let thinking = if budget == 0 {
                json!({ "thinkingBudget": 0 })
            } else {
                json!({ "thinkingBudget": budget, "includeThoughts": true })
            };
            config.insert("thinkingConfig".into(), thinking);
        }
    }
    Ok(config)
}

/// A numeric field, if present and not null.
fn number(request: &Map<String, Value>, key: &str) -> Result<Option<Value>, TranslateError> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n @ Value::Number(_)) => Ok(Some(n.clone())),
        Some(_) => Err(err(format!("`{key}` must be a number"))),
    }
}

// === JSON schemas ===

/// A JSON schema cut down to what Gemini's `Schema` accepts.
fn clean_schema(schema: &Value) -> Value {
    Cleaner { root: schema, refs: Vec::new() }.clean(schema, 0)
}

struct Cleaner<'a> {
    root: &'a Value,
    /// The `$ref`s being expanded, to stop cycles.
    refs: Vec<&'a str>,
}

impl<'a> Cleaner<'a> {
    fn clean(&mut self, schema: &'a Value, depth: usize) -> Value {
        let Some(object) = schema.as_object() else {
            return Value::Object(Map::new()); // `true` and other shorthands: anything
        };
        if depth > MAX_SCHEMA_DEPTH {
            return Value::Object(Map::new());
        }
        let mut out = Map::new();

        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            if self.refs.contains(&reference) {
                out.insert("type".into(), "object".into()); // a cycle: stop here
            } else if let Some(target) = reference.strip_prefix('#').and_then(|pointer| self.root.pointer(pointer)) {
                self.refs.push(reference);
                merge(&mut out, self.clean(target, depth + 1));
                self.refs.pop();
            }
        }
        for sub in object.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            let cleaned = self.clean(sub, depth + 1);
            merge(&mut out, cleaned);
        }
        for key in ["anyOf", "oneOf"] {
            let Some(variants) = object.get(key).and_then(Value::as_array) else { continue };
            let mut kept = Vec::new();
            for variant in variants {
                if is_null_schema(variant) {
                    out.insert("nullable".into(), true.into());
                } else {
                    kept.push(self.clean(variant, depth + 1));
                }
            }
            match kept.len() {
                0 => {}
                1 => merge(&mut out, kept.remove(0)),
                _ => {
                    out.insert("anyOf".into(), Value::Array(kept));
                }
            }
        }

        match object.get("type") {
            Some(Value::String(kind)) if kind == "null" => {
                out.insert("nullable".into(), true.into());
            }
            Some(Value::String(kind)) => {
                out.insert("type".into(), kind.as_str().into());
            }
            Some(Value::Array(kinds)) => {
                let mut kinds: Vec<&str> = kinds.iter().filter_map(Value::as_str).collect();
                if kinds.contains(&"null") {
                    out.insert("nullable".into(), true.into());
                    kinds.retain(|k| *k != "null");
                }
                match kinds[..] {
                    [] => {}
                    [kind] => {
                        out.insert("type".into(), kind.into());
                    }
                    _ => {
                        let variants = kinds.iter().map(|k| json!({ "type": k })).collect();
                        out.insert("anyOf".into(), Value::Array(variants));
                    }
                }
            }
            _ => {}
        }

        let values = match (object.get("enum"), object.get("const")) {
            (Some(Value::Array(values)), _) => Some(values.clone()),
            (_, Some(value)) => Some(vec![value.clone()]),
            _ => None,
        };
        if let Some(mut values) = values {
            if values.iter().any(Value::is_null) {
                out.insert("nullable".into(), true.into());
                values.retain(|v| !v.is_null());
            }
            // Gemini takes enums of strings only; other values stay unconstrained.
            if !values.is_empty() && values.iter().all(Value::is_string) {
                out.insert("enum".into(), Value::Array(values));
                out.entry("type").or_insert_with(|| "string".into());
            }
        }

        if let Some(format) = object.get("format").and_then(Value::as_str) {
            let supported = match out.get("type").and_then(Value::as_str) {
                Some("string") => matches!(format, "enum" | "date-time"),
                Some("integer") => matches!(format, "int32" | "int64"),
                Some("number") => matches!(format, "float" | "double"),
                _ => false,
            };
            if supported {
                out.insert("format".into(), format.into());
            }
        }

        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            let mut cleaned = match out.remove("properties") {
                Some(Value::Object(merged)) => merged,
                _ => Map::new(),
            };
            for (name, property) in properties {
                cleaned.insert(name.clone(), self.clean(property, depth + 1));
            }
            out.insert("properties".into(), Value::Object(cleaned));
        }
        if let Some(required) = object.get("required").and_then(Value::as_array) {
            let mut all = match out.remove("required") {
                Some(Value::Array(merged)) => merged,
                _ => Vec::new(),
            };
            for name in required.iter().filter(|n| n.is_string()) {
                if !all.contains(name) {
                    all.push(name.clone());
                }
            }
            out.insert("required".into(), Value::Array(all));
        }
        match object.get("items") {
            Some(items @ Value::Object(_)) => {
                let cleaned = self.clean(items, depth + 1);
                out.insert("items".into(), cleaned);
            }
            Some(Value::Array(tuple)) if !tuple.is_empty() => {
                let cleaned = self.clean(&tuple[0], depth + 1);
                out.insert("items".into(), cleaned);
            }
            _ => {}
        }

        if let Some(description) = object.get("description").and_then(Value::as_str) {
            out.insert("description".into(), description.into());
        }
        if object.get("nullable") == Some(&Value::Bool(true)) {
            out.insert("nullable".into(), true.into());
        }
        for key in
            ["minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"]
        {
            if let Some(n @ Value::Number(_)) = object.get(key) {
                out.insert(key.into(), n.clone());
            }
        }
        if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
            out.insert("pattern".into(), pattern.into());
        }
        if let Some(Value::Array(order)) = object.get("propertyOrdering") {
            out.insert("propertyOrdering".into(), Value::Array(order.clone()));
        }

        // `required` may only name properties that exist.
        let names: Option<Vec<String>> =
            out.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect());
        if let Some(Value::Array(required)) = out.get_mut("required") {
            match &names {
                Some(names) => required.retain(|r| r.as_str().is_some_and(|r| names.iter().any(|n| n == r))),
                None => required.clear(),
            }
            if required.is_empty() {
                out.remove("required");
            }
        }
        if out.get("properties").and_then(Value::as_object).is_some_and(Map::is_empty) {
            out.remove("properties");
        }
        Value::Object(out)
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// Merges a cleaned schema into `out`: properties and `required` add up,
/// other keywords are replaced.
fn merge(out: &mut Map<String, Value>, from: Value) {
    let Value::Object(from) = from else { return };
    for (key, value) in from {
        match (key.as_str(), out.get_mut(&key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => mine.extend(theirs),
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, _, value) => {
                out.insert(key, value);
            }
        }
    }
}

// === chat response ===

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

fn completion_id(response_id: Option<&str>, created: u64) -> String {
    match response_id {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-gemini-{created}"),
    }
}

fn parts_of(candidate: &Value) -> &[Value] {
    candidate.pointer("/content/parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool).unwrap_or(false)
}

/// Ids for the tool calls of one answer.
#[derive(Debug)]
struct CallIds {
    prefix: String,
    next: usize,
}

impl CallIds {
    fn new(response_id: Option<&str>) -> Self {
        let prefix = match response_id {
            Some(id) => format!("call_{}_", escape_segment(id)),
            None => "call_".to_owned(),
        };
        Self { prefix, next: 0 }
    }

    fn next(&mut self) -> String {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

/// An OpenAI tool call (with an `index` of 0, for the stream to set) from
/// a `functionCall` and the part that holds it.
fn tool_call(call: &Value, part: &Value, ids: &mut CallIds) -> Value {
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
fn finish_reason(reason: Option<&Value>, called: bool) -> Option<&'static str> {
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
fn usage(metadata: Option<&Value>) -> Value {
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

// === chat stream ===

/// Gemini's `alt=sse` events to OpenAI `chat.completion.chunk` events.
#[derive(Debug)]
pub struct ChatStream {
    model: String,
    include_usage: bool,
    created: u64,
    /// The completion id, fixed by the first event.
    id: Option<String>,
    ids: Option<CallIds>,
    choices: Vec<ChoiceState>,
    /// The last `usageMetadata` seen.
    usage: Option<Value>,
    done: bool,
}

#[derive(Debug)]
struct ChoiceState {
    index: u64,
    started: bool,
    calls: usize,
    finished: bool,
}

impl ChatStream {
    pub fn new(model: &str, include_usage: bool, created: u64) -> Self {
        Self {
            model: model.to_owned(),
            include_usage,
            created,
            id: None,
            ids: None,
            choices: Vec::new(),
            usage: None,
            done: false,
        }
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id.as_deref().unwrap_or_default(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One choice's delta as a chunk; the choice's first delta says its role.
    fn delta(&mut self, index: u64, mut delta: Map<String, Value>, reason: Option<&str>) -> Bytes {
        let state = self.choice(index);
        if !state.started {
            state.started = true;
            delta.insert("role".into(), "assistant".into());
        }
        let chunk = self.chunk(json!([{
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": reason,
        }]));
        data_event(&to_vec(&chunk))
    }

    fn choice(&mut self, index: u64) -> &mut ChoiceState {
        let at = match self.choices.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.choices.push(ChoiceState { index, started: false, calls: 0, finished: false });
                self.choices.len() - 1
            }
        };
        &mut self.choices[at]
    }

    fn response(&mut self, response: &Value, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        if let Some(error) = response.get("error") {
            return Err(err(error_message(error)));
        }
        let response_id = response.get("responseId").and_then(Value::as_str).filter(|id| !id.is_empty());
        if self.id.is_none() {
            self.id = Some(completion_id(response_id, self.created));
            self.ids = Some(CallIds::new(response_id));
        }
        if let Some(metadata) = response.get("usageMetadata").filter(|m| m.is_object()) {
            self.usage = Some(metadata.clone());
        }
        let candidates = response.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            if self.choice(index).finished {
                continue;
            }
            // Consecutive text of one kind goes out as one delta.
            let mut pending: Option<(&'static str, String)> = None;
            for part in parts_of(candidate) {
                if let Some(call) = part.get("functionCall") {
                    if let Some((field, text)) = pending.take() {
                        out.push(self.text_delta(index, field, text));
                    }
                    let calls = self.choice(index).calls;
                    self.choice(index).calls += 1;
                    let ids = self.ids.get_or_insert_with(|| CallIds::new(None));
                    let mut tool_call = tool_call(call, part, ids);
                    if let Value::Object(fields) = &mut tool_call {
                        fields.insert("index".into(), calls.into());
                    }
                    let mut delta = Map::new();
                    delta.insert("tool_calls".into(), json!([tool_call]));
                    out.push(self.delta(index, delta, None));
                } else if let Some(text) = part.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    let field = if is_thought(part) { "reasoning_content" } else { "content" };
                    match &mut pending {
                        Some((kind, buffer)) if *kind == field => buffer.push_str(text),
                        _ => {
                            if let Some((field, text)) = pending.take() {
                                out.push(self.text_delta(index, field, text));
                            }
                            pending = Some((field, text.to_owned()));
                        }
                    }
                }
            }
            if let Some((field, text)) = pending.take() {
                out.push(self.text_delta(index, field, text));
            }
            let called = self.choice(index).calls > 0;
            if let Some(reason) = finish_reason(candidate.get("finishReason"), called) {
                self.choice(index).finished = true;
                out.push(self.delta(index, Map::new(), Some(reason)));
            }
        }
        if candidates.is_empty()
            && response.pointer("/promptFeedback/blockReason").is_some()
            && !self.choice(0).finished
        {
            self.choice(0).finished = true;
            let mut delta = Map::new();
            delta.insert("content".into(), Value::Null);
            out.push(self.delta(0, delta, Some("content_filter")));
        }
        Ok(())
    }

    fn text_delta(&mut self, index: u64, field: &str, text: String) -> Bytes {
        let mut delta = Map::new();
        delta.insert(field.into(), text.into());
        self.delta(index, delta, None)
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        let data = event.data.trim();
        if self.done || data.is_empty() || data == "[DONE]" {
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| err(format!("Gemini sent a stream event that is not JSON ({e})")))?;
        let mut out = Vec::new();
        match &value {
            // Without `alt=sse` Gemini streams one JSON array; take it too.
            Value::Array(responses) => {
                for response in responses {
                    self.response(response, &mut out)?;
                }
            }
            response => self.response(response, &mut out)?,
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out = Vec::new();
        if self.include_usage {
            if self.id.is_none() {
                self.id = Some(completion_id(None, self.created));
            }
            let mut chunk = self.chunk(json!([]));
            if let Value::Object(fields) = &mut chunk {
                fields.insert("usage".into(), usage(self.usage.as_ref()));
            }
            out.push(data_event(&to_vec(&chunk)));
        }
        out.push(Bytes::from_static(DONE));
        out
    }
}

// === embeddings ===

/// A `batchEmbedContents` request for an OpenAI embeddings request.
pub fn embeddings_request(body: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    let request = parse_object(body, "the embeddings request")?;
    const TEXT_ONLY: &str = "Gemini embeds text: `input` must be a string or an array of strings (not token ids)";
    let texts: Vec<&str> = match request.get("input") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(|item| item.as_str().ok_or_else(|| err(TEXT_ONLY))).collect::<Result<_, _>>()?
        }
        Some(Value::Array(_)) => return Err(err("`input` must not be empty")),
        None | Some(Value::Null) => return Err(err("`input` is missing")),
        Some(_) => return Err(err(TEXT_ONLY)),
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Some(n.clone()),
        Some(_) => return Err(err("`dimensions` must be a positive integer")),
    };
    let name = format!("models/{model}");
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|text| {
            let mut request = json!({ "model": name, "content": { "parts": [{ "text": text }] } });
            if let (Some(n), Value::Object(fields)) = (&dimensions, &mut request) {
                fields.insert("outputDimensionality".into(), Value::Number(n.clone()));
            }
            request
        })
        .collect();
    Ok(to_bytes(&json!({ "requests": requests })))
}

/// Whether an OpenAI embeddings request asks for base64 vectors (the
/// OpenAI SDKs do by default); if so, answer with
/// [`embeddings_response_encoded`]`(.., true)`.
pub fn embeddings_want_base64(request: &[u8]) -> bool {
    serde_json::from_slice::<Value>(request)
        .ok()
        .is_some_and(|r| r.get("encoding_format").and_then(Value::as_str) == Some("base64"))
}

/// An OpenAI embeddings answer (float vectors) from a `batchEmbedContents` answer.
pub fn embeddings_response(body: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    embeddings_response_encoded(body, model, false)
}

/// [`embeddings_response`], with vectors as base64 of little-endian `f32`s
/// when `base64` is set (OpenAI's `encoding_format: "base64"`).
pub fn embeddings_response_encoded(body: &[u8], model: &str, base64: bool) -> Result<Bytes, TranslateError> {
    let response = parse_object(body, "Gemini's embeddings answer")?;
    if let Some(error) = response.get("error") {
        return Err(err(format!("Gemini answered with an error: {}", error_message(error))));
    }
    let embeddings = response
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| err("Gemini's embeddings answer has no `embeddings` array"))?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (i, embedding) in embeddings.iter().enumerate() {
        let values = embedding
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("Gemini's embedding {i} has no `values` array")))?;
        let vector = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for value in values {
                let value = value.as_f64().ok_or_else(|| err(format!("Gemini's embedding {i} holds a non-number")))?;
                bytes.extend_from_slice(&(value as f32).to_le_bytes());
            }
            Value::String(encode_base64(&bytes))
        } else {
            if !values.iter().all(Value::is_number) {
                return Err(err(format!("Gemini's embedding {i} holds a non-number")));
            }
            Value::Array(values.clone())
        };
        data.push(json!({ "object": "embedding", "index": i, "embedding": vector }));
    }
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 },
    });
    Ok(to_bytes(&out))
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[(n >> shift & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

// === errors and models ===

/// An OpenAI-shaped error from Google's, keeping `status` and `details`
/// (`ErrorInfo.reason`, `QuotaFailure` violations, `RetryInfo.retryDelay`)
/// for [`crate::classify`].
pub fn error_body(status: u16, body: &[u8]) -> Bytes {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    // Gemini's error is an object, or (from a non-SSE stream) an array of one.
    let error = parsed
        .as_ref()
        .and_then(|v| match v {
            Value::Array(items) => items.first(),
            other => Some(other),
        })
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object());
    let out = match error {
        Some(error) => {
            let google_status = error.get("status").and_then(Value::as_str);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
                .map_or_else(|| format!("Gemini answered HTTP {status}"), str::to_owned);
            json!({ "error": {
                "message": message,
                "type": google_status.map_or_else(|| "upstream_error".to_owned(), str::to_ascii_lowercase),
                "param": null,
                "code": google_status.map_or_else(|| error.get("code").cloned().unwrap_or(Value::Null), Value::from),
                "status": google_status,
                "details": error.get("details").cloned().unwrap_or(Value::Null),
            }})
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("Gemini answered HTTP {status}")
            } else {
                text.chars().take(MAX_ERROR_TEXT).collect()
            };
            json!({ "error": {
                "message": message,
                "type": "upstream_error",
                "param": null,
                "code": null,
                "status": null,
                "details": null,
            }})
        }
    };
    to_bytes(&out)
}

/// `error.message` of a Google error object, or what there is of it.
fn error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => format!("Gemini error {error}").chars().take(MAX_ERROR_TEXT).collect(),
    }
}

/// The model ids (without `models/`) of a `models.list` answer, keeping
/// only models that chat or embed when Gemini says what each supports.
pub fn model_ids(body: &[u8]) -> Result<Vec<String>, TranslateError> {
    let response = parse_object(body, "Gemini's model list")?;
    let models = match response.get("models") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(models)) => models,
        Some(_) => return Err(err("Gemini's model list has a `models` that is not an array")),
    };
    let mut ids = Vec::with_capacity(models.len());
    for model in models {
        let Some(name) = model.get("name").and_then(Value::as_str) else { continue };
        let usable = match model.get("supportedGenerationMethods").and_then(Value::as_array) {
            Some(methods) => methods.iter().any(|m| matches!(m.as_str(), Some("generateContent" | "embedContent"))),
            None => true,
        };
        let id = name.strip_prefix("models/").unwrap_or(name);
        if usable && !id.is_empty() {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The `nextPageToken` of a `models.list` answer, when there are more pages.
pub fn next_page_token(body: &[u8]) -> Option<String> {
    let response = serde_json::from_slice::<Value>(body).ok()?;
    let token = response.get("nextPageToken")?.as_str()?;
    (!token.is_empty()).then(|| token.to_owned())
}

// === helpers ===

fn err(message: impl Into<String>) -> TranslateError {
    TranslateError::new(message)
}

fn parse_object(body: &[u8], what: &str) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(err(format!("{what} must be a JSON object"))),
        Err(e) => Err(err(format!("{what} is not valid JSON: {e}"))),
    }
}

fn to_vec(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(to_vec(value))
}
