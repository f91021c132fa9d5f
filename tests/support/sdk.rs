//! keyrelay's answers as an OpenAI client sees them: every field the
//! official SDK relies on, checked (`id`, `object`, `created`, `model`,
//! `choices[].index`, tool call `arguments` as JSON strings,
//! `finish_reason`, `usage`; streams as `chat.completion.chunk` events
//! folded the way the SDK folds them, ending in `data: [DONE]` or in one
//! error event; embeddings whole or base64).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{Reply, assert_no_secret};

/// Now, in Unix seconds (`created` of an answer must be now, give or take
/// a minute).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// A `chat.completion` as the OpenAI SDK parses it: checks every field it
/// relies on and returns the body.
#[track_caller]
pub fn assert_completion(reply: &Reply, model: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret("a chat answer", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion", "{body}");
    let id = body["id"].as_str().unwrap_or_else(|| panic!("`id` is a string: {body}"));
    assert!(id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(), "an OpenAI-style id: {id}");
    let created = body["created"].as_u64().unwrap_or_else(|| panic!("`created` is an integer: {body}"));
    assert!(created.abs_diff(now_secs()) <= 60, "`created` is now, in Unix seconds: {created}");
    assert_eq!(body["model"], model, "{body}");
    let choices = body["choices"].as_array().unwrap_or_else(|| panic!("`choices` is a list: {body}"));
    assert_eq!(choices.len(), 1, "{body}");
    assert_eq!(choices[0]["index"], 0, "{body}");
    let message = &choices[0]["message"];
    assert_eq!(message["role"], "assistant", "{body}");
    assert!(message["content"].is_string() || message["content"].is_null(), "{body}");
    assert!(choices[0]["finish_reason"].is_string(), "{body}");
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "a tool call id: {call}");
        assert_eq!(call["type"], "function", "{call}");
        assert!(call["function"]["name"].is_string(), "{call}");
        let arguments = call["function"]["arguments"].as_str().unwrap_or_else(|| panic!("arguments string: {call}"));
        let parsed: Value = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("arguments JSON ({e}): {call}"));
        assert!(parsed.is_object(), "arguments encode an object: {call}");
    }
    let usage = &body["usage"];
    let count = |field: &str| usage[field].as_u64().unwrap_or_else(|| panic!("usage.{field} is an integer: {body}"));
    assert_eq!(count("total_tokens"), count("prompt_tokens") + count("completion_tokens"), "{body}");
    body
}

/// Tool calls as `(id, name, parsed arguments)`.
pub fn tool_calls(message: &Value) -> Vec<(String, String, Value)> {
    message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| {
            let arguments = call["function"]["arguments"].as_str().expect("arguments string");
            (
                call["id"].as_str().expect("id").to_owned(),
                call["function"]["name"].as_str().expect("name").to_owned(),
                serde_json::from_str(arguments).expect("arguments JSON"),
            )
        })
        .collect()
}

/// A stream folded the way the OpenAI SDK folds it, every chunk checked on
/// the way.
#[derive(Debug, Default)]
pub struct Streamed {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub role: Option<String>,
    pub content: String,
    /// `(id, name, arguments)` by tool call index.
    pub tool_calls: Vec<(String, String, String)>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub chunks: usize,
    pub done: bool,
}

impl Streamed {
    #[track_caller]
    pub fn feed(&mut self, event: &str) {
        assert!(!self.done, "nothing follows `data: [DONE]`: {event}");
        assert_no_secret("a stream event", event);
        let data = event.strip_prefix("data: ").unwrap_or_else(|| panic!("a `data: ` event: {event:?}"));
        assert!(!data.contains('\n'), "one data line per event: {event:?}");
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("a JSON chunk ({e}): {data}"));
        assert!(chunk.get("error").is_none(), "an error event: {chunk}");
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        let id = chunk["id"].as_str().unwrap_or_else(|| panic!("`id` string: {chunk}"));
        let created = chunk["created"].as_u64().unwrap_or_else(|| panic!("`created` integer: {chunk}"));
        let model = chunk["model"].as_str().unwrap_or_else(|| panic!("`model` string: {chunk}"));
        if self.chunks == 0 {
            assert!(id.starts_with("chatcmpl-") && id.len() > 9, "an OpenAI-style id: {id}");
            assert!(created.abs_diff(now_secs()) <= 60, "`created` is now: {created}");
            (self.id, self.created, self.model) = (id.to_owned(), created, model.to_owned());
        } else {
            assert_eq!((id, created, model), (self.id.as_str(), self.created, self.model.as_str()), "{chunk}");
        }
        self.chunks += 1;
        let choices = chunk["choices"].as_array().unwrap_or_else(|| panic!("`choices` list: {chunk}"));
        if choices.is_empty() {
            assert!(chunk["usage"].is_object(), "a chunk without choices is the usage chunk: {chunk}");
            assert!(self.finish_reason.is_some(), "usage comes after the finish: {chunk}");
            assert!(self.usage.is_none(), "one usage chunk: {chunk}");
            self.usage = Some(chunk["usage"].clone());
            return;
        }
        assert!(chunk["usage"].is_null(), "only the last chunk has usage: {chunk}");
        assert_eq!(choices.len(), 1, "{chunk}");
        let choice = &choices[0];
        assert_eq!(choice["index"], 0, "{chunk}");
        let delta = choice["delta"].as_object().unwrap_or_else(|| panic!("`delta` object: {chunk}"));
        match delta.get("role") {
            Some(role) => {
                assert!(self.role.is_none(), "the role comes once: {chunk}");
                self.role = Some(role.as_str().expect("role string").to_owned());
            }
            None => assert!(self.role.is_some(), "the first chunk says the role: {chunk}"),
        }
        let has_delta = delta.get("content").is_some_and(|c| c.as_str().is_some_and(|c| !c.is_empty()))
            || delta.get("tool_calls").is_some();
        assert!(!(has_delta && self.finish_reason.is_some()), "nothing after the finish: {chunk}");
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.content.push_str(text);
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or_else(|| panic!("tool call index: {chunk}")) as usize;
            let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
            if index == self.tool_calls.len() {
                let id = call["id"].as_str().unwrap_or_else(|| panic!("a new tool call has an id: {chunk}"));
                assert_eq!(call["type"], "function", "{chunk}");
                let name = call["function"]["name"].as_str().unwrap_or_else(|| panic!("and a name: {chunk}"));
                self.tool_calls.push((id.to_owned(), name.to_owned(), arguments.to_owned()));
            } else {
                assert!(index < self.tool_calls.len(), "tool call indexes count up from 0: {chunk}");
                assert!(call.get("id").is_none_or(Value::is_null), "the id comes once: {chunk}");
                self.tool_calls[index].2.push_str(arguments);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert!(self.finish_reason.is_none(), "one finish_reason: {chunk}");
            self.finish_reason = Some(reason.to_owned());
        }
    }

    #[track_caller]
    pub fn feed_all(&mut self, events: &[String]) {
        for event in events {
            self.feed(event);
        }
        assert!(self.done, "the stream ends with data: [DONE]: {events:?}");
        assert_eq!(self.role.as_deref(), Some("assistant"));
        assert!(self.finish_reason.is_some(), "a finish_reason: {events:?}");
    }

    pub fn usage_triple(&self) -> Option<(u64, u64, u64)> {
        let usage = self.usage.as_ref()?;
        let count = |f: &str| usage[f].as_u64().expect("usage counts are integers");
        Some((count("prompt_tokens"), count("completion_tokens"), count("total_tokens")))
    }
}

/// The events before the last fold into `content`; the last is the one
/// error event, naming `cause`; no `[DONE]`.
#[track_caller]
pub fn assert_stream_error_tail(events: &[String], content: &str, cause: &str) {
    let (last, before) = events.split_last().expect("some events");
    assert!(
        last.starts_with("data: {\"error\"") && !events.iter().any(|e| e == "data: [DONE]"),
        "the stream must end with an error event, not as if it were complete: {events:#?}"
    );
    let mut streamed = Streamed::default();
    for event in before {
        streamed.feed(event);
    }
    assert_eq!(streamed.content, content, "{events:?}");
    assert!(!streamed.done, "no [DONE] after an error: {events:?}");
    assert!(streamed.finish_reason.is_none(), "{events:?}");
    assert_no_secret("the error event", last);
    let data = last.strip_prefix("data: ").unwrap_or_else(|| panic!("a data event: {last:?}"));
    let error: Value = serde_json::from_str(data).expect("the error event is JSON");
    let error = error["error"].as_object().unwrap_or_else(|| panic!("`error` object: {data}"));
    for field in ["message", "type", "code"] {
        assert!(error.get(field).is_some_and(Value::is_string), "error.{field}: {data}");
    }
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(cause), "the provider's words are kept: {message}");
    let errors = events.iter().filter(|e| e.contains("\"error\"")).count();
    assert_eq!(errors, 1, "one error event: {events:?}");
}

/// Decodes standard base64 (with padding).
pub fn decode_base64(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 4, 0, "padded base64: {text}");
    let value = |c: u8| -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text}"),
        })
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for &c in text.trim_end_matches('=').as_bytes() {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Checks an OpenAI embeddings list and returns its vectors as `f64`s
/// (decoding base64 vectors as little-endian `f32`s).
#[track_caller]
pub fn embeddings(reply: &Reply, model: &str, base64: bool) -> Vec<Vec<f64>> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret("an embeddings answer", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "list", "{body}");
    assert_eq!(body["model"], model, "{body}");
    assert!(body["usage"]["prompt_tokens"].is_u64() && body["usage"]["total_tokens"].is_u64(), "{body}");
    let data = body["data"].as_array().unwrap_or_else(|| panic!("`data` list: {body}"));
    data.iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding", "{item}");
            assert_eq!(item["index"], i, "{item}");
            if base64 {
                let text = item["embedding"].as_str().unwrap_or_else(|| panic!("base64 string: {item}"));
                let bytes = decode_base64(text);
                assert_eq!(bytes.len() % 4, 0, "whole f32s: {item}");
                bytes.chunks(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect()
            } else {
                let values = item["embedding"].as_array().unwrap_or_else(|| panic!("float list: {item}"));
                values.iter().map(|v| v.as_f64().expect("a number")).collect()
            }
        })
        .collect()
}
