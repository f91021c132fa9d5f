//! Chat-completions chunks as Messages API stream events.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    TranslateError,
    answer::{MessagesUsage, error_message, message_id, stop_reason},
    fresh_id,
};
use crate::upstream::dialect::client::chunk::{Chunk, ToolCallPiece};
use crate::upstream::dialect::{SseEvent, StreamTranslator};

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: DeltaBody<'a>,
}

/// A block delta, named by its `type` (`text_delta`...).
#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaBody<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

/// The content block being streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    /// A `tool_use` block: its position in [`MessagesStream::tools`].
    Tool(usize),
}

/// A tool call of the chat stream, by its `index` (or, from servers that
/// send none, its `id`).
#[derive(Debug)]
struct ToolCall {
    index: Option<u64>,
    id: String,
}

/// Chat-completions chunks in, Messages API stream events out, each framed
/// as `event: <type>\ndata: <json>\n\n`, in Anthropic's order:
///
/// 1. `message_start` on the first chunk (usage zero: chat tells it at the end);
/// 2. one content block at a time (`thinking`, `text`, `tool_use`, indexes
///    from 0): `content_block_start`, its deltas (`thinking_delta`,
///    `text_delta`, `input_json_delta`), `content_block_stop` when another
///    kind of content comes (chat's interleaved text and reasoning become
///    several blocks);
/// 3. after the `finish_reason`, once the usage chunk, `[DONE]` or
///    [`StreamTranslator::finish`] comes: `message_delta` (`stop_reason`
///    and the usage) and `message_stop`.
///
/// Pieces of a tool call's arguments that come after another block started
/// cannot be put back in their closed `tool_use` block: the stream fails
/// with a [`TranslateError`] (no known server interleaves them). So does an
/// `{"error": ...}` chunk, with its message.
///
/// ```
/// use keyrelay_layers::upstream::dialect::{client::anthropic::MessagesStream, SseEvent, StreamTranslator};
///
/// let mut stream = MessagesStream::new("gpt-4.1");
/// let mut events: Vec<bytes::Bytes> = Vec::new();
/// for data in [
///     r#"{"id":"chatcmpl-7","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}"#,
///     r#"{"id":"chatcmpl-7","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
///     r#"{"id":"chatcmpl-7","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#,
///     "[DONE]",
/// ] {
///     events.extend(stream.event(&SseEvent { event: None, data: data.into() }).unwrap());
/// }
/// events.extend(stream.finish());
/// let names: Vec<_> = events.iter().map(|e| String::from_utf8_lossy(e).lines().next().unwrap().to_owned()).collect();
/// assert_eq!(names, ["event: message_start", "event: content_block_start", "event: content_block_delta",
///     "event: content_block_stop", "event: message_delta", "event: message_stop"]);
/// assert!(stream.is_complete());
/// assert_eq!(stream.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((9, 1)));
/// ```
#[derive(Debug)]
pub struct MessagesStream {
    model: String,
    started: bool,
    open: Option<Open>,
    /// How many blocks were opened: the open one's index is one less.
    blocks: u32,
    tools: Vec<ToolCall>,
    stop_reason: Option<&'static str>,
    /// A finish reason or `[DONE]` was seen.
    complete: bool,
    usage: Option<MessagesUsage>,
    /// `message_stop` was written: nothing more is.
    closed: bool,
}

impl MessagesStream {
    /// A translator for one answer; `model` is the name its events carry.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            open: None,
            blocks: 0,
            tools: Vec::new(),
            stop_reason: None,
            complete: false,
            usage: None,
            closed: false,
        }
    }

    /// `message_start`, once, before anything else.
    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(chat_id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.push(frame("message_start", &json!({"type": "message_start", "message": message})));
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if self.open.take().is_some() {
            let index = self.blocks - 1;
            out.push(frame("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
        }
    }

    /// Makes `kind` the open block (`content_block` its start), closing
    /// another one first.
    fn open_block(&mut self, kind: Open, content_block: impl FnOnce() -> Value, out: &mut Vec<Bytes>) {
        if self.open == Some(kind) {
            return;
        }
        self.close_block(out);
        let start = json!({"type": "content_block_start", "index": self.blocks, "content_block": content_block()});
        out.push(frame("content_block_start", &start));
        self.blocks += 1;
        self.open = Some(kind);
    }

    fn delta(&self, delta: DeltaBody<'_>) -> Bytes {
        let index = self.blocks.saturating_sub(1);
        frame("content_block_delta", &BlockDelta { kind: "content_block_delta", index, delta })
    }

    fn text(&mut self, text: &str, out: &mut Vec<Bytes>) {
        self.open_block(Open::Text, || json!({"type": "text", "text": ""}), out);
        out.push(self.delta(DeltaBody::Text { text }));
    }

    fn thinking(&mut self, thinking: &str, out: &mut Vec<Bytes>) {
        self.open_block(Open::Thinking, || json!({"type": "thinking", "thinking": "", "signature": ""}), out);
        out.push(self.delta(DeltaBody::Thinking { thinking }));
    }

    fn tool_piece(&mut self, piece: &ToolCallPiece<'_>, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        let id = piece.id.as_deref().filter(|id| !id.is_empty());
        let known = match (piece.index, id) {
            (Some(index), _) => self.tools.iter().position(|t| t.index == Some(index)),
            (None, Some(id)) => self.tools.iter().position(|t| t.id == id),
            (None, None) => match self.open {
                Some(Open::Tool(at)) => Some(at),
                _ => None,
            },
        };
        let function = piece.function.as_ref();
        let arguments = function.and_then(|f| f.arguments.as_deref()).unwrap_or_default();
        let at = match known {
            Some(at) => at,
            None => {
                let id = id.map_or_else(|| fresh_id("toolu_"), str::to_owned);
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                self.tools.push(ToolCall { index: piece.index, id });
                let at = self.tools.len() - 1;
                self.open_block(Open::Tool(at), || block, out);
                at
            }
        };
        if arguments.is_empty() {
            return Ok(());
        }
        if self.open != Some(Open::Tool(at)) {
            return Err(TranslateError::new(
                "the provider interleaved the arguments of a tool call with other content, \
                 which a Messages stream cannot carry",
            ));
        }
        out.push(self.delta(DeltaBody::InputJson { partial_json: arguments }));
        Ok(())
    }

    /// `message_delta` and `message_stop`, once, with whatever is still owed before them.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.start(None, out);
        self.close_block(out);
        let stop_reason = self.stop_reason.unwrap_or_else(|| stop_reason(None, !self.tools.is_empty()));
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": self.usage.unwrap_or_default(),
        });
        out.push(frame("message_delta", &delta));
        out.push(frame("message_stop", &json!({"type": "message_stop"})));
    }
}

/// `event: <kind>` and one `data:` line (compact JSON has no line breaks).
fn frame(kind: &str, data: &impl Serialize) -> Bytes {
    // Maps of strings and numbers, and plain structs: encoding cannot fail.
    let json = serde_json::to_vec(data).unwrap_or_default();
    let mut out = BytesMut::with_capacity(json.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

impl StreamTranslator for MessagesStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        let data = event.data.trim();
        let mut out = Vec::new();
        if data.is_empty() || self.closed {
            return Ok(out);
        }
        if data == "[DONE]" {
            self.complete = true;
            self.close(&mut out);
            return Ok(out);
        }
        let chunk: Chunk<'_> = serde_json::from_str(data)
            .map_err(|e| TranslateError::new(format!("the provider sent a stream chunk that is not valid: {e}")))?;
        if let Some(error) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            return Err(TranslateError::new(error_message(error)));
        }
        self.start(chunk.id.as_deref(), &mut out);
        if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            self.usage = Some(MessagesUsage::from_chat(usage));
        }
        let choices = chunk.choices;
        // The request asked for one choice; another one's pieces are not this message's.
        for choice in choices.iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if let Some(delta) = &choice.delta {
                let reasoning = delta.reasoning();
                if let Some(thinking) = reasoning.filter(|r| !r.is_empty()) {
                    self.thinking(thinking, &mut out);
                }
                for text in [&delta.content, &delta.refusal] {
                    if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                        self.text(text, &mut out);
                    }
                }
                for piece in delta.tool_calls.iter().flatten() {
                    self.tool_piece(piece, &mut out)?;
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.close_block(&mut out);
                self.stop_reason = Some(stop_reason(Some(reason), !self.tools.is_empty()));
                self.complete = true;
            }
        }
        // The usage chunk after the finish reason: the message is whole.
        if choices.is_empty() && self.usage.is_some() && self.stop_reason.is_some() {
            self.close(&mut out);
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.close(&mut out);
        out
    }

    fn is_complete(&self) -> bool {
        self.complete
    }

    fn usage(&self) -> Option<crate::usage::Usage> {
        self.usage.map(|usage| usage.metered())
    }
}
