//! Anthropic's stream events as OpenAI `chat.completion.chunk` events.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    TranslateError,
    response::{AnthropicUsage, Usage, finish_reason},
};
use crate::upstream::dialect::{
    AnswerHints, StreamTranslator,
    sse::{self, SseEvent},
};

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
    /// The forced tool standing for `response_format`: its input is the
    /// answer's `content`.
    JsonAnswer,
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
    hints: AnswerHints,
}

impl ChatStream {
    /// `model` is the name the client asked for; `include_usage` adds the
    /// final usage chunk (`choices: []`) OpenAI sends for
    /// `stream_options.include_usage`.
    pub fn new(model: &str, include_usage: bool, created: u64) -> Self {
        Self::with_hints(model, include_usage, created, AnswerHints::default())
    }

    /// [`new`](Self::new), for the request that `hints` came from: with
    /// `json_via_tool`, the forced tool's input streams as `content`.
    pub(super) fn with_hints(model: &str, include_usage: bool, created: u64, hints: AnswerHints) -> Self {
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
            hints,
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
                    "tool_use" if self.hints.json_via_tool => Block::JsonAnswer,
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
                        let Some(fragment) = delta.partial_json.as_deref().filter(|f| !f.is_empty()) else {
                            return Ok(out);
                        };
                        match self.block(data.index) {
                            Some(Block::Tool(index)) => {
                                let call = ToolCallDelta {
                                    index,
                                    id: None,
                                    kind: None,
                                    function: FunctionDelta { name: None, arguments: fragment },
                                };
                                out.push(self.chunk(Delta { tool_calls: Some([call]), ..Delta::default() }, None));
                            }
                            Some(Block::JsonAnswer) => {
                                out.push(self.chunk(Delta { content: Some(fragment), ..Delta::default() }, None));
                            }
                            Some(Block::Other) | None => {}
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
                    out.push(self.chunk(Delta::default(), Some(finish_reason(&reason, self.hints))));
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
        self.ended.then_some(
            crate::usage::Usage::new(usage.prompt_tokens, usage.completion_tokens).with_cached(usage.cached_tokens()),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

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

    /// A forced-tool stream as the Messages API sends it.
    const JSON_STREAM: &str = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"math_response","input":{}}}"#,
        "\n\nevent: ping\n",
        r#"data: {"type": "ping"}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"steps\": [\"8x = -30\""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":", \"x = -3.75\"], \"final_answer\": \"x = -3.75\"}"}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );

    /// The stream cut into `size`-byte pieces, through the framer.
    fn chunks_of(stream: &mut ChatStream, size: usize) -> Vec<Value> {
        let mut framer = sse::SseFramer::new();
        let mut out = Vec::new();
        for piece in JSON_STREAM.as_bytes().chunks(size) {
            for event in framer.push(piece) {
                out.extend(stream.event(&event).unwrap());
            }
        }
        assert!(framer.finish().is_none());
        assert!(stream.is_complete());
        out.extend(stream.finish());
        assert_eq!(&out.pop().unwrap()[..], sse::DONE);
        out.iter().map(|c| serde_json::from_slice(c.strip_prefix(b"data: ").unwrap()).unwrap()).collect()
    }

    #[test]
    fn a_forced_tool_streams_as_content() {
        let hints = AnswerHints { json_via_tool: true, ..AnswerHints::default() };
        for size in [1, 7, 64, JSON_STREAM.len()] {
            let chunks = chunks_of(&mut ChatStream::with_hints("claude-sonnet-4-5", true, 5, hints), size);
            assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()), "{chunks:?}");
            let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            let answer: Value = serde_json::from_str(&content).unwrap();
            assert_eq!(answer, json!({"steps": ["8x = -30", "x = -3.75"], "final_answer": "x = -3.75"}));
            let finish: Vec<&Value> =
                chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
            assert_eq!(finish, [&json!("stop")]);
            assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 89);
        }
        // Without the hint the same stream is the tool call it was.
        let chunks = chunks_of(&mut ChatStream::new("claude-sonnet-4-5", false, 5), 64);
        assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "math_response");
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    }
}
