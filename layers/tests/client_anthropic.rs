//! Golden tests of the inbound Messages API translator
//! (`client::anthropic::Messages`) against the fixtures in
//! `tests/fixtures/client_anthropic/`:
//!
//! - `requests/*.json`: a Messages request (`messages`) and the chat request
//!   it becomes (`chat`), for the upstream `model` and `stream` flag;
//! - `streams/*.sse`: a chat-completions stream, and in `*.expected` the
//!   Messages events it becomes, byte for byte, however it is cut.
//!
//! Then the refusals, whole answers, stream order, and the translator
//! chained with the outbound Anthropic and Gemini ones, as the proxy runs it.
//!
//! Longer than 600 lines on purpose: it is the one story of this translator,
//! request to stream, and each split would be another test binary to link.

#![cfg(feature = "upstream")]

use std::{fs, path::PathBuf};

use bytes::Bytes;
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::{
        SseEvent, SseFramer, StreamTranslator, TranslateError, anthropic,
        client::{ChainedStream, ClientDialect, ClientHints, ClientRequest, anthropic::Messages},
        gemini,
    },
};
use serde_json::{Value, json};

const UPSTREAM: &str = "gpt-4.1";

fn fixture_dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/client_anthropic").join(kind)
}

/// The fixtures of one kind with this extension, by name.
fn fixtures(kind: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixture_dir(kind);
    let mut found: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&path).unwrap()))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *.{ext} fixtures in {}", dir.display());
    found
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

fn to_chat_as(body: &Value, model: &str, stream: bool) -> Result<Value, TranslateError> {
    let body = body.to_string();
    let chat = Messages.to_chat(&ClientRequest::new(Endpoint::Messages, body.as_bytes(), model, stream))?;
    Ok(json(&chat.body))
}

fn to_chat(body: &Value) -> Result<Value, TranslateError> {
    to_chat_as(body, UPSTREAM, false)
}

/// A request of one user message with these fields added.
fn with(fields: Value) -> Value {
    let mut body =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    body
}

#[test]
fn requests_match_their_goldens() {
    for (name, case) in fixtures("requests", "json") {
        let case = json(&case);
        let model = case["model"].as_str().unwrap();
        let stream = case["stream"].as_bool().unwrap();
        let out = to_chat_as(&case["messages"], model, stream).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out, case["chat"], "{name}: got\n{}\nexpected\n{}", pretty(&out), pretty(&case["chat"]));
    }
}

#[test]
fn what_chat_cannot_carry_is_refused_by_name() {
    let user = |content: Value| with(json!({"messages": [{"role": "user", "content": content}]}));
    let cases = [
        (
            with(json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]})),
            "tools[0] `web_search` is Anthropic's server tool `web_search_20250305`: only Anthropic providers run it",
        ),
        (with(json!({"tools": [{"type": "bash_20250124", "name": "bash"}]})), "server tool `bash_20250124`"),
        (
            with(
                json!({"tools": [{"name": "f", "input_schema": {}}, {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}),
            ),
            "tools[1] `str_replace_based_edit_tool`",
        ),
        (
            with(json!({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]})),
            "only Anthropic providers run it",
        ),
        (
            with(json!({"tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1024}]})),
            "`computer_20250124`",
        ),
        (
            with(json!({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}]})),
            "`mcp_servers` needs Anthropic's MCP connector: only Anthropic providers run it",
        ),
        (with(json!({"tools": [{"description": "no name"}]})), "tools[0] has no name"),
        (with(json!({"tools": {"name": "f"}})), "`tools` must be an array"),
        (
            with(json!({"tools": [{"name": "f", "input_schema": "object"}]})),
            "tools[0].input_schema must be a JSON schema object",
        ),
        (
            with(json!({"tools": [{"name": "f"}], "tool_choice": {"type": "function"}})),
            "`tool_choice.type` `function` is not one of",
        ),
        (with(json!({"tools": [{"name": "f"}], "tool_choice": "auto"})), "`tool_choice` must be an object"),
        (
            with(json!({"tools": [{"name": "f"}], "tool_choice": {"type": "tool"}})),
            "`tool_choice.name` must be a string",
        ),
        (with(json!({"thinking": {"type": "enabled"}})), "`thinking.budget_tokens` must be"),
        (with(json!({"thinking": {"type": "sometimes"}})), "`thinking.type` must be enabled, adaptive or disabled"),
        (with(json!({"output_config": {"effort": "extreme"}})), "`output_config.effort` `extreme` is not one of"),
        (
            with(json!({"output_config": {"format": {"type": "yaml"}}})),
            "`output_config.format.type` must be json_schema",
        ),
        (
            with(json!({"output_format": {"type": "json_schema"}})),
            "`output_format.schema` must be a JSON schema object",
        ),
        (with(json!({"max_tokens": "lots"})), "`max_tokens` must be a non-negative integer"),
        (with(json!({"temperature": "hot"})), "`temperature` must be a number"),
        (with(json!({"stop_sequences": "END"})), "`stop_sequences` must be an array of strings"),
        (with(json!({"metadata": {"user_id": 7}})), "`metadata.user_id` must be a string"),
        (with(json!({"messages": []})), "`messages` is empty"),
        (with(json!({"messages": null})), "`messages` is required"),
        (with(json!({"system": [{"type": "image"}]})), "system[0] must be a text block"),
        (
            with(json!({"messages": [{"role": "system", "content": "x"}]})),
            "messages[0] has role `system`; expected user or assistant",
        ),
        (with(json!({"messages": [{"content": "x"}]})), "messages[0] has no role"),
        (user(json!(7)), "messages[0].content must be a string or an array of content blocks"),
        (user(json!([{"text": "untyped"}])), "messages[0].content[0] has no type"),
        (
            user(json!([{"type": "search_result", "source": "s", "title": "t", "content": []}])),
            "messages[0].content[0] is a `search_result` block, which only Anthropic providers take",
        ),
        (
            user(json!([{"type": "image", "source": {"type": "file", "file_id": "file_011"}}])),
            "images by file_id live at Anthropic",
        ),
        (
            user(json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}])),
            "messages[0].content[0].source has no `data` string",
        ),
        (
            user(json!([{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}])),
            "documents by URL cannot be sent",
        ),
        (
            user(json!([{"type": "document", "source": {"type": "file", "file_id": "file_011"}}])),
            "documents by file_id live at Anthropic",
        ),
        (
            user(json!([{"type": "tool_result", "content": "x"}])),
            "messages[0].content[0] (tool_result) has no tool_use_id",
        ),
        (
            with(json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}]}]})),
            "messages[1].content[0] is a `server_tool_use` block, which only Anthropic providers take",
        ),
        (
            with(json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]})),
            "messages[1].content[0].input must be a JSON object",
        ),
        (
            with(json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
            {"type": "tool_use", "name": "f", "input": {}}]}]})),
            "messages[1].content[0] has no `id` string",
        ),
    ];
    for (body, expected) in cases {
        let error = to_chat(&body).expect_err(&body.to_string());
        assert!(error.0.contains(expected), "{body}:\n  got      {error}\n  expected {expected:?}");
    }
    assert!(Messages.to_chat(&ClientRequest::new(Endpoint::Messages, b"[1]", UPSTREAM, false)).is_err());
    assert!(Messages.to_chat(&ClientRequest::new(Endpoint::Messages, b"{oops", UPSTREAM, false)).is_err());
    // Harmless values of the refused fields pass.
    for fields in
        [json!({"mcp_servers": []}), json!({"tools": [{"type": "custom", "name": "f"}]}), json!({"mcp_servers": null})]
    {
        assert!(to_chat(&with(fields.clone())).is_ok(), "{fields}");
    }
}

#[test]
fn thinking_becomes_a_reasoning_effort() {
    let cases = [
        (json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}), json!("low")),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 4095}}), json!("low")),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 4096}}), json!("medium")),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 16383}}), json!("medium")),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 16384}}), json!("high")),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 63999}}), json!("high")),
        (json!({"thinking": {"type": "disabled"}}), Value::Null),
        (json!({"thinking": {"type": "disabled"}, "output_config": {"effort": "low"}}), Value::Null),
        (json!({"thinking": {"type": "adaptive"}}), json!("high")),
        (json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}), json!("low")),
        (json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}), json!("high")),
        (json!({"output_config": {"effort": "medium"}}), json!("medium")),
        (json!({"thinking": null, "output_config": {}}), Value::Null),
        (json!({}), Value::Null),
    ];
    for (fields, effort) in cases {
        let out = to_chat(&with(fields.clone())).unwrap();
        assert_eq!(out.get("reasoning_effort").cloned().unwrap_or(Value::Null), effort, "{fields}");
    }
}

#[test]
fn tool_choices_become_chat_tool_choices() {
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    let cases = [
        (json!({"type": "auto"}), json!("auto"), None),
        (json!({"type": "any"}), json!("required"), None),
        (json!({"type": "none"}), json!("none"), None),
        (json!({"type": "tool", "name": "f"}), json!({"type": "function", "function": {"name": "f"}}), None),
        (json!({"type": "auto", "disable_parallel_tool_use": true}), json!("auto"), Some(false)),
        (json!({"type": "any", "disable_parallel_tool_use": false}), json!("required"), None),
        (
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
            json!({"type": "function", "function": {"name": "f"}}),
            Some(false),
        ),
        // Parallelism means nothing when no tool may be called.
        (json!({"type": "none", "disable_parallel_tool_use": true}), json!("none"), None),
    ];
    for (choice, expected, parallel) in cases {
        let out = to_chat(&with(json!({"tools": tools, "tool_choice": choice}))).unwrap();
        assert_eq!(out["tool_choice"], expected, "{choice}");
        assert_eq!(out.get("parallel_tool_calls").and_then(Value::as_bool), parallel, "{choice}");
    }
    // No tools: no choice either, and none without tool_choice.
    let out = to_chat(&with(json!({"tool_choice": {"type": "any"}}))).unwrap();
    assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
    let out = to_chat(&with(json!({"tools": tools}))).unwrap();
    assert!(out.get("tool_choice").is_none() && out.get("parallel_tool_calls").is_none());
}

// === Whole answers ===

fn answer(chat: Value) -> Value {
    json(&Messages.answer(chat.to_string().as_bytes(), "claude-via-gpt", &ClientHints::default()).unwrap())
}

fn completion(message: Value, finish_reason: Value, usage: Value) -> Value {
    json!({"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion", "created": 1_741_569_952,
        "model": "gpt-4.1-2025-04-14", "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage})
}

#[test]
fn answers_match_their_goldens() {
    let usage = json!({"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29});
    let text = answer(completion(
        json!({"role": "assistant", "content": "Hello!", "refusal": null}),
        json!("stop"),
        usage.clone(),
    ));
    assert_eq!(
        text,
        json!({"id": "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT", "type": "message", "role": "assistant", "model": "claude-via-gpt",
            "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 19, "output_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
    );

    let tools = answer(completion(
        json!({"role": "assistant", "content": null, "reasoning_content": "The user wants weather.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            {"id": "call_3", "type": "function", "function": {"name": "broken", "arguments": "{\"city\": \"Par"}}]}),
        json!("tool_calls"),
        json!({"prompt_tokens": 2006, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1920}}),
    ));
    assert_eq!(
        tools["content"],
        json!([
            {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            {"type": "tool_use", "id": "call_3", "name": "broken", "input": {"_raw": "{\"city\": \"Par"}}
        ])
    );
    assert_eq!(tools["stop_reason"], "tool_use");
    assert_eq!(
        tools["usage"],
        json!({"input_tokens": 86, "output_tokens": 300, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1920})
    );

    // OpenRouter names it `reasoning`; text after thinking.
    let reasoning = answer(completion(
        json!({"role": "assistant", "content": "4", "reasoning": "2+2"}),
        json!("stop"),
        usage.clone(),
    ));
    assert_eq!(
        reasoning["content"],
        json!([{"type": "thinking", "thinking": "2+2", "signature": ""}, {"type": "text", "text": "4"}])
    );

    for (finish, stop) in [
        (json!("stop"), "end_turn"),
        (json!("length"), "max_tokens"),
        (json!("tool_calls"), "tool_use"),
        (json!("function_call"), "tool_use"),
        (json!("content_filter"), "refusal"),
        (Value::Null, "end_turn"),
        (json!("a_reason_from_the_future"), "end_turn"),
    ] {
        let out = answer(completion(json!({"role": "assistant", "content": "x"}), finish.clone(), usage.clone()));
        assert_eq!(out["stop_reason"], stop, "{finish}");
    }
    // Servers that finish tool calls with `stop` still ask for them.
    let out = answer(completion(
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
        json!("stop"),
        usage,
    ));
    assert_eq!(out["stop_reason"], "tool_use");
}

#[test]
fn answer_edge_cases() {
    // No id, no usage, an empty message: still a message.
    let out = answer(json!({"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}));
    assert!(out["id"].as_str().unwrap().starts_with("msg_") && out["id"].as_str().unwrap().len() == 28, "{out}");
    assert_eq!(out["content"], json!([]));
    assert_eq!(out["usage"]["input_tokens"], 0);
    // The outbound translator's ids come back as they were.
    let out =
        answer(json!({"id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL", "choices": [{"message": {"content": "a"}}]}));
    assert_eq!(out["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    // A refusal is the text; a tool call without id gets one.
    let out = answer(json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that.",
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}, "finish_reason": "content_filter"}]}));
    assert_eq!(out["content"][0], json!({"type": "text", "text": "I can't help with that."}));
    assert!(out["content"][1]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(out["content"][1]["input"], json!({"a": 1}));
    assert_eq!(out["stop_reason"], "refusal");

    for (body, expected) in [
        (&b"nope"[..], "not JSON"),
        (b"[]", "not a JSON object"),
        (br#"{"error": {"message": "Rate limit reached", "type": "requests"}}"#, "Rate limit reached"),
        (br#"{"id": "x", "choices": []}"#, "no choices"),
    ] {
        let error = Messages.answer(body, "m", &ClientHints::default()).unwrap_err();
        assert!(error.0.contains(expected), "{error}");
    }
}

// === Streams ===

/// The chat stream through a framer and the translator, fed in these pieces.
fn translate<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<Bytes>, TranslateError> {
    let mut framer = SseFramer::new();
    let mut translator = Messages.stream("claude-via-gpt", &ClientHints::default());
    let mut out = Vec::new();
    for piece in pieces {
        for event in framer.push(piece) {
            out.extend(translator.event(&event)?);
        }
    }
    if let Some(event) = framer.finish() {
        out.extend(translator.event(&event)?);
    }
    assert!(translator.is_complete());
    out.extend(translator.finish());
    assert!(translator.finish().is_empty(), "closing events go out once");
    Ok(out)
}

fn show(events: &[Bytes]) -> String {
    events.iter().map(|e| String::from_utf8_lossy(e)).collect()
}

#[test]
fn streams_match_their_goldens_whatever_the_split() {
    for (name, stream) in fixtures("streams", "sse") {
        let expected = fs::read(fixture_dir("streams").join(name.replace(".sse", ".expected"))).unwrap();
        let whole = translate([&stream[..]]).unwrap();
        assert_eq!(show(&whole), String::from_utf8(expected).unwrap(), "{name}");
        for cut in 0..=stream.len() {
            let (head, tail) = stream.split_at(cut);
            assert_eq!(translate([head, tail]).unwrap(), whole, "{name}: cut at byte {cut}");
        }
        for size in 1..=64 {
            assert_eq!(translate(stream.chunks(size)).unwrap(), whole, "{name}: pieces of {size} bytes");
        }
    }
}

/// One event's name and data, checking its framing.
fn parse_event(event: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(event).unwrap();
    let rest = text.strip_prefix("event: ").unwrap_or_else(|| panic!("no event name: {text:?}"));
    let (name, rest) = rest.split_once('\n').unwrap();
    let data = rest.strip_prefix("data: ").and_then(|d| d.strip_suffix("\n\n")).unwrap();
    assert!(!data.contains('\n'), "{text:?}");
    let data = json(data.as_bytes());
    assert_eq!(data["type"], name, "{text:?}");
    (name.to_owned(), data)
}

/// The message a Messages stream builds, checking Anthropic's order on the
/// way: `message_start` first, blocks one at a time with indexes from 0,
/// deltas of the open block's kind, `message_delta` then `message_stop` last.
fn accumulate(events: &[Bytes]) -> Value {
    let events: Vec<_> = events.iter().map(|e| parse_event(e)).collect();
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
    let mut message = events[0].1["message"].clone();
    let mut open: Option<(u64, String)> = None;
    let mut partial_json = String::new();
    for (name, data) in &events[1..events.len() - 1] {
        let blocks = message["content"].as_array_mut().unwrap();
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "a block starts while another is open");
                assert_eq!(data["index"], blocks.len(), "indexes go up from 0");
                open = Some((blocks.len() as u64, data["content_block"]["type"].as_str().unwrap().to_owned()));
                blocks.push(data["content_block"].clone());
                partial_json.clear();
            }
            "content_block_delta" => {
                let (index, kind) = open.as_ref().expect("a delta outside a block");
                assert_eq!(data["index"], *index);
                let block = blocks.last_mut().unwrap();
                let delta = &data["delta"];
                match (kind.as_str(), delta["type"].as_str().unwrap()) {
                    ("text", "text_delta") => {
                        block["text"] =
                            format!("{}{}", block["text"].as_str().unwrap(), delta["text"].as_str().unwrap()).into();
                    }
                    ("thinking", "thinking_delta") => {
                        let thinking =
                            format!("{}{}", block["thinking"].as_str().unwrap(), delta["thinking"].as_str().unwrap());
                        block["thinking"] = thinking.into();
                    }
                    ("tool_use", "input_json_delta") => partial_json.push_str(delta["partial_json"].as_str().unwrap()),
                    (kind, delta) => panic!("a {delta} in a {kind} block"),
                }
            }
            "content_block_stop" => {
                let (index, kind) = open.take().expect("a stop outside a block");
                assert_eq!(data["index"], index);
                if kind == "tool_use" && !partial_json.is_empty() {
                    blocks.last_mut().unwrap()["input"] = json(partial_json.as_bytes());
                }
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta with a block open");
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["usage"] = data["usage"].clone();
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(events[events.len() - 2].0, "message_delta");
    message
}

fn chunk(delta: Value, finish_reason: Value) -> String {
    json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    .to_string()
}

fn events_of(datas: &[String]) -> (Result<Vec<Bytes>, TranslateError>, Box<dyn StreamTranslator>) {
    let mut translator = Messages.stream("claude-via-gpt", &ClientHints::default());
    let mut out = Vec::new();
    for data in datas {
        match translator.event(&SseEvent { event: None, data: data.clone() }) {
            Ok(events) => out.extend(events),
            Err(e) => return (Err(e), translator),
        }
    }
    (Ok(out), translator)
}

fn names(events: &[Bytes]) -> Vec<String> {
    events.iter().map(|e| parse_event(e).0).collect()
}

#[test]
fn stream_events_come_in_anthropics_order() {
    let stream = fs::read(fixture_dir("streams").join("text_reasoning_tools.sse")).unwrap();
    let events = translate([&stream[..]]).unwrap();
    let events: Vec<_> = events.iter().map(|e| parse_event(e)).collect();
    let expected: &[(&str, Value)] = &[
        (
            "message_start",
            json!({"message": {"id": "msg_AbC123", "type": "message", "role": "assistant",
            "model": "claude-via-gpt", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ),
        (
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ),
        ("content_block_delta", json!({"index": 0, "delta": {"type": "thinking_delta", "thinking": "The user wants"}})),
        ("content_block_delta", json!({"index": 0, "delta": {"type": "thinking_delta", "thinking": " two files."}})),
        ("content_block_stop", json!({"index": 0})),
        ("content_block_start", json!({"index": 1, "content_block": {"type": "text", "text": ""}})),
        ("content_block_delta", json!({"index": 1, "delta": {"type": "text_delta", "text": "Reading both"}})),
        ("content_block_delta", json!({"index": 1, "delta": {"type": "text_delta", "text": " — «é» ✓"}})),
        ("content_block_stop", json!({"index": 1})),
        (
            "content_block_start",
            json!({"index": 2, "content_block": {"type": "tool_use", "id": "call_A", "name": "read_file", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"path\":"}}),
        ),
        (
            "content_block_delta",
            json!({"index": 2, "delta": {"type": "input_json_delta", "partial_json": " \"a.txt\"}"}}),
        ),
        ("content_block_stop", json!({"index": 2})),
        (
            "content_block_start",
            json!({"index": 3, "content_block": {"type": "tool_use", "id": "call_B", "name": "read_file", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"path\": \"b.txt\"}"}}),
        ),
        ("content_block_stop", json!({"index": 3})),
        (
            "message_delta",
            json!({"delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 30, "output_tokens": 57, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1200}}),
        ),
        ("message_stop", json!({})),
    ];
    assert_eq!(events.len(), expected.len(), "{events:#?}");
    for (i, ((name, data), (want_name, want))) in events.iter().zip(expected).enumerate() {
        assert_eq!(name, want_name, "event {i}");
        let mut want = want.clone();
        want["type"] = (*want_name).into();
        assert_eq!(data, &want, "event {i} ({name})");
    }
}

#[test]
fn interleaved_text_and_reasoning_open_new_blocks() {
    let datas = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "a"}), Value::Null),
        chunk(json!({"reasoning": "r"}), Value::Null),
        chunk(json!({"content": "b", "reasoning_content": "s"}), Value::Null),
        chunk(json!({}), json!("stop")),
        "[DONE]".to_owned(),
    ];
    let (events, translator) = events_of(&datas);
    let message = accumulate(&events.unwrap());
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "rs", "signature": ""}, {"type": "text", "text": "b"}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(translator.is_complete());
    assert_eq!(translator.usage(), None, "no usage chunk came");
}

#[test]
fn message_delta_waits_for_the_usage() {
    let finish = chunk(json!({}), json!("length"));
    let usage =
        json!({"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).to_string();
    let (events, translator) = events_of(&[chunk(json!({"content": "long"}), Value::Null), finish.clone()]);
    let events = events.unwrap();
    assert_eq!(names(&events).last().unwrap(), "content_block_stop", "the finish reason closes the block only");
    assert!(translator.is_complete());

    let (events, mut translator) = events_of(&[finish.clone(), usage.clone(), "[DONE]".to_owned()]);
    let names_ = names(&events.unwrap());
    assert_eq!(names_, ["message_start", "message_delta", "message_stop"]);
    assert!(translator.finish().is_empty(), "nothing is owed after message_stop");
    let usage = translator.usage().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));

    // Without usage, [DONE] or finish() closes the message, once.
    let (events, mut translator) = events_of(&[chunk(json!({"content": "x"}), Value::Null), finish]);
    let mut events = events.unwrap();
    events.extend(translator.finish());
    let message = accumulate(&events);
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 0);
    assert!(translator.finish().is_empty());
}

#[test]
fn a_cut_stream_is_incomplete_and_an_error_chunk_fails() {
    let stream = fs::read(fixture_dir("streams").join("text_reasoning_tools.sse")).unwrap();
    let text = String::from_utf8(stream).unwrap();
    let cut = text.find("\"finish_reason\":\"tool_calls\"").unwrap();
    let cut = text[..cut].rfind("data: ").unwrap();
    let mut framer = SseFramer::new();
    let mut translator = Messages.stream("m", &ClientHints::default());
    for event in framer.push(&text.as_bytes()[..cut]) {
        translator.event(&event).unwrap();
    }
    assert!(!translator.is_complete());
    assert_eq!(translator.usage(), None);

    let error =
        json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}});
    let (result, _) = events_of(&[chunk(json!({"content": "a"}), Value::Null), error.to_string()]);
    assert_eq!(result.unwrap_err(), TranslateError::new("The server had an error while processing your request."));
    let (result, _) = events_of(&["{not json".to_owned()]);
    assert!(result.is_err());

    // A tool call's arguments after another block started cannot be carried.
    let piece = |index: u64, id: Option<&str>, args: &str| {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            call["id"] = id.into();
            call["function"]["name"] = "f".into();
        }
        chunk(json!({"tool_calls": [call]}), Value::Null)
    };
    let (result, _) = events_of(&[piece(0, Some("a"), "{"), piece(1, Some("b"), "{}"), piece(0, None, "}")]);
    assert!(result.unwrap_err().0.contains("interleaved"));
    // ... but an empty piece for it is harmless.
    let (result, _) = events_of(&[piece(0, Some("a"), "{}"), piece(1, Some("b"), "{}"), piece(0, None, "")]);
    assert!(result.is_ok());
}

#[test]
fn tool_calls_without_index_are_told_apart_by_id() {
    let call = |id: &str, args: &str| {
        chunk(
            json!({"tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": args}}]}),
            Value::Null,
        )
    };
    let (events, mut translator) =
        events_of(&[call("x", "{\"a\":1}"), call("y", "{\"b\":2}"), chunk(json!({}), json!("stop"))]);
    let mut events = events.unwrap();
    events.extend(translator.finish());
    let message = accumulate(&events);
    assert_eq!(
        message["content"],
        json!([{"type": "tool_use", "id": "x", "name": "f", "input": {"a": 1}}, {"type": "tool_use", "id": "y", "name": "f", "input": {"b": 2}}])
    );
    assert_eq!(message["stop_reason"], "tool_use", "tool calls finished with `stop` still ask for them");
}

// === count_tokens ===

#[test]
fn count_tokens_estimates_the_whole_request() {
    let count = |body: Value| {
        let body = body.to_string();
        let out =
            Messages.count_tokens(&ClientRequest::new(Endpoint::MessagesCountTokens, body.as_bytes(), "m", false));
        json(&out.unwrap())
    };
    // 12 characters: 3 tokens, and 4 for the message.
    assert_eq!(
        count(json!({"model": "m", "messages": [{"role": "user", "content": "Hello, world"}]})),
        json!({"input_tokens": 7})
    );
    let tool = json!({"name": "get_weather", "input_schema": {"type": "object"}});
    let tool_tokens = (tool.to_string().chars().count() as u64).div_ceil(4);
    let out = count(json!({"model": "m", "system": [{"type": "text", "text": "Be brief"}], "tools": [tool],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(10_000)}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "12345678"}]}]}));
    // system 2, messages 3 x 4, "abcd" 1, the image 1600, "f" 1 + "{}" 1, the result 2, the tool.
    assert_eq!(out["input_tokens"], 2 + 12 + 1 + 1600 + 2 + 2 + tool_tokens);
    for body in [&b"{}"[..], b"[]", b"oops"] {
        assert!(Messages.count_tokens(&ClientRequest::new(Endpoint::MessagesCountTokens, body, "m", false)).is_err());
    }
}

// === Through the outbound translators, as the proxy runs them ===

/// A typical Claude Code conversation: tools, images, tool results, thinking.
fn typical_request() -> Value {
    json(&fs::read(fixture_dir("requests").join("tools_multi_turn.json")).unwrap())["messages"].clone()
}

#[test]
fn requests_go_on_through_the_outbound_translators() {
    for (name, case) in fixtures("requests", "json") {
        let case = json(&case);
        let chat = to_chat(&case["messages"]).unwrap().to_string();
        // What the outbound translator cannot express either, the fixture names.
        match (anthropic::chat_request(chat.as_bytes(), "claude-sonnet-4-5", false), case["anthropic_refuses"].as_str())
        {
            (Ok(_), None) => {}
            (Err(e), Some(expected)) if e.0.contains(expected) => {}
            (result, expected) => {
                panic!("{name}: anthropic gave {result:?} for {chat}, expected a refusal {expected:?}")
            }
        }
        gemini::chat_request(chat.as_bytes(), "gemini-2.5-flash", false)
            .unwrap_or_else(|e| panic!("{name}: gemini refused {chat}: {e}"));
    }
}

#[test]
fn a_round_trip_through_the_outbound_anthropic_translator_keeps_the_request() {
    let mut original = typical_request();
    let chat = to_chat(&original).unwrap().to_string();
    let back = json(&anthropic::chat_request(chat.as_bytes(), "claude-sonnet-4-5", false).unwrap());
    // What chat completions has no word for goes: thinking blocks,
    // cache_control, and the images of tool results move after them.
    let messages = original["messages"].as_array_mut().unwrap();
    messages[1]["content"].as_array_mut().unwrap().drain(..2);
    messages[2]["content"][1] =
        json!({"type": "tool_result", "tool_use_id": "toolu_01B", "content": "(attached below)"});
    messages[2]["content"].as_array_mut().unwrap().insert(
        2,
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}),
    );
    messages[4]["content"][0] = json!({"type": "tool_result", "tool_use_id": "toolu_01C",
        "content": "Error: File not found\n\n(cwd /repo)"});
    for message in messages.iter_mut() {
        if let Value::String(text) = &message["content"] {
            message["content"] = json!([{"type": "text", "text": text}]);
        }
        for block in message["content"].as_array_mut().unwrap() {
            if let Value::String(text) = &block["content"] {
                block["content"] = text.clone().into();
            }
        }
    }
    original["tools"][0].as_object_mut().unwrap().remove("cache_control");
    original["tools"][1].as_object_mut().unwrap().remove("type");
    original["stream"] = false.into();
    assert_eq!(back, original, "got\n{}\nexpected\n{}", pretty(&back), pretty(&original));

    // Thinking budgets come back as they went.
    for budget in [1024, 4096, 16384] {
        let chat =
            to_chat(&with(json!({"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": budget}})))
                .unwrap()
                .to_string();
        let back = json(&anthropic::chat_request(chat.as_bytes(), "claude-sonnet-4-5", false).unwrap());
        assert_eq!(back["thinking"], json!({"type": "enabled", "budget_tokens": budget}));
    }
}

/// A provider's stream chained into the Messages translator, as the proxy
/// runs it, fed in pieces of `size` bytes.
fn chained(provider: Box<dyn StreamTranslator>, stream: &[u8], size: usize) -> (Vec<Bytes>, ChainedStream) {
    let client = Messages.stream("claude-via-x", &ClientHints::default());
    let mut chain = ChainedStream::new(Some(provider), client);
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    for piece in stream.chunks(size) {
        for event in framer.push(piece) {
            out.extend(chain.event(&event).unwrap());
        }
    }
    if let Some(event) = framer.finish() {
        out.extend(chain.event(&event).unwrap());
    }
    assert!(chain.is_complete());
    out.extend(chain.finish());
    (out, chain)
}

#[test]
fn anthropic_streams_come_back_as_they_were() {
    let stream =
        fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic/streams/text_and_tools.sse"))
            .unwrap();
    // What Anthropic sent, as the SDK accumulates it.
    let mut direct = Vec::new();
    for event in SseFramer::new().push(&stream) {
        if event.event.as_deref() != Some("ping") {
            direct.push(Bytes::from(format!("event: {}\ndata: {}\n\n", event.event.unwrap(), event.data)));
        }
    }
    let mut sent = accumulate(&direct);
    for size in [1, 7, stream.len()] {
        let (events, chain) =
            chained(Box::new(anthropic::ChatStream::new("claude-sonnet-4-5", true, 0)), &stream, size);
        let mut got = accumulate(&events);
        assert_eq!(got["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        assert_eq!(got["usage"]["input_tokens"], 472);
        assert_eq!(got["usage"]["output_tokens"], 89);
        let usage = chain.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (472, 89));
        // The model and usage are the proxy's to name and count.
        for message in [&mut got, &mut sent] {
            let message = message.as_object_mut().unwrap();
            message.remove("model");
            message.remove("usage");
        }
        assert_eq!(got, sent, "pieces of {size}");
    }
}

#[test]
fn gemini_streams_become_messages() {
    let stream =
        fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemini/stream_tools.gemini.sse"))
            .unwrap();
    for size in [1, 5, stream.len()] {
        let (events, chain) = chained(Box::new(gemini::ChatStream::new("gemini-2.5-flash", true, 0)), &stream, size);
        let message = accumulate(&events);
        assert_eq!(message["id"], "msg_tools-1");
        assert_eq!(
            message["content"],
            json!([
                {"type": "thinking", "thinking": "Let me check both cities.", "signature": ""},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_tools-1_0", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_tools-1_1", "name": "get_weather", "input": {"city": "Oslo"}}
            ])
        );
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["usage"]["input_tokens"], 80);
        assert_eq!(message["usage"]["output_tokens"], 45);
        let usage = chain.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (80, 45));
    }
}
