//! Chat-completions chunks as Responses stream events.
//!
//! Each event is `event: <type>\ndata: <json>\n\n`, its JSON carrying the
//! same `type` and a `sequence_number` counting from 0. Output items come
//! one after the other, each opened (`response.output_item.added`, its part
//! added), filled (deltas) and closed (its `.done` events, then
//! `response.output_item.done` with the whole item) before the next opens.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    answer::error_message,
    shape::{self, ChatUsage, Hints, Identity, Status},
};
use crate::upstream::dialect::{
    SseEvent, StreamTranslator, TranslateError,
    client::{
        ClientHints,
        chunk::{Chunk, ToolCallPiece},
    },
};

/// The output item being streamed.
#[derive(Debug)]
enum Open {
    Reasoning { id: String, text: String },
    Message { id: String, text: String },
    Call { index: u64, id: String, call_id: String, name: String, arguments: String, custom: bool },
}

/// Numbers and frames the events.
#[derive(Debug, Default)]
struct Events {
    sequence: u64,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    fields: T,
}

/// A text delta, the most frequent event: written without a `Value`.
#[derive(Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct SummaryDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    summary_index: u32,
    delta: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
}

impl Events {
    fn push<T: Serialize>(&mut self, out: &mut Vec<Bytes>, kind: &str, fields: T) {
        let envelope = Envelope { kind, sequence_number: self.sequence, fields };
        self.sequence += 1;
        // Strings, numbers and JSON values: encoding cannot fail.
        let json = serde_json::to_vec(&envelope).unwrap_or_default();
        let mut event = BytesMut::with_capacity(json.len() + kind.len() + 16);
        event.extend_from_slice(b"event: ");
        event.extend_from_slice(kind.as_bytes());
        event.extend_from_slice(b"\ndata: ");
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        out.push(event.freeze());
    }
}

/// Chat-completions chunks in, Responses stream events out.
#[derive(Debug)]
pub struct ResponsesStream {
    identity: Identity,
    model: String,
    hints: ClientHints,
    events: Events,
    started: bool,
    /// The closed output items, for the final `response`.
    output: Vec<Value>,
    open: Option<Open>,
    /// The chat tool-call indexes seen so far.
    calls_seen: Vec<u64>,
    /// Set by the chat `finish_reason`.
    status: Option<Status>,
    done_seen: bool,
    usage: Option<ChatUsage>,
    /// `response.completed` (or its like) went out: the stream is over.
    ended: bool,
}

impl ResponsesStream {
    /// A stream answering as `model`, for the request `hints` came from.
    pub fn new(model: &str, hints: ClientHints) -> Self {
        Self {
            identity: Identity::new(),
            model: model.to_owned(),
            hints,
            events: Events::default(),
            started: false,
            output: Vec::new(),
            open: None,
            calls_seen: Vec::new(),
            status: None,
            done_seen: false,
            usage: None,
            ended: false,
        }
    }

    fn response(&self, status: &Status, output: Vec<Value>) -> Value {
        let usage = self.usage.map(|u| u.responses());
        shape::response(&self.identity, &self.model, status, output, usage, &self.hints)
    }

    /// `response.created` and `response.in_progress`, once, first.
    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response(&Status::InProgress, Vec::new());
        self.events.push(out, "response.created", json!({"response": response}));
        self.events.push(out, "response.in_progress", json!({"response": response}));
    }

    fn reasoning(&mut self, out: &mut Vec<Bytes>, delta: &str) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out, "completed");
            let id = shape::random_id("rs");
            let output_index = self.output.len();
            let item = json!({"type": "reasoning", "id": id, "summary": []});
            self.events.push(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
            self.events.push(
                out,
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}}),
            );
            self.open = Some(Open::Reasoning { id, text: String::new() });
        }
        let output_index = self.output.len();
        if let Some(Open::Reasoning { id, text }) = &mut self.open {
            text.push_str(delta);
            let delta = SummaryDelta { item_id: id, output_index, summary_index: 0, delta };
            self.events.push(out, "response.reasoning_summary_text.delta", delta);
        }
    }

    fn text(&mut self, out: &mut Vec<Bytes>, delta: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out, "completed");
            let id = shape::random_id("msg");
            let output_index = self.output.len();
            let item =
                json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
            self.events.push(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
            self.events.push(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": shape::text_part("")}),
            );
            self.open = Some(Open::Message { id, text: String::new() });
        }
        let output_index = self.output.len();
        if let Some(Open::Message { id, text }) = &mut self.open {
            text.push_str(delta);
            let delta = TextDelta { item_id: id, output_index, content_index: 0, delta, logprobs: [] };
            self.events.push(out, "response.output_text.delta", delta);
        }
    }

    fn tool_call(&mut self, out: &mut Vec<Bytes>, piece: &ToolCallPiece<'_>) -> Result<(), TranslateError> {
        let index = piece.index.unwrap_or(0);
        let function = piece.function.as_ref();
        let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
        if !matches!(&self.open, Some(Open::Call { index: open, .. }) if *open == index) {
            if self.calls_seen.contains(&index) {
                return Err(TranslateError::new(
                    "the provider interleaved the pieces of two tool calls, which a Responses stream cannot carry",
                ));
            }
            self.close(out, "completed");
            self.calls_seen.push(index);
            let custom = Hints::is_custom(&self.hints, name);
            let id = shape::random_id(shape::call_prefix(custom));
            let call_id = piece.id.as_deref().map_or_else(|| shape::random_id("call"), str::to_owned);
            let item = if custom {
                json!({"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name, "input": "",
                    "status": "in_progress"})
            } else {
                json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": "",
                    "status": "in_progress"})
            };
            let output_index = self.output.len();
            self.events.push(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
            self.open =
                Some(Open::Call { index, id, call_id, name: name.to_owned(), arguments: String::new(), custom });
        }
        let output_index = self.output.len();
        if let Some(Open::Call { id, name: open_name, arguments, custom, .. }) = &mut self.open {
            if open_name.is_empty() && !name.is_empty() {
                name.clone_into(open_name);
            }
            let fragment = function.and_then(|f| f.arguments.as_deref()).unwrap_or_default();
            arguments.push_str(fragment);
            // A custom tool's input is JSON-encoded in the arguments: it is
            // sent decoded, whole, when the call ends.
            if !*custom && !fragment.is_empty() {
                let delta = ArgumentsDelta { item_id: id, output_index, delta: fragment };
                self.events.push(out, "response.function_call_arguments.delta", delta);
            }
        }
        Ok(())
    }

    /// Closes the open item, if any; `status` is a message's.
    fn close(&mut self, out: &mut Vec<Bytes>, status: &str) {
        let Some(open) = self.open.take() else { return };
        let output_index = self.output.len();
        let item = match open {
            Open::Reasoning { id, text } => {
                let at = json!({"item_id": id, "output_index": output_index, "summary_index": 0});
                self.events.push(out, "response.reasoning_summary_text.done", with(&at, "text", json!(text)));
                let part = json!({"type": "summary_text", "text": text});
                self.events.push(out, "response.reasoning_summary_part.done", with(&at, "part", part));
                shape::reasoning_item(&id, &text)
            }
            Open::Message { id, text } => {
                let at = json!({"item_id": id, "output_index": output_index, "content_index": 0});
                let mut done = with(&at, "text", json!(text));
                done["logprobs"] = json!([]);
                self.events.push(out, "response.output_text.done", done);
                self.events.push(out, "response.content_part.done", with(&at, "part", shape::text_part(&text)));
                shape::message_item(&id, &text, status)
            }
            Open::Call { id, call_id, name, arguments, custom, .. } => {
                let at = json!({"item_id": id, "output_index": output_index});
                if custom {
                    let input = shape::custom_input(&arguments);
                    if !input.is_empty() {
                        self.events.push(
                            out,
                            "response.custom_tool_call_input.delta",
                            with(&at, "delta", json!(input)),
                        );
                    }
                    self.events.push(out, "response.custom_tool_call_input.done", with(&at, "input", json!(input)));
                } else {
                    self.events.push(
                        out,
                        "response.function_call_arguments.done",
                        with(&at, "arguments", json!(arguments)),
                    );
                }
                shape::call_item(&id, &call_id, &name, &arguments, custom)
            }
        };
        self.events.push(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
        self.output.push(item);
    }

    /// Closes what is open and sends the final event, once.
    fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.start(out);
        let status = match (&self.status, self.done_seen) {
            (Some(status), _) => status.clone(),
            (None, true) => Status::Completed,
            (None, false) => Status::Failed("the provider's stream ended before the answer was complete".into()),
        };
        self.close(out, status.item_status());
        let output = std::mem::take(&mut self.output);
        let response = self.response(&status, output);
        self.events.push(out, status.final_event(), json!({"response": response}));
    }
}

/// `at` with one more field.
fn with(at: &Value, field: &str, value: Value) -> Value {
    let mut out = at.clone();
    out[field] = value;
    out
}

impl StreamTranslator for ResponsesStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        let data = event.data.trim();
        if data.is_empty() || self.ended {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if data == "[DONE]" {
            self.done_seen = true;
            self.end(&mut out);
            return Ok(out);
        }
        let chunk: Chunk<'_, ChatUsage> = serde_json::from_str(data).map_err(|e| {
            TranslateError::new(format!("the provider sent a stream chunk that is not valid JSON: {e}"))
        })?;
        if let Some(error) = chunk.error {
            return Err(error_message(&error));
        }
        self.start(&mut out);
        // Only the first choice is translated (Responses has no `n`), and
        // nothing after its finish_reason.
        for choice in chunk.choices.iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if self.status.is_some() {
                break;
            }
            if let Some(delta) = &choice.delta {
                let reasoning = delta.reasoning();
                if let Some(reasoning) = reasoning.filter(|r| !r.is_empty()) {
                    self.reasoning(&mut out, reasoning);
                }
                for text in [&delta.content, &delta.refusal].into_iter().flatten() {
                    if !text.is_empty() {
                        self.text(&mut out, text);
                    }
                }
                for piece in delta.tool_calls.iter().flatten() {
                    self.tool_call(&mut out, piece)?;
                }
            }
            if let Some(reason) = &choice.finish_reason {
                let status = Status::from_finish_reason(Some(reason));
                self.close(&mut out, status.item_status());
                self.status = Some(status);
            }
        }
        let usage_only = chunk.choices.is_empty();
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
            // The final event carries the usage, which comes in a chunk of
            // its own after the finish_reason: it waits for that chunk (or
            // for the end; some providers put the usage on their last
            // content chunk, and send no usage chunk).
            if usage_only && self.status.is_some() {
                self.end(&mut out);
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.end(&mut out);
        out
    }

    fn is_complete(&self) -> bool {
        self.status.is_some() || self.done_seen
    }

    fn usage(&self) -> Option<crate::usage::Usage> {
        self.usage.map(|u| u.usage())
    }
}
