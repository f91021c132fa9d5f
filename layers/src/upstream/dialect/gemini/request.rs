//! The `GenerateContentRequest` for an OpenAI chat request: the
//! conversation; content parts, tools and `generationConfig` have their
//! own files.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    TranslateError,
    config::{declaration, generation_config, tool_config},
    content::content_parts,
    err, parse_object, to_bytes,
};

/// Stands in for a thought signature the client did not send back
/// (documented by Google for replaying calls it did not sign).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Model families that predate mandatory thought signatures.
const UNSIGNED_FAMILIES: &[&str] = &["gemini-1", "gemini-2", "gemma", "learnlm"];

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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    use crate::upstream::dialect::gemini::test_support::{request, user};

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
}
