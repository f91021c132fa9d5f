//! Anthropic's whole answer as an OpenAI `chat.completion`, and the usage
//! and finish reasons the stream shares.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{TranslateError, fail};
use crate::upstream::dialect::AnswerHints;

/// Token counts as Anthropic reports them; a field that is absent or `null` is unknown.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(super) struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Later counts (`message_delta`'s are cumulative) replace earlier ones.
    pub(super) fn update(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    pub(super) fn openai(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails { cached_tokens: cached }),
        }
    }
}

#[derive(Serialize)]
pub(super) struct Usage {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// The prompt tokens read from Anthropic's cache.
    pub(super) fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens)
    }
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub(super) fn finish_reason(stop_reason: &str, hints: AnswerHints) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        // The forced tool standing for `response_format` was used: the
        // structured answer is complete.
        "tool_use" if hints.json_via_tool => "stop",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and reasons yet to come.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct AnthropicMessage {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Vec<AnthropicBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    thinking: Option<String>,
    id: Option<String>,
    name: Option<String>,
    /// Kept as the model wrote it: it becomes the `arguments` string.
    input: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: CompletionMessage,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct CompletionMessage {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
struct ToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall,
}

#[derive(Serialize)]
struct FunctionCall {
    name: String,
    arguments: String,
}

/// An OpenAI `chat.completion` for Anthropic's whole answer; `model` is the
/// name the client asked for.
pub fn chat_response(body: &[u8], model: &str, created: u64) -> Result<Bytes, TranslateError> {
    completion(body, model, created, AnswerHints::default())
}

/// [`chat_response`], for the request that `hints` came from: with
/// `json_via_tool`, the forced tool's input is the answer's `content`.
pub(super) fn completion(body: &[u8], model: &str, created: u64, hints: AnswerHints) -> Result<Bytes, TranslateError> {
    let message: AnthropicMessage = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("Anthropic's answer is not a Messages API message: {e}")))?;
    if message.kind.as_deref().is_some_and(|k| k != "message") {
        return fail(format!("Anthropic's answer has type `{}`, not `message`", message.kind.unwrap_or_default()));
    }
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block.kind.as_str() {
            "text" => text.get_or_insert_default().push_str(block.text.as_deref().unwrap_or("")),
            "thinking" => reasoning.get_or_insert_default().push_str(block.thinking.as_deref().unwrap_or("")),
            // The tool standing for `response_format`: its input, as the
            // model wrote it, is the structured answer.
            "tool_use" if hints.json_via_tool => {
                text.get_or_insert_default().push_str(block.input.as_deref().map_or("{}", RawValue::get));
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return fail("Anthropic's answer has a tool_use block without id or name");
                };
                let arguments = block.input.map_or_else(|| "{}".to_owned(), |input| input.get().to_owned());
                tool_calls.push(ToolCall { id, kind: "function", function: FunctionCall { name, arguments } });
            }
            // redacted_thinking, server tool blocks: nothing the client can use.
            _ => {}
        }
    }
    let content = match text {
        Some(text) => Some(text),
        None if !tool_calls.is_empty() => None,
        None => Some(String::new()),
    };
    let completion = Completion {
        id: format!("chatcmpl-{}", message.id),
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: CompletionMessage { role: "assistant", content, reasoning_content: reasoning, tool_calls },
            finish_reason: finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn"), hints),
        }],
        usage: message.usage.openai(),
    };
    let body = serde_json::to_vec(&completion)
        .map_err(|e| TranslateError::new(format!("cannot encode the completion: {e}")))?;
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn response(content: Value, stop_reason: Value) -> Value {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": content,
            "stop_reason": stop_reason, "usage": {"input_tokens": 3, "output_tokens": 4}});
        serde_json::from_slice(&chat_response(body.to_string().as_bytes(), "anthropic/x", 5).unwrap()).unwrap()
    }

    #[test]
    fn stop_reasons_become_finish_reasons() {
        for (stop, finish) in [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("pause_turn"), "stop"),
            (json!("model_context_window_exceeded"), "length"),
            (json!("a_reason_from_the_future"), "stop"),
            (Value::Null, "stop"),
        ] {
            let out = response(json!([{"type": "text", "text": "x"}]), stop.clone());
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn an_empty_answer_has_empty_content() {
        let out = response(json!([]), json!("end_turn"));
        assert_eq!(out["choices"][0]["message"], json!({"role": "assistant", "content": ""}));
        assert_eq!(out["usage"], json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}));
    }

    #[test]
    fn answers_that_are_not_messages_fail() {
        for body in [
            &b"not json"[..],
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            br#"{"id":"msg_1","type":"error","content":[]}"#,
            br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","input":{}}]}"#,
        ] {
            assert!(chat_response(body, "m", 0).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    /// A forced-tool answer as the Messages API sends it.
    const JSON_ANSWER: &str = r#"{"id":"msg_01Aq9w938a90dw8q","type":"message","role":"assistant",
        "model":"claude-sonnet-4-5-20250929","content":[{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9",
        "name":"math_response","input":{"steps":["8x = -30","x = -3.75"],"final_answer":"x = -3.75"}}],
        "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":89}}"#;

    fn json_answer(body: &str) -> Value {
        let hints = AnswerHints { json_via_tool: true, ..AnswerHints::default() };
        serde_json::from_slice(&completion(body.as_bytes(), "claude-sonnet-4-5", 5, hints).unwrap()).unwrap()
    }

    #[test]
    fn a_forced_tool_answer_is_the_content() {
        let out = json_answer(JSON_ANSWER);
        let message = &out["choices"][0]["message"];
        assert_eq!(
            message,
            &json!({"role": "assistant", "content": r#"{"steps":["8x = -30","x = -3.75"],"final_answer":"x = -3.75"}"#})
        );
        let parsed: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
        assert_eq!(parsed["final_answer"], "x = -3.75");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["usage"]["completion_tokens"], 89);

        // Cut short, it says so; without the hint it is the tool call it was.
        let cut = JSON_ANSWER.replace(r#""stop_reason":"tool_use""#, r#""stop_reason":"max_tokens""#);
        assert_eq!(json_answer(&cut)["choices"][0]["finish_reason"], "length");
        let plain: Value =
            serde_json::from_slice(&chat_response(JSON_ANSWER.as_bytes(), "claude-sonnet-4-5", 5).unwrap()).unwrap();
        assert_eq!(plain["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "math_response");
        assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");

        // A refusal in words instead of the tool stays words.
        let refused = json_answer(
            r#"{"id":"msg_2","type":"message","content":[{"type":"text","text":"I can't help with that."}],
            "stop_reason":"refusal","usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(refused["choices"][0]["message"]["content"], "I can't help with that.");
        assert_eq!(refused["choices"][0]["finish_reason"], "content_filter");
    }
}
