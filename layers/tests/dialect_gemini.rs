//! The Gemini dialect against golden fixtures (`tests/fixtures/gemini`):
//! OpenAI requests to Gemini's, Gemini's answers, streams and errors back to
//! OpenAI's, and what `classify` makes of the translated errors.
//!
//! Each input `<name>.<from>.<ext>` has its expected translation next to it.
//! `BLESS=1 cargo test -p keyrelay-layers --test dialect_gemini` rewrites the
//! expected files from the current output: review the diff before committing.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use keyrelay_layers::{
    classify::{FailureClass, classify},
    extensions::Endpoint,
    provider::Dialect,
    upstream::dialect::{OutboundRequest, SseFramer, StreamTranslator, TranslateError, for_dialect, gemini},
};
use serde_json::Value;

/// 2026-01-01 12:00:00 UTC.
const CREATED: u64 = 1_767_268_800;

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemini").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn blessing() -> bool {
    std::env::var_os("BLESS").is_some()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Compares JSON as values (key order does not matter).
fn check_json(actual: &[u8], expected: &str) {
    let actual = json(actual);
    let pretty = serde_json::to_string_pretty(&actual).unwrap();
    if blessing() {
        std::fs::write(path(expected), format!("{pretty}\n")).unwrap();
    }
    assert_eq!(actual, json(&read(expected)), "{expected} differs; the output was:\n{pretty}");
}

/// The events of an OpenAI stream, each `data:` payload parsed.
fn events(stream: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(stream).expect("UTF-8 stream");
    assert!(text.ends_with("\n\n"), "a stream ends with a blank line");
    text.split_terminator("\n\n")
        .map(|event| {
            let data = event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!data.contains('\n'), "one line per event: {data:?}");
            if data == "[DONE]" { Value::String("[DONE]".into()) } else { json(data.as_bytes()) }
        })
        .collect()
}

fn check_sse(actual: &[u8], expected: &str) {
    if blessing() {
        std::fs::write(path(expected), actual).unwrap();
    }
    assert_eq!(
        events(actual),
        events(&read(expected)),
        "{expected} differs; the output was:\n{}",
        String::from_utf8_lossy(actual)
    );
}

// === requests ===

#[test]
fn chat_requests_match_their_goldens() {
    for (name, model) in [
        ("chat_system_multiturn", "gemini-2.5-flash"),
        ("chat_images", "gemini-2.5-flash"),
        ("chat_tools", "gemini-2.5-flash"),
        ("chat_json_object", "gemini-2.0-flash"),
        ("chat_json_schema", "gemini-2.5-pro"),
        ("chat_reasoning", "gemini-3-pro-preview"),
    ] {
        let body = read(&format!("{name}.openai.json"));
        let out = gemini::chat_request(&body, model, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_json(&out, &format!("{name}.gemini.json"));
        // The streaming endpoint takes the same body.
        assert_eq!(gemini::chat_request(&body, model, true).unwrap(), out, "{name}");
    }
}

#[test]
fn paths_put_the_model_in_one_segment() {
    assert_eq!(gemini::chat_path("gemini-2.5-flash", false), "v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(
        gemini::chat_path("gemini-2.5-flash", true),
        "v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        gemini::chat_path("../files/x?key=1#f:y", false),
        "v1beta/models/..%2Ffiles%2Fx%3Fkey%3D1%23f%3Ay:generateContent"
    );
    assert_eq!(gemini::embeddings_path("text-embedding-004"), "v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(gemini::models_path(None), "v1beta/models?pageSize=1000");
    assert_eq!(gemini::models_path(Some("a/b==")), "v1beta/models?pageSize=1000&pageToken=a%2Fb%3D%3D");
}

// === responses ===

#[test]
fn chat_responses_match_their_goldens() {
    for name in ["response_text", "response_function_calls", "response_thoughts", "response_blocked"] {
        let body = read(&format!("{name}.gemini.json"));
        let out = gemini::chat_response(&body, "gemini-2.5-flash", CREATED).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_json(&out, &format!("{name}.openai.json"));
    }
}

#[test]
fn each_finish_reason_maps() {
    for (gemini_reason, with_call, openai_reason) in [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", false, "length"),
        ("MAX_TOKENS", true, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("BLOCKLIST", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("SPII", false, "content_filter"),
        ("IMAGE_SAFETY", false, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("OTHER", false, "stop"),
        ("FINISH_REASON_UNSPECIFIED", false, "stop"),
    ] {
        let mut parts = vec![serde_json::json!({ "text": "x" })];
        if with_call {
            parts.push(serde_json::json!({ "functionCall": { "name": "f", "args": {} } }));
        }
        let body = serde_json::json!({
            "candidates": [{ "content": { "role": "model", "parts": parts }, "finishReason": gemini_reason }],
        });
        let out = json(&gemini::chat_response(body.to_string().as_bytes(), "m", CREATED).unwrap());
        assert_eq!(out["choices"][0]["finish_reason"], openai_reason, "{gemini_reason} with call: {with_call}");
    }
}

// === streams ===

/// Runs a Gemini stream through the framer and the translator, cutting the
/// bytes at `cuts`.
fn translate_stream(stream: &[u8], cuts: &[usize], include_usage: bool) -> Result<Vec<u8>, TranslateError> {
    let mut framer = SseFramer::new();
    let mut translator = gemini::ChatStream::new("gemini-2.5-flash", include_usage, CREATED);
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([stream.len()].iter()) {
        for event in framer.push(&stream[from..to]) {
            translator.event(&event)?.iter().for_each(|b| out.extend_from_slice(b));
        }
        from = to;
    }
    if let Some(event) = framer.finish() {
        translator.event(&event)?.iter().for_each(|b| out.extend_from_slice(b));
    }
    translator.finish().iter().for_each(|b| out.extend_from_slice(b));
    assert!(translator.finish().is_empty(), "[DONE] goes out once");
    Ok(out)
}

#[test]
fn streams_match_their_goldens_whatever_the_split() {
    for name in ["stream_text", "stream_tools"] {
        let stream = read(&format!("{name}.gemini.sse"));
        let whole = translate_stream(&stream, &[], true).unwrap();
        check_sse(&whole, &format!("{name}.openai.sse"));
        for cut in 0..=stream.len() {
            assert_eq!(translate_stream(&stream, &[cut], true).unwrap(), whole, "{name} cut at byte {cut}");
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(translate_stream(&stream, &every_byte, true).unwrap(), whole, "{name} cut at every byte");
    }
}

#[test]
fn a_stream_without_include_usage_ends_with_done_only() {
    let stream = read("stream_text.gemini.sse");
    let events = events(&translate_stream(&stream, &[], false).unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| e.get("usage").is_none()), "no usage chunk");
    let finish = &events[events.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[test]
fn an_error_event_mid_stream_fails_the_stream() {
    let stream = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n\
data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
    let error = translate_stream(stream, &[], true).unwrap_err();
    assert_eq!(error.to_string(), "The model is overloaded. Please try again later.");
}

// === embeddings and models ===

#[test]
fn embeddings_translate_both_ways() {
    let request = gemini::embeddings_request(&read("embeddings.openai.json"), "text-embedding-004").unwrap();
    check_json(&request, "embeddings_request.gemini.json");
    let response = gemini::embeddings_response(&read("embeddings.gemini.json"), "text-embedding-004").unwrap();
    check_json(&response, "embeddings_response.openai.json");

    // The OpenAI SDKs ask for base64 by default: little-endian f32s.
    let hints = |body: &[u8]| {
        let body = bytes::Bytes::copy_from_slice(body);
        let request = OutboundRequest::new(Endpoint::Embeddings, &body, "text-embedding-004", false);
        for_dialect(Dialect::Gemini).request(&request).unwrap().hints.embeddings_base64
    };
    assert!(hints(br#"{"input":"x","encoding_format":"base64"}"#));
    assert!(!hints(&read("embeddings.openai.json")));
    let body = br#"{"embeddings":[{"values":[1.0,-2.5]}]}"#;
    let out = json(&gemini::embeddings_response_encoded(body, "m", true).unwrap());
    assert_eq!(out["data"][0]["embedding"], "AACAPwAAIMA=");
}

#[test]
fn embeddings_refuse_token_ids() {
    for body in [r#"{"input":[1,2,3]}"#, r#"{"input":[[1,2],[3]]}"#, r#"{"input":7}"#, r#"{"input":[]}"#, r#"{}"#] {
        let error = gemini::embeddings_request(body.as_bytes(), "m").unwrap_err();
        assert!(error.to_string().contains("input"), "{body}: {error}");
    }
}

#[test]
fn model_ids_keep_models_that_chat_or_embed() {
    let body = read("models.gemini.json");
    assert_eq!(gemini::model_ids(&body).unwrap(), ["gemini-2.5-flash", "gemini-embedding-001", "aqa"]);
    assert_eq!(gemini::next_page_token(&body).as_deref(), Some("Chltb2RlbHMvZ2VtaW5pLTIuNS1mbGFzaA=="));
    assert_eq!(gemini::model_ids(b"{}").unwrap(), Vec::<String>::new());
    assert_eq!(gemini::next_page_token(b"{\"models\":[]}"), None);
    assert!(gemini::model_ids(b"<html>").is_err());
}

// === errors ===

fn classified(status: u16, fixture: &str) -> (FailureClass, Option<Duration>, Value) {
    let body = gemini::error_body(status, &read(fixture));
    let failure = classify(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body).expect("a failure");
    (failure.class, failure.retry_after, json(&body))
}

#[test]
fn translated_errors_keep_what_classify_reads() {
    let (class, hint, body) = classified(429, "error_429_retry.gemini.json");
    assert_eq!((class, hint), (FailureClass::RateLimit, Some(Duration::from_secs(30))));
    check_json(body.to_string().as_bytes(), "error_429_retry.openai.json");

    let (class, _, body) = classified(429, "error_429_daily.gemini.json");
    assert_eq!(class, FailureClass::Quota);
    assert_eq!(body["error"]["type"], "resource_exhausted");

    let (class, hint, body) = classified(400, "error_400_key.gemini.json");
    assert_eq!((class, hint), (FailureClass::Credential, None));
    check_json(body.to_string().as_bytes(), "error_400_key.openai.json");

    let (class, _, body) = classified(503, "error_503.gemini.json");
    assert_eq!(class, FailureClass::Transient);
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert_eq!(body["error"]["message"], "The model is overloaded. Please try again later.");

    let (class, _, body) = classified(400, "error_400_invalid.gemini.json");
    assert_eq!(class, FailureClass::Client);
    assert_eq!(body["error"]["type"], "invalid_argument");
    assert_eq!(body["error"]["message"], "* GenerateContentRequest.contents: contents is not specified\n");
}

#[test]
fn non_json_errors_keep_their_text() {
    let body = json(&gemini::error_body(502, b"  <html>Bad Gateway</html>\n"));
    assert_eq!(body["error"]["message"], "<html>Bad Gateway</html>");
    assert_eq!(body["error"]["type"], "upstream_error");
    let long = "é".repeat(2000);
    let body = json(&gemini::error_body(500, long.as_bytes()));
    assert_eq!(body["error"]["message"].as_str().unwrap().chars().count(), 500);
    let body = json(&gemini::error_body(500, b""));
    assert_eq!(body["error"]["message"], "Gemini answered HTTP 500");
}
