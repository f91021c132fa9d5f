//! Chat-completion chunks as `streamGenerateContent?alt=sse` events.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{
    TranslateError,
    answer::{
        candidate, error_message, finish_reason, function_call_part, include_thoughts, reasoning_of, thought_part,
        usage_metadata,
    },
    err, to_bytes,
};
use crate::{
    upstream::dialect::{SseEvent, StreamTranslator, client::ClientHints, sse::data_event},
    usage::Usage,
};

/// Chat-completion chunks to Gemini's stream events: one
/// `data: <GenerateContentResponse>` event per chunk that carries
/// something. Gemini sends function calls whole, so a call's argument
/// pieces wait until the next call starts or the answer finishes; the
/// finish reason waits for the usage, which chat sends after it.
///
/// ```
/// use keyrelay_layers::upstream::dialect::{SseEvent, StreamTranslator, client::{ClientHints, gemini::GeminiStream}};
///
/// let mut stream = GeminiStream::new("gpt-4.1", &ClientHints::default());
/// let chunk = |data: &str| SseEvent { event: None, data: data.to_owned() };
/// let out = stream.event(&chunk(r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#)).unwrap();
/// assert!(std::str::from_utf8(&out[0]).unwrap().starts_with(r#"data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]"#));
/// // The finish reason is held for the usage chunk that follows it.
/// assert!(stream.event(&chunk(r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)).unwrap().is_empty());
/// let out = stream.event(&chunk(r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#)).unwrap();
/// assert!(std::str::from_utf8(&out[0]).unwrap().contains(r#""finishReason":"STOP""#));
/// assert!(stream.event(&chunk("[DONE]")).unwrap().is_empty());
/// assert!(stream.is_complete());
/// ```
#[derive(Debug)]
pub struct GeminiStream {
    model: String,
    include_thoughts: bool,
    /// The chat id, from the first chunk that has one.
    response_id: String,
    /// The tool call whose arguments are still arriving.
    call: Option<PendingCall>,
    /// How many calls went out (for ids of calls that came without one).
    calls: usize,
    /// The last event, with the finish reason, waiting for the usage.
    held: Option<Value>,
    /// The usage chunk's `usage`.
    usage: Option<Value>,
    finished: bool,
    done: bool,
    closed: bool,
}

#[derive(Debug)]
struct PendingCall {
    index: u64,
    id: String,
    name: String,
    arguments: String,
}

impl GeminiStream {
    /// A stream for an answer of `model`, shaped by the request's `hints`.
    pub fn new(model: &str, hints: &ClientHints) -> Self {
        Self {
            model: model.to_owned(),
            include_thoughts: include_thoughts(hints),
            response_id: String::new(),
            call: None,
            calls: 0,
            held: None,
            usage: None,
            finished: false,
            done: false,
            closed: false,
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(err(error_message(error)));
        }
        if self.response_id.is_empty()
            && let Some(id) = chunk.get("id").and_then(Value::as_str)
        {
            self.response_id = id.to_owned();
        }
        let choices = chunk.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        // Chat gives one choice (the request never asks for more).
        let choice = choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        if let Some(choice) = choice.filter(|_| !self.finished) {
            self.choice(choice, out)?;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
            if self.held.is_some() {
                self.release(out);
            }
        }
        Ok(())
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        let mut parts = Vec::new();
        if let Some(delta) = choice.get("delta") {
            if self.include_thoughts
                && let Some(reasoning) = reasoning_of(delta).filter(|r| !r.is_empty())
            {
                parts.push(thought_part(reasoning));
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                parts.push(serde_json::json!({ "text": text }));
            }
            for piece in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                self.tool_call_piece(piece, &mut parts)?;
            }
        }
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some(reason) => {
                self.finished = true;
                self.flush_call(&mut parts)?;
                self.held = Some(candidate(parts, Some(finish_reason(Some(reason)))));
            }
            None if !parts.is_empty() => out.push(self.frame(candidate(parts, None), false)),
            None => {}
        }
        Ok(())
    }

    /// One piece of a streamed tool call: a new index sends the previous
    /// call, whole.
    fn tool_call_piece(&mut self, piece: &Value, parts: &mut Vec<Value>) -> Result<(), TranslateError> {
        let id = piece.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let index = match (piece.get("index").and_then(Value::as_u64), &self.call) {
            (Some(index), _) => index,
            // No index: a new id is a new call, anything else continues.
            (None, Some(call)) if id.is_some_and(|id| !call.id.is_empty() && id != call.id) => call.index + 1,
            (None, Some(call)) => call.index,
            (None, None) => 0,
        };
        if self.call.as_ref().is_some_and(|call| call.index != index) {
            self.flush_call(parts)?;
        }
        let call = self.call.get_or_insert_with(|| PendingCall {
            index,
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        if let Some(id) = id.filter(|_| call.id.is_empty()) {
            call.id = id.to_owned();
        }
        let function = piece.get("function");
        if let Some(name) =
            function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|_| call.name.is_empty())
        {
            call.name = name.to_owned();
        }
        if let Some(arguments) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
            call.arguments.push_str(arguments);
        }
        Ok(())
    }

    fn flush_call(&mut self, parts: &mut Vec<Value>) -> Result<(), TranslateError> {
        if let Some(call) = self.call.take() {
            parts.push(function_call_part(&call.id, &call.name, &call.arguments, self.calls)?);
            self.calls += 1;
        }
        Ok(())
    }

    /// The held last event, with the usage when it came.
    fn release(&mut self, out: &mut Vec<Bytes>) {
        if let Some(candidate) = self.held.take() {
            out.push(self.frame(candidate, true));
        }
    }

    /// One event: a `GenerateContentResponse` of one candidate.
    fn frame(&self, candidate: Value, last: bool) -> Bytes {
        let mut response = Map::new();
        response.insert("candidates".into(), Value::Array(vec![candidate]));
        if last && let Some(metadata) = self.usage.as_ref().and_then(usage_metadata) {
            response.insert("usageMetadata".into(), metadata);
        }
        response.insert("modelVersion".into(), self.model.as_str().into());
        response.insert("responseId".into(), self.response_id.as_str().into());
        data_event(&to_bytes(&Value::Object(response)))
    }
}

impl StreamTranslator for GeminiStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        let data = event.data.trim();
        if self.closed || data.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if data == "[DONE]" {
            self.done = true;
            if !self.finished {
                // An end without a finish reason (some providers leave it
                // out): Gemini's clients want one on the last event.
                self.finished = true;
                let mut parts = Vec::new();
                self.flush_call(&mut parts)?;
                self.held = Some(candidate(parts, Some(finish_reason(None))));
            }
            self.release(&mut out);
            return Ok(out);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| err(format!("the chat stream sent an event that is not JSON ({e})")))?;
        self.chunk(&chunk, &mut out)?;
        Ok(out)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        // A call still buffered here was cut off mid-arguments: it is not
        // sent, and the stream is not complete.
        let mut out = Vec::new();
        self.release(&mut out);
        out
    }

    fn is_complete(&self) -> bool {
        self.finished || self.done
    }

    fn usage(&self) -> Option<Usage> {
        let usage = self.usage.as_ref()?;
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let cached = usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64);
        Some(Usage::new(count("prompt_tokens"), count("completion_tokens")).with_cached(cached.unwrap_or(0)))
    }
}
