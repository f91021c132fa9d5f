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
//!   go. A `json_schema` answer format also gets `propertyOrdering` in the
//!   order the client wrote its properties (Gemini otherwise answers them
//!   in alphabetical order); a schema expands to at most 10,000 nodes.
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
/// How many schema nodes one schema may expand to (`$ref`s shared many
/// times over could otherwise grow it exponentially); the rest is `{}`.
const MAX_SCHEMA_NODES: usize = 10_000;

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
    let config = generation_config(&request, body)?;
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
                    let (name, part) = function_call(function, call.get("extra_content"), &format!("{at}.function"))?;
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

fn generation_config(request: &Map<String, Value>, body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
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
                    // The body again, this time keeping the order of its keys.
                    let ordered = serde_json::from_slice::<Ordered>(body).ok();
                    let ordered_schema =
                        ordered.as_ref().and_then(|o| o.pointer("/response_format/json_schema/schema"));
                    config.insert("responseSchema".into(), clean_schema_ordered(schema, ordered_schema));
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
    Cleaner { root: schema, ordered_root: None, refs: Vec::new(), budget: MAX_SCHEMA_NODES }.clean(schema, None, 0)
}

/// [`clean_schema`], adding `propertyOrdering` from `ordered` (the same
/// schema with its keys in the order written): Gemini otherwise writes a
/// structured answer's properties in alphabetical order.
fn clean_schema_ordered(schema: &Value, ordered: Option<&Ordered>) -> Value {
    let ordered_root = ordered.filter(|o| matches!(o, Ordered::Object(_)));
    let mut cleaner = Cleaner { root: schema, ordered_root, refs: Vec::new(), budget: MAX_SCHEMA_NODES };
    cleaner.clean(schema, ordered_root, 0)
}

struct Cleaner<'a> {
    root: &'a Value,
    /// The schema with its keys in order, when `propertyOrdering` is wanted.
    ordered_root: Option<&'a Ordered>,
    /// The `$ref`s being expanded, to stop cycles.
    refs: Vec<&'a str>,
    /// Nodes left to expand.
    budget: usize,
}

impl<'a> Cleaner<'a> {
    fn clean(&mut self, schema: &'a Value, ordered: Option<&'a Ordered>, depth: usize) -> Value {
        let Some(object) = schema.as_object() else {
            return Value::Object(Map::new()); // `true` and other shorthands: anything
        };
        if depth > MAX_SCHEMA_DEPTH || self.budget == 0 {
            return Value::Object(Map::new());
        }
        self.budget -= 1;
        let mut out = Map::new();

        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            if self.refs.contains(&reference) {
                out.insert("type".into(), "object".into()); // a cycle: stop here
            } else if let Some(pointer) = reference.strip_prefix('#')
                && let Some(target) = self.root.pointer(pointer)
            {
                let ordered_target = self.ordered_root.and_then(|root| root.pointer(pointer));
                self.refs.push(reference);
                merge(&mut out, self.clean(target, ordered_target, depth + 1));
                self.refs.pop();
            }
        }
        for (i, sub) in object.get("allOf").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cleaned = self.clean(sub, child(ordered, "allOf").and_then(|o| o.at(i)), depth + 1);
            merge(&mut out, cleaned);
        }
        for key in ["anyOf", "oneOf"] {
            let Some(variants) = object.get(key).and_then(Value::as_array) else { continue };
            let mut kept = Vec::new();
            for (i, variant) in variants.iter().enumerate() {
                if is_null_schema(variant) {
                    out.insert("nullable".into(), true.into());
                } else {
                    kept.push(self.clean(variant, child(ordered, key).and_then(|o| o.at(i)), depth + 1));
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
            let ordered_properties = child(ordered, "properties");
            for (name, property) in properties {
                cleaned.insert(name.clone(), self.clean(property, child(ordered_properties, name), depth + 1));
            }
            out.insert("properties".into(), Value::Object(cleaned));
            if let Some(Ordered::Object(entries)) = ordered_properties {
                let mut order = match out.remove("propertyOrdering") {
                    Some(Value::Array(merged)) => merged,
                    _ => Vec::new(),
                };
                for (name, _) in entries {
                    let name = Value::String(name.clone());
                    if !order.contains(&name) {
                        order.push(name);
                    }
                }
                out.insert("propertyOrdering".into(), Value::Array(order));
            }
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
                let cleaned = self.clean(items, child(ordered, "items"), depth + 1);
                out.insert("items".into(), cleaned);
            }
            Some(Value::Array(tuple)) if !tuple.is_empty() => {
                let cleaned = self.clean(&tuple[0], child(ordered, "items").and_then(|o| o.at(0)), depth + 1);
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
        // `propertyOrdering` must name each property once, and only those.
        if let Some(Value::Array(order)) = out.get("propertyOrdering") {
            let exact = match &names {
                Some(names) => {
                    order.len() == names.len()
                        && names.len() > 1
                        && names.iter().all(|n| order.iter().any(|o| o.as_str() == Some(n.as_str())))
                }
                None => false,
            };
            if !exact {
                out.remove("propertyOrdering");
            }
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
            ("required" | "propertyOrdering", Some(Value::Array(mine)), Value::Array(theirs)) => {
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

/// A JSON document with the keys of its objects in the order they were
/// written (`serde_json::Map` sorts them): where `propertyOrdering` comes from.
#[derive(Debug)]
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    Scalar,
}

impl Ordered {
    fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            // With duplicate keys serde_json keeps the last; so does this.
            Ordered::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, i: usize) -> Option<&Ordered> {
        match self {
            Ordered::Array(items) => items.get(i),
            _ => None,
        }
    }

    /// A JSON pointer (`/a/0/b~1c`), as `serde_json::Value::pointer` reads it.
    fn pointer(&self, pointer: &str) -> Option<&Ordered> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            node = match node {
                Ordered::Array(_) => node.at(token.parse().ok()?)?,
                _ => node.get(&token)?,
            };
        }
        Some(node)
    }
}

fn child<'o>(node: Option<&'o Ordered>, key: &str) -> Option<&'o Ordered> {
    node.and_then(|n| n.get(key))
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Ordered>()? {
            entries.push(entry);
        }
        Ok(Ordered::Object(entries))
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
    /// `model` is the name the answer carries; `include_usage` adds the
    /// final usage chunk (`choices: []`) OpenAI sends for
    /// `stream_options.include_usage`.
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

    fn is_complete(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.finished)
    }

    fn usage(&self) -> Option<crate::usage::Usage> {
        let usage = usage(Some(self.usage.as_ref()?));
        Some(crate::usage::Usage {
            prompt_tokens: usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value, model: &str) -> Result<Value, TranslateError> {
        let out = chat_request(body.to_string().as_bytes(), model, false)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn user(text: &str) -> Value {
        json!({ "role": "user", "content": text })
    }

    fn schema(value: Value) -> Value {
        clean_schema(&value)
    }

    #[test]
    fn model_names_are_escaped_into_one_segment() {
        assert_eq!(escape_segment("gemini-2.5-flash_x.y"), "gemini-2.5-flash_x.y");
        assert_eq!(escape_segment("a/b c:d%é"), "a%2Fb%20c%3Ad%25%C3%A9");
        assert_eq!(chat_path("tunedModels/x", false), "v1beta/models/tunedModels%2Fx:generateContent");
    }

    #[test]
    fn schemas_keep_only_what_gemini_takes() {
        assert_eq!(
            schema(json!({ "type": ["string", "integer", "null"], "description": "id" })),
            json!({ "anyOf": [{ "type": "string" }, { "type": "integer" }], "nullable": true, "description": "id" })
        );
        assert_eq!(
            schema(json!({ "oneOf": [{ "type": "string" }, { "type": "number", "exclusiveMinimum": 0 }] })),
            json!({ "anyOf": [{ "type": "string" }, { "type": "number" }] })
        );
        // Enums of other than strings cannot be said to Gemini: the type stays.
        assert_eq!(schema(json!({ "type": "integer", "enum": [1, 2] })), json!({ "type": "integer" }));
        assert_eq!(schema(json!({ "const": 3 })), json!({}));
        assert_eq!(schema(json!({ "const": "x" })), json!({ "type": "string", "enum": ["x"] }));
        assert_eq!(schema(json!(true)), json!({}));
        assert_eq!(schema(json!({ "type": "null" })), json!({ "nullable": true }));
        assert_eq!(
            schema(
                json!({ "type": "object", "properties": { "a": { "type": "object", "properties": {} } }, "required": ["b"] })
            ),
            json!({ "type": "object", "properties": { "a": { "type": "object" } } })
        );
        assert_eq!(
            schema(json!({ "type": "array", "items": [{ "type": "string" }, { "type": "number" }] })),
            json!({ "type": "array", "items": { "type": "string" } })
        );
        assert_eq!(
            schema(json!({ "type": "number", "format": "float", "minimum": 0.5 })),
            json!({ "type": "number", "format": "float", "minimum": 0.5 })
        );
        // An unresolvable `$ref` leaves what else the schema says.
        assert_eq!(schema(json!({ "$ref": "#/nowhere", "description": "d" })), json!({ "description": "d" }));
        assert_eq!(schema(json!({ "$ref": "https://example.com/s.json" })), json!({}));
    }

    #[test]
    fn structured_answers_keep_the_order_the_schema_was_written_in() {
        let body = r##"{"messages":[{"role":"user","content":"x"}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"z":{},"a":{}}}}}],
            "response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{
            "type":"object",
            "properties":{
                "zeta":{"type":"string"},
                "alpha":{"$ref":"#/$defs/pair"},
                "mid":{"type":"object","allOf":[{"properties":{"y":{"type":"string"},"b":{"type":"string"}}}],
                       "properties":{"a":{"type":"string"}}},
                "own":{"type":"object","properties":{"p":{},"q":{}},"propertyOrdering":["q","p"]},
                "bad":{"type":"object","properties":{"p":{},"q":{}},"propertyOrdering":["q"]}
            },
            "$defs":{"pair":{"type":"object","properties":{"second":{"type":"number"},"first":{"type":"number"}}}}}}}}"##;
        let out: Value = serde_json::from_slice(&chat_request(body.as_bytes(), "m", false).unwrap()).unwrap();
        let schema = &out["generationConfig"]["responseSchema"];
        assert_eq!(schema["propertyOrdering"], json!(["zeta", "alpha", "mid", "own", "bad"]));
        assert_eq!(schema["properties"]["alpha"]["propertyOrdering"], json!(["second", "first"]));
        assert_eq!(schema["properties"]["mid"]["propertyOrdering"], json!(["y", "b", "a"]));
        assert_eq!(schema["properties"]["own"]["propertyOrdering"], json!(["q", "p"]));
        assert_eq!(schema["properties"]["bad"].get("propertyOrdering"), None);
        // Tool parameters are left in Gemini's order.
        let parameters = &out["tools"][0]["functionDeclarations"][0]["parameters"];
        assert_eq!(parameters.get("propertyOrdering"), None);
    }

    #[test]
    fn ordered_documents_follow_pointers() {
        let doc: Ordered =
            serde_json::from_str(r#"{"a/b":[{"x":1},{"~y":{"b":2,"a":3}}],"a":{"a":1},"a":{"c":2}}"#).unwrap();
        let keys = |o: Option<&Ordered>| match o {
            Some(Ordered::Object(entries)) => entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        assert_eq!(keys(doc.pointer("/a~1b/1/~0y")), ["b", "a"]);
        assert_eq!(keys(doc.pointer("/a")), ["c"]);
        assert_eq!(keys(doc.pointer("")), ["a/b", "a", "a"]);
        assert!(doc.pointer("/a~1b/9").is_none());
        assert!(doc.pointer("a").is_none());
    }

    #[test]
    fn recursive_and_exploding_schemas_stay_bounded() {
        // A schema that refers to itself stops at a bare object.
        // (The root is entered once more through its first `$ref`.)
        let out = schema(json!({ "type": "object", "properties": { "next": { "$ref": "#" } } }));
        let inner = json!({ "type": "object", "properties": { "next": { "type": "object" } } });
        assert_eq!(out, json!({ "type": "object", "properties": { "next": inner } }));

        // Each level refers twice to the one below: 2^40 nodes if expanded.
        let mut defs = Map::new();
        defs.insert("d0".into(), json!({ "type": "string" }));
        for level in 1..40 {
            let below = format!("#/$defs/d{}", level - 1);
            defs.insert(
                format!("d{level}"),
                json!({ "type": "object", "properties": { "a": { "$ref": below }, "b": { "$ref": below } } }),
            );
        }
        let root = json!({ "$ref": "#/$defs/d39", "$defs": defs });
        let out = schema(root);
        assert_eq!(out["type"], "object");
        assert!(out.to_string().len() < 2_000_000, "the expansion is capped");

        // Deep nesting is cut rather than followed to the end.
        let mut deep = json!({ "type": "string" });
        for _ in 0..100 {
            deep = json!({ "type": "array", "items": deep });
        }
        let out = schema(deep);
        assert_eq!(out["type"], "array");
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let tools = |tools: Value| json!({ "messages": [user("hi")], "tools": tools });
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "must be a JSON object"),
            (json!({}), "`messages` must be an array"),
            (json!({ "messages": [] }), "at least one user"),
            (json!({ "messages": [{ "role": "system", "content": "x" }] }), "at least one user"),
            (json!({ "messages": ["hi"] }), "messages[0] must be an object"),
            (json!({ "messages": [{ "content": "x" }] }), "messages[0].role is missing"),
            (json!({ "messages": [{ "role": "wizard", "content": "x" }] }), "`wizard` is not a chat role"),
            (json!({ "messages": [{ "role": "user", "content": 5 }] }), "messages[0].content must be"),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "video", "video": {} }] }] }),
                "messages[0].content[0].type `video`",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "data:image/png,abc" } }] }] }),
                "only base64 data: URLs",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "ftp://x/y.png" } }] }] }),
                "a media URL must be",
            ),
            (
                json!({ "messages": [{ "role": "system", "content": [{ "type": "image_url", "image_url": { "url": "https://x/y.png" } }] }, user("hi")] }),
                "a system message can only hold text",
            ),
            (
                json!({ "messages": [user("hi"), { "role": "tool", "tool_call_id": "call_9", "content": "x" }] }),
                "`call_9` matches no tool call",
            ),
            (
                json!({ "messages": [user("hi"), { "role": "assistant", "tool_calls": [{ "id": "c", "type": "function", "function": { "name": "f", "arguments": "{oops" } }] }] }),
                "messages[1].tool_calls[0].function.arguments is not valid JSON",
            ),
            (
                json!({ "messages": [user("hi"), { "role": "assistant", "tool_calls": [{ "id": "c", "type": "function", "function": { "name": "f", "arguments": "[1]" } }] }] }),
                "must be a JSON object for Gemini",
            ),
            (tools(json!([{ "type": "web_search" }])), "tools[0].type `web_search` is not supported"),
            (tools(json!([{ "type": "function", "function": {} }])), "tools[0].function.name is missing"),
            (tools(json!({})), "`tools` must be an array"),
            (
                json!({ "messages": [user("hi")], "tools": [{ "type": "function", "function": { "name": "f" } }], "tool_choice": "sometimes" }),
                "tool_choice `sometimes`",
            ),
            (json!({ "messages": [user("hi")], "reasoning_effort": "extreme" }), "reasoning_effort must be one of"),
            (json!({ "messages": [user("hi")], "temperature": "hot" }), "`temperature` must be a number"),
            (json!({ "messages": [user("hi")], "stop": [1] }), "`stop` must be a string or an array"),
            (json!({ "messages": [user("hi")], "response_format": { "type": "yaml" } }), "response_format.type"),
        ];
        for (body, expected) in cases {
            let error = request(body.clone(), "gemini-2.5-flash").expect_err(&body.to_string());
            assert!(error.0.contains(expected), "{body}: {error} (wanted {expected:?})");
        }
        let error = chat_request(b"{not json", "m", false).unwrap_err();
        assert!(error.0.starts_with("the chat request is not valid JSON"), "{error}");
    }

    #[test]
    fn tool_results_find_their_function_and_legacy_forms_work() {
        let out = request(
            json!({ "messages": [
                user("hi"),
                { "role": "assistant", "function_call": { "name": "lookup", "arguments": "{\"q\":1}" } },
                { "role": "function", "name": "lookup", "content": "{\"found\":true}" },
                { "role": "tool", "tool_call_id": "unknown", "name": "named", "content": null },
            ] }),
            "gemini-2.0-flash",
        )
        .unwrap();
        assert_eq!(
            out["contents"],
            json!([
                { "role": "user", "parts": [{ "text": "hi" }] },
                { "role": "model", "parts": [{ "functionCall": { "name": "lookup", "args": { "q": 1 } } }] },
                { "role": "user", "parts": [
                    { "functionResponse": { "name": "lookup", "response": { "found": true } } },
                    { "functionResponse": { "name": "named", "response": { "result": "" } } },
                ] },
            ])
        );
    }

    #[test]
    fn thought_signatures_are_replayed_or_stood_in_for() {
        let body = |extra: Option<Value>| {
            let mut first = json!({ "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } });
            if let Some(extra) = extra {
                first["extra_content"] = extra;
            }
            let second = json!({ "id": "b", "type": "function", "function": { "name": "f", "arguments": "{}" } });
            json!({ "messages": [user("hi"), { "role": "assistant", "tool_calls": [first, second] }] })
        };
        let signatures = |out: &Value| -> Vec<Value> {
            let parts = out["contents"][1]["parts"].as_array().unwrap();
            parts.iter().map(|p| p.get("thoughtSignature").cloned().unwrap_or(Value::Null)).collect()
        };
        let gemini3 = request(body(None), "gemini-3-flash-preview").unwrap();
        assert_eq!(signatures(&gemini3), [json!(SKIP_SIGNATURE), Value::Null]);
        let future = request(body(None), "gemini-flash-latest").unwrap();
        assert_eq!(signatures(&future), [json!(SKIP_SIGNATURE), Value::Null]);
        let older = request(body(None), "gemini-2.5-pro").unwrap();
        assert_eq!(signatures(&older), [Value::Null, Value::Null]);
        let signed = json!({ "google": { "thought_signature": "c2ln" } });
        let replayed = request(body(Some(signed)), "gemini-3-pro-preview").unwrap();
        assert_eq!(signatures(&replayed), [json!("c2ln"), Value::Null]);
    }

    #[test]
    fn reasoning_effort_sets_a_thinking_budget() {
        for (effort, expected) in [
            ("none", json!({ "thinkingBudget": 0 })),
            ("minimal", json!({ "thinkingBudget": 512, "includeThoughts": true })),
            ("low", json!({ "thinkingBudget": 1024, "includeThoughts": true })),
            ("medium", json!({ "thinkingBudget": 8192, "includeThoughts": true })),
            ("high", json!({ "thinkingBudget": 24576, "includeThoughts": true })),
        ] {
            let out = request(json!({ "messages": [user("hi")], "reasoning_effort": effort }), "m").unwrap();
            assert_eq!(out["generationConfig"]["thinkingConfig"], expected, "{effort}");
        }
    }

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

    fn run(stream: &mut ChatStream, events: &[&str]) -> Result<Vec<Value>, TranslateError> {
        let mut out = Vec::new();
        for data in events {
            let event = SseEvent { event: None, data: (*data).to_owned() };
            out.extend(stream.event(&event)?);
        }
        out.extend(stream.finish());
        Ok(out
            .iter()
            .map(|bytes| {
                let text = std::str::from_utf8(bytes).unwrap();
                let data = text.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap();
                if data == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(data).unwrap() }
            })
            .collect())
    }

    #[test]
    fn a_blocked_prompt_ends_the_stream_with_content_filter() {
        let mut stream = ChatStream::new("m", true, 5);
        let out = run(
            &mut stream,
            &[r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"responseId":"r"}"#],
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["choices"][0]["delta"], json!({ "role": "assistant", "content": null }));
        assert_eq!(out[0]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(out[1]["usage"]["prompt_tokens"], 4);
        assert_eq!(out[2], "[DONE]");
    }

    #[test]
    fn streams_keep_choices_apart_and_ignore_what_is_not_an_answer() {
        let mut stream = ChatStream::new("m", false, 5);
        let out = run(
            &mut stream,
            &[
                "",
                r#"[{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0},{"content":{"parts":[{"text":"b"}]},"index":1}]}]"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"c"}]},"finishReason":"STOP","index":1}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"late"}]},"index":1}]}"#,
                "[DONE]",
            ],
        )
        .unwrap();
        let deltas: Vec<(u64, Value, Value)> = out
            .iter()
            .filter(|e| e.is_object())
            .map(|e| {
                let choice = &e["choices"][0];
                (choice["index"].as_u64().unwrap(), choice["delta"].clone(), choice["finish_reason"].clone())
            })
            .collect();
        assert_eq!(
            deltas,
            [
                (0, json!({ "role": "assistant", "content": "a" }), Value::Null),
                (1, json!({ "role": "assistant", "content": "b" }), Value::Null),
                (1, json!({ "content": "c" }), Value::Null),
                (1, json!({}), json!("stop")),
            ]
        );
        assert_eq!(out[0]["id"], "chatcmpl-gemini-5");
        assert_eq!(out.last().unwrap(), "[DONE]");
        // After the end nothing more goes out.
        let late = SseEvent { event: None, data: r#"{"candidates":[]}"#.into() };
        assert!(stream.event(&late).unwrap().is_empty());
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn stream_errors_and_garbage_fail_the_stream() {
        let mut stream = ChatStream::new("m", true, 5);
        let error = run(&mut stream, &[r#"[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}]"#]).unwrap_err();
        assert!(error.0.contains("RESOURCE_EXHAUSTED"), "{error}");
        let mut stream = ChatStream::new("m", true, 5);
        let error = run(&mut stream, &["{\"candidates\": ["]).unwrap_err();
        assert!(error.0.starts_with("Gemini sent a stream event that is not JSON"), "{error}");
    }

    #[test]
    fn an_empty_stream_still_ends_properly() {
        let mut stream = ChatStream::new("m", true, 5);
        let out = run(&mut stream, &[]).unwrap();
        assert_eq!(out[0]["choices"], json!([]));
        assert_eq!(out[0]["usage"]["total_tokens"], 0);
        assert_eq!(out[1], "[DONE]");
    }

    #[test]
    fn base64_is_standard_and_padded() {
        for (input, expected) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(encode_base64(input.as_bytes()), expected);
        }
        assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn error_bodies_of_every_shape() {
        let out = |status: u16, body: &str| -> Value {
            serde_json::from_slice(&error_body(status, body.as_bytes())).unwrap()
        };
        let array = out(429, r#"[{"error":{"code":429,"message":"slow","status":"RESOURCE_EXHAUSTED"}}]"#);
        assert_eq!(array["error"]["message"], "slow");
        assert_eq!(array["error"]["type"], "resource_exhausted");
        assert_eq!(array["error"]["details"], Value::Null);
        let bare = out(500, r#"{"error":{"code":500}}"#);
        assert_eq!(bare["error"]["message"], "Gemini answered HTTP 500");
        assert_eq!(bare["error"]["type"], "upstream_error");
        assert_eq!(bare["error"]["code"], 500);
        let other = out(404, r#"{"message":"not here"}"#);
        assert_eq!(other["error"]["message"], r#"{"message":"not here"}"#);
    }

    #[test]
    fn model_lists_of_odd_shapes() {
        assert!(model_ids(br#"{"models":{}}"#).is_err());
        assert_eq!(model_ids(br#"{"models":[{"displayName":"no name"},{"name":"plain"}]}"#).unwrap(), ["plain"]);
    }
}
