//! How the mock upstreams answer the SDK scripts, and the answers the shared
//! mocks lack: a tool call (whole and streamed) in OpenAI's chat and
//! Responses formats, and a chat stream with its usage chunk.
//!
//! Each script asks for an answer, a stream, a tool call, the answer to
//! the tool results and a streamed tool call, in that order; the pickers
//! tell them apart by the request itself, whatever key it carries.

use serde_json::{Value, json};

use crate::support::{
    Recorded, Script,
    mock::{anthropic, gemini},
    stream_events,
};

/// The tool call every fixture makes, and its arguments.
pub const CALL_ID: &str = "call_weather_1";
const ARGUMENTS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

/// Whether a request asks for tools and carries no tool result yet, in any
/// dialect: the request a tool call answers.
pub fn asks_for_a_tool(req: &Recorded) -> bool {
    let body = req.body_str();
    let has_tools = req.json().get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let results = ["tool_result", "function_call_output", "functionResponse", "tool_call_id"];
    has_tools && !results.iter().any(|r| body.contains(r))
}

/// Anthropic: tool calls (two whole, one streamed) when asked for.
pub fn anthropic_answers(req: &Recorded) -> Script {
    match (asks_for_a_tool(req), req.wants_stream()) {
        (true, true) => Script::events(anthropic::tool_stream()),
        (true, false) => Script::respond(200, anthropic::message_tools()),
        (false, _) => Script::Ok,
    }
}

/// Gemini: function calls (two whole, one streamed) when asked for.
pub fn gemini_answers(req: &Recorded) -> Script {
    match (asks_for_a_tool(req), req.path.ends_with(":streamGenerateContent")) {
        (true, true) => Script::events(gemini::tool_stream()),
        (true, false) => Script::respond(200, gemini::response_tools()),
        (false, _) => Script::Ok,
    }
}

/// An OpenAI-compatible chat server: a tool call when asked for one,
/// streams with their usage chunk.
pub fn chat_answers(req: &Recorded) -> Script {
    let model = req.model().unwrap_or_default();
    match (asks_for_a_tool(req), req.wants_stream()) {
        (true, true) => Script::events(chat_tool_stream(&model)),
        (true, false) => Script::respond(200, chat_tool_call(&model)),
        (false, true) => Script::events(chat_stream_with_usage(&model)),
        (false, false) => Script::Ok,
    }
}

/// OpenAI's Responses API: a function call when asked for one.
pub fn responses_answers(req: &Recorded) -> Script {
    let model = req.model().unwrap_or_default();
    match (asks_for_a_tool(req), req.wants_stream()) {
        (true, true) => Script::events(response_tool_stream(&model)),
        (true, false) => Script::respond(200, response_tool_call(&model).to_string()),
        (false, _) => Script::Ok,
    }
}

/// A chat completion calling `get_weather`, 80 tokens in, 20 out.
fn chat_tool_call(model: &str) -> String {
    json!({
        "id": "chatcmpl-ToolCall1", "object": "chat.completion", "created": 1_741_569_952, "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": CALL_ID, "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGUMENTS}}]}}],
        "usage": {"prompt_tokens": 80, "completion_tokens": 20, "total_tokens": 100}
    })
    .to_string()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let data = json!({"id": "chatcmpl-ToolStream1", "object": "chat.completion.chunk", "created": 1_741_570_283,
                      "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {data}\n\n")
}

fn usage_chunk(model: &str, tokens_in: u64, tokens_out: u64) -> String {
    let data = json!({"id": "chatcmpl-ToolStream1", "object": "chat.completion.chunk", "created": 1_741_570_283,
                      "model": model, "choices": [],
                      "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                "total_tokens": tokens_in + tokens_out}});
    format!("data: {data}\n\n")
}

/// The shared chat stream fixture with the usage chunk that
/// `stream_options.include_usage` asks for: 19 tokens in, 6 out.
fn chat_stream_with_usage(model: &str) -> Vec<String> {
    let mut events = stream_events(model);
    events.insert(events.len() - 1, usage_chunk(model, 19, 6));
    events
}

/// The same tool call streamed, its arguments in two pieces.
fn chat_tool_stream(model: &str) -> Vec<String> {
    let call = |function: Value, id: Option<&str>| {
        let mut call = json!({"index": 0, "function": function});
        if let Some(id) = id {
            call["id"] = id.into();
            call["type"] = "function".into();
        }
        json!({"tool_calls": [call]})
    };
    vec![
        chunk(model, call(json!({"name": "get_weather", "arguments": ""}), Some(CALL_ID)), None),
        chunk(model, call(json!({"arguments": r#"{"city":"Paris","#}), None), None),
        chunk(model, call(json!({"arguments": r#""unit":"celsius"}"#}), None), None),
        chunk(model, json!({}), Some("tool_calls")),
        usage_chunk(model, 80, 20),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn function_call(status: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": "fc_1", "call_id": CALL_ID, "name": "get_weather",
           "arguments": arguments, "status": status})
}

/// A Responses API `response` calling `get_weather`, 60 tokens in, 15 out.
fn response_tool_call(model: &str) -> Value {
    json!({
        "id": "resp_toolcall1", "object": "response", "created_at": 1_741_476_542, "status": "completed",
        "model": model, "output": [function_call("completed", ARGUMENTS)],
        "usage": {"input_tokens": 60, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 15,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 75}
    })
}

/// The same function call streamed, as the Responses API sends it.
fn response_tool_stream(model: &str) -> Vec<String> {
    let done = response_tool_call(model);
    let mut created = done.clone();
    created["status"] = "in_progress".into();
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let delta = |piece: &str| {
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
               "delta": piece})
    };
    let events = [
        json!({"type": "response.created", "response": created}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": function_call("in_progress", "")}),
        delta(r#"{"city":"Paris","#),
        delta(r#""unit":"celsius"}"#),
        json!({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
               "arguments": ARGUMENTS}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": function_call("completed", ARGUMENTS)}),
        json!({"type": "response.completed", "response": done}),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut event)| {
            event["sequence_number"] = n.into();
            format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap())
        })
        .collect()
}
