//! Gemini's `alt=sse` events as OpenAI `chat.completion.chunk` events.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    TranslateError, err,
    error::error_message,
    response::{CallIds, completion_id, finish_reason, is_thought, parts_of, tool_call, usage},
    to_vec,
};
use crate::upstream::dialect::{
    StreamTranslator,
    sse::{DONE, SseEvent, data_event},
};

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
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let cached = usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64);
        Some(
            crate::usage::Usage::new(count("prompt_tokens"), count("completion_tokens"))
                .with_cached(cached.unwrap_or(0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

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
}
