//! The chat-completions request for a `GenerateContentRequest`: the
//! conversation, and tool calls paired with their results; parts, tools
//! and `generationConfig` have their own files.

use serde_json::{Map, Value, json};

use super::{
    ClientRequest, TranslateError,
    config::{apply_generation_config, apply_tools},
    echo, err, field, parse_object,
    parts::{Kind, kind_of, user_part},
    to_bytes,
};
use crate::upstream::dialect::client::{ChatRequest, ClientHints};

/// The chat request for the client's `generateContent` body.
pub(super) fn to_chat(req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
    let request = parse_object(req.body, "the generateContent request")?;
    if let Some(cache) = field(&request, "cachedContent") {
        let name = cache.as_str().map(echo).unwrap_or_default();
        return Err(err(format!(
            "cachedContent `{name}`: a context cache lives at Google and cannot be used with this model; \
             send its contents in `contents`, or use a gemini/ model"
        )));
    }

    let mut messages = Vec::new();
    if let Some(system) = field(&request, "systemInstruction") {
        messages.extend(system_message(system)?);
    }
    let contents = match field(&request, "contents") {
        Some(Value::Array(contents)) => contents,
        Some(_) => return Err(err("`contents` must be an array of Content objects")),
        None => return Err(err("`contents` is required")),
    };
    let mut convo = Conversation { messages, calls: Vec::new() };
    for (turn, content) in contents.iter().enumerate() {
        convo.content(content, turn)?;
    }
    if !convo.messages.iter().any(|m| m["role"] != "system") {
        return Err(err("`contents` needs at least one user or model turn with parts"));
    }

    let mut out = Map::new();
    out.insert("model".into(), req.model.into());
    out.insert("messages".into(), Value::Array(convo.messages));
    apply_tools(&request, &mut out)?;
    let include_thoughts = apply_generation_config(field(&request, "generationConfig"), &mut out)?;
    if req.stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    let hints = match include_thoughts {
        Some(false) => ClientHints::new(json!({ "includeThoughts": false })),
        _ => ClientHints::default(),
    };
    Ok(ChatRequest { body: to_bytes(&Value::Object(out)), hints })
}

/// `systemInstruction` (a Content, or a bare string as the SDKs allow) as
/// one `system` message; `None` when it holds no text.
fn system_message(system: &Value) -> Result<Option<Value>, TranslateError> {
    let parts = match system {
        Value::String(text) => return Ok((!text.is_empty()).then(|| json!({ "role": "system", "content": text }))),
        Value::Object(content) => match field(content, "parts") {
            Some(Value::Array(parts)) => parts,
            None => return Ok(None),
            Some(_) => return Err(err("systemInstruction.parts must be an array")),
        },
        _ => return Err(err("systemInstruction must be a Content object ({\"parts\": [{\"text\": ...}]})")),
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match field_text(part) {
            Some("") => {}
            Some(text) => texts.push(text),
            None => return Err(err(format!("systemInstruction.parts[{j}]: a system instruction can only hold text"))),
        }
    }
    Ok(match texts.as_slice() {
        [] => None,
        [text] => Some(json!({ "role": "system", "content": text })),
        texts => {
            let parts: Vec<Value> = texts.iter().map(|text| json!({ "type": "text", "text": text })).collect();
            Some(json!({ "role": "system", "content": parts }))
        }
    })
}

fn field_text(part: &Value) -> Option<&str> {
    part.as_object().and_then(|p| field(p, "text")).and_then(Value::as_str)
}

/// A function call of the conversation, waiting for its result.
#[derive(Debug)]
struct Call {
    id: String,
    name: String,
    answered: bool,
}

#[derive(Debug)]
struct Conversation {
    messages: Vec<Value>,
    calls: Vec<Call>,
}

impl Conversation {
    fn content(&mut self, content: &Value, turn: usize) -> Result<(), TranslateError> {
        let at = format!("contents[{turn}]");
        let content = content.as_object().ok_or_else(|| err(format!("{at} must be a Content object")))?;
        let parts = match field(content, "parts") {
            Some(Value::Array(parts)) => parts.as_slice(),
            None => &[],
            Some(_) => return Err(err(format!("{at}.parts must be an array"))),
        };
        match field(content, "role") {
            None => self.user_turn(parts, &at),
            Some(Value::String(role)) => match role.as_str() {
                // `function` and `tool` are older SDKs' roles for turns of function results.
                "user" | "" | "function" | "tool" => self.user_turn(parts, &at),
                "model" => self.model_turn(parts, turn, &at),
                other => Err(err(format!("{at}.role `{}` is not user or model", echo(other)))),
            },
            Some(_) => Err(err(format!("{at}.role must be a string"))),
        }
    }

    /// Function results first (chat wants them right after the calls),
    /// then a user message with the rest.
    fn user_turn(&mut self, parts: &[Value], at: &str) -> Result<(), TranslateError> {
        let mut content = Vec::new();
        for (j, part) in parts.iter().enumerate() {
            let at = format!("{at}.parts[{j}]");
            match kind_of(part, &at)? {
                Kind::FunctionResponse(response) => {
                    let message = self.tool_message(response, &at)?;
                    self.messages.push(message);
                }
                Kind::FunctionCall(_) => {
                    return Err(err(format!("{at}: a functionCall belongs in a turn of role `model`")));
                }
                kind => content.extend(user_part(kind, &at)?),
            }
        }
        let content = match content.as_slice() {
            [] => return Ok(()),
            [only] if only["type"] == "text" => only["text"].clone(),
            _ => Value::Array(content),
        };
        self.messages.push(json!({ "role": "user", "content": content }));
        Ok(())
    }

    fn model_turn(&mut self, parts: &[Value], turn: usize, at: &str) -> Result<(), TranslateError> {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for (j, part) in parts.iter().enumerate() {
            let at = format!("{at}.parts[{j}]");
            match kind_of(part, &at)? {
                Kind::Text { text: t, thought: false } => text.push_str(t),
                Kind::Text { thought: true, .. } | Kind::Nothing => {}
                Kind::FunctionCall(call) => {
                    tool_calls.push(self.tool_call(call, turn, tool_calls.len(), &at)?);
                }
                Kind::FunctionResponse(_) => {
                    return Err(err(format!("{at}: a functionResponse belongs in a turn of role `user`")));
                }
                kind => {
                    return Err(err(format!(
                        "{at}: a model turn's {} cannot be replayed through chat completions, which take only \
                         text and function calls from the assistant",
                        kind.name()
                    )));
                }
            }
        }
        if text.is_empty() && tool_calls.is_empty() {
            return Ok(()); // only thoughts: nothing chat can replay
        }
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert("content".into(), if text.is_empty() { Value::Null } else { text.into() });
        if !tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        self.messages.push(Value::Object(message));
        Ok(())
    }

    /// A chat tool call for a `functionCall`; its id is the call's own, or
    /// `call_<turn>_<n>`, the same each time the conversation is replayed.
    fn tool_call(&mut self, call: &Value, turn: usize, n: usize, at: &str) -> Result<Value, TranslateError> {
        let call = call.as_object().ok_or_else(|| err(format!("{at}.functionCall must be an object")))?;
        let name = function_name(call, &format!("{at}.functionCall"))?;
        let args = match field(call, "args") {
            None => Value::Object(Map::new()),
            Some(args @ Value::Object(_)) => args.clone(),
            Some(_) => return Err(err(format!("{at}.functionCall.args must be an object"))),
        };
        let id = match field(call, "id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => format!("call_{turn}_{n}"),
        };
        self.calls.push(Call { id: id.clone(), name: name.to_owned(), answered: false });
        Ok(json!({
            "id": id,
            "type": "function",
            "function": { "name": name, "arguments": args.to_string() },
        }))
    }

    /// The `tool` message for a `functionResponse`, answering the call
    /// with its id, else the oldest unanswered call of its name.
    fn tool_message(&mut self, response: &Value, at: &str) -> Result<Value, TranslateError> {
        let at = format!("{at}.functionResponse");
        let response = response.as_object().ok_or_else(|| err(format!("{at} must be an object")))?;
        let name = function_name(response, &at)?;
        if field(response, "parts").and_then(Value::as_array).is_some_and(|parts| !parts.is_empty()) {
            return Err(err(format!(
                "{at}.parts: media in a function response cannot go through chat completions, whose tool results are text"
            )));
        }
        let id = field(response, "id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let by_id = id.and_then(|id| {
            let unanswered = self.calls.iter().position(|c| c.id == id && !c.answered);
            unanswered.or_else(|| self.calls.iter().position(|c| c.id == id))
        });
        let found = by_id.or_else(|| self.calls.iter().position(|c| c.name == name && !c.answered));
        let Some(call) = found.map(|i| &mut self.calls[i]) else {
            return Err(err(format!(
                "{at}: `{}` answers no earlier functionCall of that name (chat completions needs every tool result \
                 to follow its call)",
                echo(name)
            )));
        };
        call.answered = true;
        let output = field(response, "response").cloned().unwrap_or_else(|| Value::Object(Map::new()));
        Ok(json!({ "role": "tool", "tool_call_id": call.id, "content": output.to_string() }))
    }
}

fn function_name<'a>(object: &'a Map<String, Value>, at: &str) -> Result<&'a str, TranslateError> {
    field(object, "name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| err(format!("{at}.name is missing")))
}
