//! Golden tests of the Anthropic dialect against the fixtures in
//! `tests/fixtures/anthropic/`:
//!
//! - `requests/*.json`: an OpenAI chat request and the Messages request it
//!   becomes (`model` is the upstream name, `stream` the flag passed);
//! - `responses/*.json`: an Anthropic message and the `chat.completion` it
//!   becomes (`model` is the client's name, `created` the timestamp passed);
//! - `streams/*.sse`: a recorded-style Anthropic stream, and in `*.expected`
//!   the OpenAI events it becomes (one chunk's JSON a line, then `[DONE]`),
//!   byte for byte, however the stream is cut into pieces.
//!
//! Adding a fixture adds a case. Error answers are checked here against
//! [`classify`]: a translated error must classify like Anthropic's own.

#![cfg(feature = "upstream")]

use std::{collections::HashMap, fs, path::PathBuf};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use keyrelay_layers::{
    classify::{FailureClass, classify},
    extensions::Endpoint,
    provider::Dialect,
    upstream::dialect::{OutboundRequest, SseFramer, StreamTranslator, anthropic, for_dialect},
};
use serde_json::{Value, json, value::RawValue};

const MODEL: &str = "anthropic/claude-sonnet-4-5";
const CREATED: u64 = 1_700_000_000;

/// The fixtures of one kind with this extension, by name.
fn fixtures(dir: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic").join(dir);
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

#[test]
fn requests_match_their_goldens() {
    for (name, case) in fixtures("requests", "json") {
        let case = json(&case);
        let body = serde_json::to_vec(&case["openai"]).unwrap();
        let model = case["model"].as_str().unwrap();
        let stream = case["stream"].as_bool().unwrap();
        let out = anthropic::chat_request(&body, model, stream).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = json(&out);
        assert_eq!(out, case["anthropic"], "{name}: got\n{}\nexpected\n{}", pretty(&out), pretty(&case["anthropic"]));
    }
}

#[test]
fn responses_match_their_goldens() {
    for (name, bytes) in fixtures("responses", "json") {
        // Anthropic's answer goes in as the fixture writes it (tool inputs are passed on as written).
        let raw: HashMap<&str, &RawValue> = serde_json::from_slice(&bytes).unwrap();
        let body = raw["anthropic"].get().as_bytes();
        let case = json(&bytes);
        let model = case["model"].as_str().unwrap();
        let created = case["created"].as_u64().unwrap();
        let out = anthropic::chat_response(body, model, created).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = json(&out);
        assert_eq!(out, case["openai"], "{name}: got\n{}\nexpected\n{}", pretty(&out), pretty(&case["openai"]));
    }
}

#[test]
fn responses_keep_the_tool_input_as_the_model_wrote_it() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"z":1,"a":{"b":[true,null]}}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#;
    let out = json(&anthropic::chat_response(body, MODEL, CREATED).unwrap());
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"z":1,"a":{"b":[true,null]}}"#
    );
}

/// The stream through a framer and a translator, fed in these pieces.
fn translate<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, include_usage: bool) -> Vec<Bytes> {
    let mut framer = SseFramer::new();
    let mut translator = anthropic::ChatStream::new(MODEL, include_usage, CREATED);
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
    assert!(translator.finish().is_empty(), "[DONE] goes out once");
    out
}

fn expected_events(expected: &[u8], include_usage: bool) -> Vec<Bytes> {
    std::str::from_utf8(expected)
        .unwrap()
        .lines()
        .filter(|line| include_usage || !line.contains(r#""choices":[]"#))
        .map(|line| Bytes::from(format!("data: {line}\n\n")))
        .collect()
}

fn show(events: &[Bytes]) -> String {
    events.iter().map(|e| String::from_utf8_lossy(e)).collect()
}

#[test]
fn streams_match_their_goldens_whatever_the_split() {
    for (name, stream) in fixtures("streams", "sse") {
        let expected = fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/anthropic/streams")
                .join(name.replace(".sse", ".expected")),
        )
        .unwrap();
        let expected = expected_events(&expected, true);
        let whole = translate([&stream[..]], true);
        assert_eq!(whole, expected, "{name}: got\n{}\nexpected\n{}", show(&whole), show(&expected));
        for cut in 0..=stream.len() {
            let (head, tail) = stream.split_at(cut);
            assert_eq!(translate([head, tail], true), expected, "{name}: cut at byte {cut}");
        }
        for size in 1..=64 {
            assert_eq!(translate(stream.chunks(size), true), expected, "{name}: pieces of {size} bytes");
        }
    }
}

#[test]
fn streams_without_include_usage_have_no_usage_chunk() {
    for (name, stream) in fixtures("streams", "sse") {
        let expected = fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/anthropic/streams")
                .join(name.replace(".sse", ".expected")),
        )
        .unwrap();
        let expected = expected_events(&expected, false);
        assert_eq!(translate(stream.chunks(7), false), expected, "{name}");
    }
}

#[test]
fn every_stream_chunk_is_an_openai_chunk() {
    for (name, stream) in fixtures("streams", "sse") {
        let events = translate([&stream[..]], true);
        let (done, chunks) = events.split_last().unwrap();
        assert_eq!(&done[..], b"data: [DONE]\n\n", "{name}");
        for chunk in chunks {
            let data = chunk.strip_prefix(b"data: ").and_then(|c| c.strip_suffix(b"\n\n")).unwrap();
            let chunk = json(data);
            assert_eq!(chunk["object"], "chat.completion.chunk", "{name}");
            assert_eq!(chunk["model"], MODEL, "{name}");
            assert_eq!(chunk["created"], CREATED, "{name}");
            assert!(chunk["id"].as_str().unwrap().starts_with("chatcmpl-msg_"), "{name}");
            for choice in chunk["choices"].as_array().unwrap() {
                assert_eq!(choice["index"], 0, "{name}");
                assert!(choice["delta"].is_object(), "{name}");
                assert!(choice.get("finish_reason").is_some(), "{name}: finish_reason is always there");
            }
        }
    }
}

/// Anthropic's error answers: (status, body, class).
fn anthropic_errors() -> Vec<(u16, String, FailureClass)> {
    let error = |kind: &str, message: &str| {
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
            .to_string()
    };
    vec![
        (
            429,
            error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
            ),
            FailureClass::RateLimit,
        ),
        (529, error("overloaded_error", "Overloaded"), FailureClass::Transient),
        (401, error("authentication_error", "invalid x-api-key"), FailureClass::Credential),
        (
            403,
            error("permission_error", "Your API key does not have permission to use the specified resource."),
            FailureClass::Credential,
        ),
        (
            400,
            error("invalid_request_error", "messages: roles must alternate between \"user\" and \"assistant\""),
            FailureClass::Client,
        ),
        (
            400,
            error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            ),
            FailureClass::Quota,
        ),
        (404, error("not_found_error", "model: claude-nonexistent"), FailureClass::Client),
        (413, error("request_too_large", "Request exceeds the maximum allowed number of bytes."), FailureClass::Client),
        (500, error("api_error", "Internal server error"), FailureClass::Transient),
        (429, "Too Many Requests".to_owned(), FailureClass::RateLimit),
        (400, "Too Many Requests".to_owned(), FailureClass::RateLimit),
        (502, "<html><body>502 Bad Gateway</body></html>".to_owned(), FailureClass::Transient),
    ]
}

#[test]
fn translated_errors_classify_like_anthropics_own() {
    for (status, body, class) in anthropic_errors() {
        let code = StatusCode::from_u16(status).unwrap();
        let original = classify(code, &HeaderMap::new(), body.as_bytes()).unwrap().class;
        assert_eq!(original, class, "{status} {body} (untranslated)");
        let translated = anthropic::error_body(status, body.as_bytes());
        let failure = classify(code, &HeaderMap::new(), &translated).unwrap();
        assert_eq!(failure.class, class, "{status} {body} -> {}", String::from_utf8_lossy(&translated));

        let translated = json(&translated);
        let error = translated["error"].as_object().unwrap();
        assert_eq!(translated.as_object().unwrap().len(), 1, "only `error` at the top");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["param"].is_null());
        assert_eq!(error["code"], error["type"]);
        if let Ok(original) = serde_json::from_str::<Value>(&body) {
            assert_eq!(error["message"], original["error"]["message"], "the message is kept word for word");
            assert_eq!(error["type"], original["error"]["type"], "the type is kept");
        }
    }
}

#[test]
fn error_bodies_in_openai_shape() {
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}"#;
    assert_eq!(
        json(&anthropic::error_body(429, body)),
        json!({"error": {"message": "Slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_error"}})
    );
    // Not JSON: the text (trimmed, at most 500 characters), a type from the status.
    let long = format!("  {}  ", "é".repeat(600));
    let out = json(&anthropic::error_body(503, long.as_bytes()));
    assert_eq!(out["error"]["message"], "é".repeat(500));
    assert_eq!(out["error"]["type"], "api_error");
    let out = json(&anthropic::error_body(429, b""));
    assert_eq!(out["error"]["type"], "rate_limit_error");
    assert!(out["error"]["message"].as_str().unwrap().contains("429"));
    let out = json(&anthropic::error_body(529, b"overloaded"));
    assert_eq!(
        out["error"],
        json!({"message": "overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"})
    );
}

#[test]
fn model_ids_from_the_model_list() {
    let body = br#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},{"type":"model","id":"claude-haiku-4-5-20251001","display_name":"Claude Haiku 4.5","created_at":"2025-10-01T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-haiku-4-5-20251001"}"#;
    assert_eq!(anthropic::model_ids(body).unwrap(), ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]);
    assert!(anthropic::model_ids(br#"{"models":[]}"#).is_err());
    assert!(anthropic::model_ids(b"<html>").is_err());
}

#[test]
fn the_constants_the_wiring_uses() {
    assert_eq!(anthropic::API_VERSION, "2023-06-01");
    assert_eq!(anthropic::chat_path(), "v1/messages");
    let out = json(&anthropic::chat_request(br#"{"messages":[{"role":"user","content":"hi"}]}"#, "m", false).unwrap());
    assert_eq!(out["max_tokens"], anthropic::DEFAULT_MAX_TOKENS);
}

/// What the OpenAI SDK's `chat.completions.parse(response_format=CalendarEvent)` sends.
const PARSE_REQUEST: &str = r#"{"model":"anthropic/claude-sonnet-4-5","messages":[
    {"role":"system","content":"Extract the event information."},
    {"role":"user","content":"Alice and Bob are going to a science fair on Friday."}],
    "response_format":{"type":"json_schema","json_schema":{"name":"CalendarEvent","strict":true,"schema":{
    "type":"object","properties":{"name":{"title":"Name","type":"string"},"date":{"title":"Date","type":"string"},
    "participants":{"items":{"type":"string"},"title":"Participants","type":"array"}},
    "required":["name","date","participants"],"title":"CalendarEvent","additionalProperties":false}}}}"#;

#[test]
fn structured_outputs_through_the_dialect_trait() {
    let anthropic = for_dialect(Dialect::Anthropic);
    let body = Bytes::from_static(PARSE_REQUEST.as_bytes());
    let model = "claude-sonnet-4-5";
    let out = anthropic.request(&OutboundRequest::new(Endpoint::ChatCompletions, &body, model, true)).unwrap();
    assert_eq!(out.path, "v1/messages");
    assert!(out.hints.json_via_tool);
    let sent = json(&out.body);
    assert_eq!(sent["tools"][0]["name"], "CalendarEvent");
    assert_eq!(sent["tools"][0]["input_schema"]["required"], json!(["name", "date", "participants"]));
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "CalendarEvent", "disable_parallel_tool_use": true})
    );
    let expected = json!({"name": "Science Fair", "date": "Friday", "participants": ["Alice", "Bob"]});

    // The whole answer: the tool's input is the content, as the SDK parses it.
    let answer = Bytes::from_static(br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5",
        "content":[{"type":"tool_use","id":"toolu_01","name":"CalendarEvent","input":{"name":"Science Fair","date":"Friday","participants":["Alice","Bob"]}}],
        "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":410,"output_tokens":62}}"#);
    let completion = json(&anthropic.answer(Endpoint::ChatCompletions, &answer, model, CREATED, out.hints).unwrap());
    let message = &completion["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none());
    assert_eq!(json(message["content"].as_str().unwrap().as_bytes()), expected);
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");

    // The stream: the input's pieces are content pieces, cut anywhere.
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":410,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_02","name":"CalendarEvent","input":{}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"name\": \"Science Fair\", \"da"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"te\": \"Friday\", \"participants\": [\"Alice\", \"Bob\"]}"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":62}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let wire: String = events
        .iter()
        .map(|data| {
            let name = json(data.as_bytes())["type"].as_str().unwrap().to_owned();
            format!("event: {name}\ndata: {data}\n\n")
        })
        .collect();
    for size in [1, 13, wire.len()] {
        let mut stream = anthropic.stream(Endpoint::ChatCompletions, model, true, CREATED, out.hints).unwrap();
        let mut framer = SseFramer::new();
        let mut sent = Vec::new();
        for piece in wire.as_bytes().chunks(size) {
            for event in framer.push(piece) {
                sent.extend(stream.event(&event).unwrap());
            }
        }
        sent.extend(stream.finish());
        assert!(stream.is_complete());
        assert_eq!(&sent.pop().unwrap()[..], b"data: [DONE]\n\n");
        let chunks: Vec<Value> = sent.iter().map(|e| json(e.strip_prefix(b"data: ").unwrap())).collect();
        let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(json(content.as_bytes()), expected);
        assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
        let finishes: Vec<&Value> =
            chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
        assert_eq!(finishes, [&json!("stop")]);
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 62);
    }
}
