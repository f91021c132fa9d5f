//! Golden tests of the Responses client dialect against the fixtures in
//! `tests/fixtures/client_responses/` (`BLESS=1` rewrites the goldens of
//! answers and streams from the current output):
//!
//! - `requests/*.json`: a Responses request and the chat request it becomes
//!   (`model` is the upstream name, `stream` the flag passed);
//! - `answers/*.json`: a `chat.completion` and, under `response`, the
//!   `response` object it becomes for the Responses `request` beside it;
//! - `streams/*.sse`: a chat stream, its request in `*.request.json`, and
//!   in `*.expected` the Responses events it becomes (one event's JSON a
//!   line), however the stream is cut.
//!
//! Ids are random and `created_at` is the clock's: the outputs are compared
//! with each id replaced by `<prefix>_<n>` (`n` counting the ids of that
//! prefix in order of appearance, so equal ids stay equal) and `created_at`
//! by 0.

#![cfg(feature = "upstream")]

use std::{collections::HashMap, fs, path::PathBuf};

use bytes::Bytes;
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::{
        SseFramer, StreamTranslator, anthropic,
        client::{ChainedStream, ClientDialect, ClientHints, ClientRequest, responses::Responses},
        gemini,
    },
};
use serde_json::{Value, json};

fn path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
}

fn blessing() -> bool {
    std::env::var_os("BLESS").is_some()
}

/// The fixtures in `client_responses/<dir>` ending in `suffix`, by name.
fn fixtures(dir: &str, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = path("client_responses").join(dir);
    let mut found: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&path).unwrap()))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *{suffix} fixtures in {}", dir.display());
    found
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

fn to_chat(request: &Value, model: &str, stream: bool) -> Result<(Value, ClientHints), String> {
    let body = serde_json::to_vec(request).unwrap();
    let chat = Responses.to_chat(&ClientRequest::new(Endpoint::Responses, &body, model, stream)).map_err(|e| e.0)?;
    Ok((json(&chat.body), chat.hints))
}

/// Replaces random ids and clock times by stable stand-ins.
#[derive(Default)]
struct Normalizer(HashMap<String, String>, HashMap<String, usize>);

impl Normalizer {
    fn value(&mut self, value: &mut Value) {
        match value {
            Value::String(s) => {
                let Some((prefix, hex)) = s.split_once('_') else { return };
                let random = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
                if random && ["resp", "msg", "rs", "fc", "ctc", "call"].contains(&prefix) {
                    let prefix = prefix.to_owned();
                    let next = self.1.entry(prefix.clone()).or_default();
                    let stand_in = self.0.entry(s.clone()).or_insert_with(|| {
                        *next += 1;
                        format!("{prefix}_{next}")
                    });
                    *s = stand_in.clone();
                }
            }
            Value::Array(values) => values.iter_mut().for_each(|v| self.value(v)),
            Value::Object(object) => {
                for (key, value) in object.iter_mut() {
                    if key == "created_at" {
                        *value = json!(0);
                    } else {
                        self.value(value);
                    }
                }
            }
            _ => {}
        }
    }
}

// === requests ===

#[test]
fn requests_match_their_goldens() {
    for (name, case) in fixtures("requests", ".json") {
        let case = json(&case);
        let model = case["model"].as_str().unwrap();
        let stream = case["stream"].as_bool().unwrap();
        let (out, _) = to_chat(&case["responses"], model, stream).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out, case["chat"], "{name}: got\n{}\nexpected\n{}", pretty(&out), pretty(&case["chat"]));
    }
}

#[test]
fn what_chat_cannot_express_is_refused_with_what_to_do() {
    let input = json!([{"role": "user", "content": "hi"}]);
    let with = |field: &str, value: Value| json!({"model": "m", "input": input, field: value});
    let item = |item: Value| json!({"model": "m", "input": [item]});
    let tool = |tool: Value| json!({"model": "m", "input": "hi", "tools": [tool]});
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "must be a JSON object"),
        (json!({"model": "m"}), "`input` is required"),
        (json!({"model": "m", "input": 7}), "`input` must be a string or an array"),
        (json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}), "`input` has no message"),
        (
            with("previous_response_id", json!("resp_1")),
            "`previous_response_id` continues a conversation OpenAI stored",
        ),
        (with("previous_response_id", json!("resp_1")), "send the whole conversation in `input`"),
        (with("conversation", json!("conv_1")), "`conversation` names a conversation OpenAI stored"),
        (with("prompt", json!({"id": "pmpt_1"})), "`prompt` names a prompt template OpenAI stored"),
        (with("background", json!(true)), "`background: true` needs OpenAI to store the response"),
        (with("top_logprobs", json!(3)), "`top_logprobs` is not translated"),
        (with("instructions", json!(["x"])), "`instructions` must be a string"),
        (with("max_output_tokens", json!(-1)), "`max_output_tokens` must be a non-negative integer"),
        (with("temperature", json!("hot")), "`temperature` must be a number"),
        (with("reasoning", json!({"effort": "extreme"})), "`reasoning.effort` `extreme` is not one of"),
        (with("text", json!({"format": {"type": "yaml"}})), "`text.format` has type `yaml`"),
        (with("text", json!({"format": {"type": "json_schema", "schema": {}}})), "needs a `name`"),
        (with("user", json!(7)), "`user` / `safety_identifier` must be a string"),
        (
            item(json!({"type": "item_reference", "id": "msg_1"})),
            "input[0] is an item_reference, which needs OpenAI's stored items",
        ),
        (
            item(json!({"type": "web_search_call", "id": "ws_1"})),
            "input[0] is a `web_search_call` item, from a tool that runs only at OpenAI",
        ),
        (item(json!({"type": "local_shell_call_output", "call_id": "c"})), "runs only at OpenAI"),
        (item(json!({"type": "hologram"})), "input[0] has type `hologram`"),
        (item(json!({"content": "no role"})), "input[0] has no type"),
        (item(json!({"role": "robot", "content": "hi"})), "input[0] has role `robot`"),
        (item(json!({"type": "function_call", "name": "f", "arguments": "{}"})), "input[0] has no call_id"),
        (item(json!({"type": "function_call", "call_id": "c", "arguments": "{}"})), "input[0] has no name"),
        (item(json!({"type": "function_call_output", "output": "x"})), "input[0] has no call_id"),
        (item(json!({"type": "custom_tool_call", "call_id": "c", "name": "f"})), "has no `input` string"),
        (
            item(json!({"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]})),
            "input[0].content[0]: images by `file_id` need OpenAI's file storage",
        ),
        (
            item(json!({"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]})),
            "send the file inline as `file_data`",
        ),
        (
            item(json!({"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]})),
            "files by `file_url` are not fetched",
        ),
        (item(json!({"role": "user", "content": [{"type": "input_audio"}]})), "has type `input_audio`"),
        (
            item(json!({"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]})),
            "assistant messages take only text",
        ),
        (
            tool(json!({"type": "web_search_preview"})),
            "tools[0] is OpenAI's built-in `web_search_preview` tool, which runs only at OpenAI; use an openai/ model or remove the tool",
        ),
        (tool(json!({"type": "file_search", "vector_store_ids": []})), "`file_search` tool, which runs only at OpenAI"),
        (tool(json!({"type": "code_interpreter"})), "`code_interpreter`"),
        (tool(json!({"type": "computer_use_preview"})), "`computer_use_preview`"),
        (tool(json!({"type": "image_generation"})), "`image_generation`"),
        (tool(json!({"type": "mcp", "server_label": "x"})), "`mcp`"),
        (tool(json!({"type": "local_shell"})), "`local_shell`"),
        (tool(json!({"type": "function"})), "tools[0] (function) has no name"),
        (tool(json!({"type": "custom", "name": "f", "format": {"type": "grammar"}})), "grammar without a definition"),
        (tool(json!({"type": "teleport", "name": "f"})), "tools[0] has type `teleport`"),
        (
            json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": "sometimes"}),
            "`tool_choice` `sometimes`",
        ),
        (
            json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "file_search"}}),
            "`tool_choice` names OpenAI's built-in `file_search` tool",
        ),
    ];
    for (request, expected) in cases {
        let message = to_chat(&request, "m", false).expect_err("a translate error");
        assert!(message.contains(expected), "{request}: {message:?} should say {expected:?}");
    }
    let long = "r".repeat(10_000);
    let message = to_chat(&item(json!({"role": long, "content": "hi"})), "m", false).unwrap_err();
    assert!(message.len() < 200, "client words are quoted bounded: {message}");
    let not_json = Responses.to_chat(&ClientRequest::new(Endpoint::Responses, b"{", "m", false)).unwrap_err();
    assert!(not_json.0.contains("not valid JSON"), "{not_json}");
}

// === answers ===

fn answer(chat: &Value, hints: &ClientHints) -> Value {
    let out = Responses.answer(&serde_json::to_vec(chat).unwrap(), "client/model", hints).unwrap();
    let mut out = json(&out);
    let id = out["id"].as_str().unwrap();
    assert!(id.len() == 37 && id.starts_with("resp_"), "{id}");
    assert!(out["created_at"].as_u64().unwrap() > 1_700_000_000);
    Normalizer::default().value(&mut out);
    out
}

#[test]
fn answers_match_their_goldens() {
    for (name, bytes) in fixtures("answers", ".json") {
        let mut case = json(&bytes);
        let (_, hints) = to_chat(&case["request"], "m", false).unwrap();
        let out = answer(&case["chat"], &hints);
        if blessing() {
            case["response"] = out.clone();
            fs::write(path("client_responses/answers").join(&name), format!("{}\n", pretty(&case))).unwrap();
        }
        assert_eq!(out, case["response"], "{name}: got\n{}", pretty(&out));
    }
}

/// The official OpenAI SDK's `ResponseUsage` model requires every field of
/// `input_tokens_details` and `output_tokens_details`: a translated usage
/// has them all, whatever the provider reported (found by
/// tests/official_sdks.rs validating answers against the SDK's models).
#[test]
fn usage_has_every_field_the_sdks_require() {
    let usage = |chat_usage: Value| {
        let chat = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": chat_usage});
        answer(&chat, &ClientHints::default())["usage"].clone()
    };
    let bare = usage(json!({"prompt_tokens": 9, "completion_tokens": 3}));
    assert_eq!(
        bare,
        json!({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
               "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12})
    );
    let detailed = usage(json!({"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93,
        "prompt_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 2}}));
    assert_eq!(detailed["input_tokens_details"], json!({"cached_tokens": 40, "cache_write_tokens": 20}));
    assert_eq!(detailed["output_tokens_details"], json!({"reasoning_tokens": 2}));
}

#[test]
fn chat_errors_are_errors() {
    let hints = ClientHints::default();
    let cases: [(&[u8], &str); 4] = [
        (br#"{"error": {"message": "model overloaded", "code": 529}}"#, "model overloaded"),
        (br#"{"choices": []}"#, "no choices"),
        (b"[1]", "not a chat completion"),
        (b"", "not a chat completion"),
    ];
    for (body, expected) in cases {
        let message = Responses.answer(body, "m", &hints).unwrap_err().0;
        assert!(message.contains(expected), "{message:?} should say {expected:?}");
    }
}

// === streams ===

/// The stream through a framer and `translator`, fed in these pieces.
fn drive<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, translator: &mut dyn StreamTranslator) -> Vec<Bytes> {
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    for piece in pieces {
        for event in framer.push(piece) {
            out.extend(translator.event(&event).expect("a well-formed stream translates"));
        }
    }
    if let Some(event) = framer.finish() {
        out.extend(translator.event(&event).unwrap());
    }
    out.extend(translator.finish());
    assert!(translator.finish().is_empty(), "the closing events go out once");
    out
}

/// The events' JSON, normalized, after checking the framing: `event:` is
/// the JSON's `type`, and `sequence_number` counts from 0.
fn events(out: &[Bytes]) -> Vec<Value> {
    let mut normalizer = Normalizer::default();
    let text: String = out.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
    assert!(text.ends_with("\n\n"), "a stream ends with a blank line");
    text.split_terminator("\n\n")
        .enumerate()
        .map(|(i, event)| {
            let (name, data) = event
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not `event: ...\\ndata: ...`: {event:?}"));
            assert!(!data.contains('\n'), "one data line per event: {data:?}");
            let mut data = json(data.as_bytes());
            assert_eq!(data["type"], name, "{event}");
            assert_eq!(data["sequence_number"], i, "{event}");
            normalizer.value(&mut data);
            data
        })
        .collect()
}

fn stream_hints(name: &str) -> ClientHints {
    let request = fs::read(path("client_responses/streams").join(name.replace(".sse", ".request.json"))).unwrap();
    to_chat(&json(&request), "m", true).unwrap().1
}

fn translate<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, hints: &ClientHints) -> Vec<Value> {
    events(&drive(pieces, Responses.stream("client/model", hints).as_mut()))
}

#[test]
fn streams_match_their_goldens_whatever_the_split() {
    for (name, stream) in fixtures("streams", ".sse") {
        let hints = stream_hints(&name);
        let expected_path = path("client_responses/streams").join(name.replace(".sse", ".expected"));
        let whole = translate([&stream[..]], &hints);
        if blessing() {
            let lines: Vec<String> = whole.iter().map(Value::to_string).collect();
            fs::write(&expected_path, lines.join("\n") + "\n").unwrap();
        }
        let expected: Vec<Value> =
            fs::read_to_string(&expected_path).unwrap().lines().map(|l| json(l.as_bytes())).collect();
        for (i, (got, want)) in whole.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "{name}: event {i}");
        }
        assert_eq!(whole.len(), expected.len(), "{name}: event count");
        for cut in 0..=stream.len() {
            let (head, tail) = stream.split_at(cut);
            assert_eq!(translate([head, tail], &hints), expected, "{name}: cut at byte {cut}");
        }
        for size in 1..=16 {
            assert_eq!(translate(stream.chunks(size), &hints), expected, "{name}: pieces of {size} bytes");
        }
    }
}

/// What every client (and Codex CLI in particular) relies on: items open
/// and close in order without interleaving, `output_item.done` carries
/// the whole item, and the final response holds those items and the usage.
fn assert_well_formed(events: &[Value]) {
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(events[0]["response"]["status"], "in_progress");
    let last = events.last().unwrap();
    assert!(["response.completed", "response.incomplete"].contains(&kinds[kinds.len() - 1]), "{kinds:?}");
    let mut open: Option<(u64, &Value)> = None;
    let mut done = Vec::new();
    for event in &events[2..events.len() - 1] {
        let index = event["output_index"].as_u64().expect("item events have an output_index");
        match event["type"].as_str().unwrap() {
            "response.output_item.added" => {
                assert_eq!(open, None, "an item opens only after the last closed");
                assert_eq!(index as usize, done.len());
                open = Some((index, &event["item"]["id"]));
            }
            "response.output_item.done" => {
                assert_eq!(open.take(), Some((index, &event["item"]["id"])));
                done.push(event["item"].clone());
            }
            _ => assert_eq!(open, Some((index, &event["item_id"])), "{event}"),
        }
    }
    assert_eq!(open, None);
    assert_eq!(last["response"]["output"], Value::Array(done));
    assert_eq!(last["response"]["id"], events[0]["response"]["id"]);
}

#[test]
fn stream_events_are_well_formed_and_the_final_response_is_the_whole_answer() {
    for (name, stream) in fixtures("streams", ".sse") {
        let events = translate([&stream[..]], &stream_hints(&name));
        assert_well_formed(&events);
    }
}

fn chunk(delta: Value, finish_reason: Value) -> String {
    format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}))
}

#[test]
fn a_stream_cut_before_its_finish_reason_is_not_complete() {
    let mut stream = Responses.stream("m", &ClientHints::default());
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    for event in framer.push(chunk(json!({"content": "Hel"}), Value::Null).as_bytes()) {
        out.extend(stream.event(&event).unwrap());
    }
    assert!(!stream.is_complete());
    assert_eq!(stream.usage(), None);
    out.extend(stream.finish());
    let events = events(&out);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.failed", "a cut stream never looks completed");
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");

    let mut stream = Responses.stream("m", &ClientHints::default());
    for event in framer.push(chunk(json!({}), json!("stop")).as_bytes()) {
        stream.event(&event).unwrap();
    }
    assert!(stream.is_complete(), "the finish_reason completes it, usage or not");
}

#[test]
fn a_length_stream_is_incomplete_and_usage_is_counted() {
    let stream = chunk(json!({"content": "Once upon"}), Value::Null)
        + &chunk(json!({}), json!("length"))
        + "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n";
    let mut translator = Responses.stream("m", &ClientHints::default());
    let events = events(&drive([stream.as_bytes()], translator.as_mut()));
    assert_well_formed(&events);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(last["response"]["usage"]["total_tokens"], 6);
    assert_eq!(translator.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((4, 2)));
}

#[test]
fn the_final_event_waits_for_the_usage_chunk_or_the_end() {
    let finish_with_usage = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    );
    let usage_chunk = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n";
    let cases = [
        (finish_with_usage.clone() + usage_chunk + "data: [DONE]\n\n", Some(6)),
        (finish_with_usage.clone() + "data: [DONE]\n\n", Some(2)),
        (chunk(json!({"content": "Hi"}), json!("stop")), None),
    ];
    for (stream, total) in cases {
        let events = translate([stream.as_bytes()], &ClientHints::default());
        assert_well_formed(&events);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed", "{stream}");
        assert_eq!(last["response"]["usage"]["total_tokens"].as_u64(), total, "{stream}");
    }
}

#[test]
fn error_chunks_and_broken_chunks_fail_the_stream() {
    let mut framer = SseFramer::new();
    let mut stream = Responses.stream("m", &ClientHints::default());
    let events = framer.push(b"data: {\"error\": {\"message\": \"Rate limited\", \"code\": 429}}\n\ndata: {oops\n\n");
    assert_eq!(stream.event(&events[0]).unwrap_err().0, "Rate limited");
    assert!(stream.event(&events[1]).unwrap_err().0.contains("not valid JSON"));
    let interleaved = chunk(
        json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}),
        Value::Null,
    ) + &chunk(
        json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]}),
        Value::Null,
    ) + &chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), Value::Null);
    let mut stream = Responses.stream("m", &ClientHints::default());
    let results: Vec<_> = framer.push(interleaved.as_bytes()).iter().map(|e| stream.event(e)).collect();
    assert!(results[2].as_ref().unwrap_err().0.contains("interleaved"), "{results:?}");
}

// === end to end: through the existing outbound translators ===

#[test]
fn a_typical_request_goes_through_the_anthropic_and_gemini_translators() {
    let case = json(&fs::read(path("client_responses/requests/tools_multi_turn.json")).unwrap());
    let mut request = case["responses"].clone();
    request["input"].as_array_mut().unwrap().push(json!({"role": "user", "content": [
        {"type": "input_text", "text": "And this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
    ]}));
    request["reasoning"] = json!({"effort": "medium"});
    let (chat, _) = to_chat(&request, "upstream-model", true).unwrap();
    let body = serde_json::to_vec(&chat).unwrap();

    let out = json(&anthropic::chat_request(&body, "claude-sonnet-4-5", true).unwrap());
    let turns = out["messages"].as_array().unwrap();
    assert_eq!(
        turns[1]["content"][1],
        json!({"type": "tool_use", "id": "call_A", "name": "shell", "input": {"command": ["cat", "README.md"]}})
    );
    assert_eq!(turns[2]["content"][0]["tool_use_id"], "call_A");
    assert_eq!(turns.last().unwrap()["content"].as_array().unwrap().last().unwrap()["type"], "image");
    assert_eq!(out["tools"][1]["input_schema"]["required"], json!(["input"]));

    let out = json(&gemini::chat_request(&body, "gemini-2.5-flash", true).unwrap());
    let contents = out["contents"].as_array().unwrap();
    assert_eq!(contents[1]["parts"][1]["functionCall"]["name"], "shell");
    assert!(
        contents.iter().any(|c| c["parts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["functionResponse"]["name"] == "apply_patch"))
    );
    assert_eq!(out["tools"][0]["functionDeclarations"].as_array().unwrap().len(), 3);
}

fn chained(provider: Box<dyn StreamTranslator>, stream: &[u8], hints: &ClientHints) -> Vec<Value> {
    let mut chain = ChainedStream::new(Some(provider), Responses.stream("client/model", hints));
    let out = drive(stream.chunks(9), &mut chain);
    assert!(chain.is_complete());
    events(&out)
}

#[test]
fn anthropic_and_gemini_streams_chain_into_responses_events() {
    let hints = to_chat(
        &json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "get_weather"}]}),
        "m",
        true,
    )
    .unwrap()
    .1;
    let anthropic_stream = fs::read(path("anthropic/streams/text_and_tools.sse")).unwrap();
    let events = chained(Box::new(anthropic::ChatStream::new("m", true, 0)), &anthropic_stream, &hints);
    assert_well_formed(&events);
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["status"], "completed");
    let kinds: Vec<&str> = response["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "function_call", "function_call"]);
    assert_eq!(response["output"][1]["call_id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(response["output"][1]["name"], "get_weather");
    assert!(json(response["output"][1]["arguments"].as_str().unwrap().as_bytes()).is_object());
    assert_eq!(response["usage"]["input_tokens"], 472);

    let gemini_stream = fs::read(path("gemini/stream_tools.gemini.sse")).unwrap();
    let events = chained(Box::new(gemini::ChatStream::new("m", true, 0)), &gemini_stream, &hints);
    assert_well_formed(&events);
    let response = &events.last().unwrap()["response"];
    assert!(response["output"].as_array().unwrap().iter().any(|i| i["type"] == "function_call"), "{response}");
    assert!(response["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

// === input_tokens ===

#[test]
fn input_tokens_are_estimated_in_the_responses_shape() {
    let count = |request: Value| {
        let body = serde_json::to_vec(&request).unwrap();
        let out = Responses.count_tokens(&ClientRequest::new(Endpoint::Responses, &body, "m", false)).unwrap();
        let out = json(&out);
        assert_eq!(out["object"], "response.input_tokens");
        out["input_tokens"].as_u64().unwrap()
    };
    let short = count(json!({"model": "m", "input": "Hi"}));
    assert_eq!(short, 1 + 4);
    let long = count(json!({"model": "m", "instructions": "x".repeat(400), "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "y".repeat(40)}, {"type": "input_image", "image_url": format!("data:image/png;base64,{}", "A".repeat(100_000))}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "z".repeat(4000)}]},
    ], "tools": [{"type": "function", "name": "f"}]}));
    assert!(
        long > 100 + 10 + 768 && long < 1000,
        "the image is not counted by its base64 length, reasoning not at all: {long}"
    );
    let refused = Responses.count_tokens(&ClientRequest::new(Endpoint::Responses, b"[]", "m", false));
    assert!(refused.is_err());
}
