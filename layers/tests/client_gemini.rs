//! The inbound Gemini dialect (`client::gemini`) against golden fixtures
//! (`tests/fixtures/client_gemini`): generateContent requests to chat
//! completions, chat answers and streams back to Gemini's, and the whole
//! chain through the outbound Anthropic and Gemini translators.
//!
//! Each input `<name>.<from>.<ext>` has its expected translation next to it.
//! `BLESS=1 cargo test -p keyrelay-layers --test client_gemini` rewrites the
//! expected files from the current output: review the diff before committing.
//!
//! Longer than 600 lines on purpose, like `client_anthropic.rs`: one story
//! per translator, one test binary.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::{
        SseEvent, SseFramer, StreamTranslator, TranslateError, anthropic,
        client::{ChainedStream, ClientDialect, ClientHints, ClientRequest, gemini::GenerateContent},
        gemini,
    },
    usage::Usage,
};
use serde_json::{Value, json};

const MODEL: &str = "gpt-4.1";

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
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
fn check_json(actual: &Value, expected: &str) {
    let pretty = serde_json::to_string_pretty(actual).unwrap();
    if blessing() {
        std::fs::write(path(expected), format!("{pretty}\n")).unwrap();
    }
    assert_eq!(*actual, json(&read(expected)), "{expected} differs; the output was:\n{pretty}");
}

fn to_chat(body: &[u8], stream: bool) -> Result<(Value, ClientHints), TranslateError> {
    let endpoint = if stream { Endpoint::StreamGenerateContent } else { Endpoint::GenerateContent };
    let chat = GenerateContent.to_chat(&ClientRequest::new(endpoint, body, MODEL, stream))?;
    Ok((json(&chat.body), chat.hints))
}

fn to_chat_value(body: Value) -> Result<Value, TranslateError> {
    to_chat(body.to_string().as_bytes(), false).map(|(chat, _)| chat)
}

fn user(text: &str) -> Value {
    json!({ "role": "user", "parts": [{ "text": text }] })
}

// === requests ===

#[test]
fn requests_match_their_goldens() {
    for name in ["request_plain", "request_system", "request_images", "request_tools", "request_thinking"] {
        let body = read(&format!("client_gemini/{name}.gemini.json"));
        let (chat, hints) = to_chat(&body, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_json(&chat, &format!("client_gemini/{name}.chat.json"));
        assert!(hints.get().is_none(), "{name}: thoughts are wanted unless the client says no");
    }
}

#[test]
fn a_stream_asks_for_the_usage_and_include_thoughts_false_is_a_hint() {
    let body = json!({
        "contents": [user("hi")],
        "generationConfig": { "thinkingConfig": { "thinkingLevel": "LOW", "includeThoughts": false } },
    });
    let (chat, hints) = to_chat(body.to_string().as_bytes(), true).unwrap();
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({ "include_usage": true }));
    assert_eq!(chat["reasoning_effort"], "low");
    assert_eq!(hints.get(), Some(&json!({ "includeThoughts": false })));
    let (plain, _) = to_chat(br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#, false).unwrap();
    assert!(plain.get("stream").is_none() && plain.get("stream_options").is_none());
}

#[test]
fn tool_config_modes_become_tool_choices() {
    let tools = json!([{ "functionDeclarations": [{ "name": "a" }, { "name": "b" }, { "name": "c" }] }]);
    let with = |config: Value| {
        to_chat_value(
            json!({ "contents": [user("hi")], "tools": tools, "toolConfig": { "functionCallingConfig": config } }),
        )
        .unwrap()
    };
    let names = |chat: &Value| -> Vec<Value> {
        chat["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].clone()).collect()
    };
    for (config, choice) in [
        (json!({ "mode": "AUTO" }), json!("auto")),
        (json!({ "mode": "VALIDATED" }), json!("auto")),
        (json!({ "mode": "NONE" }), json!("none")),
        (json!({ "mode": "ANY" }), json!("required")),
        (
            json!({ "mode": "any", "allowedFunctionNames": ["b"] }),
            json!({ "type": "function", "function": { "name": "b" } }),
        ),
    ] {
        let chat = with(config.clone());
        assert_eq!(chat["tool_choice"], choice, "{config}");
        assert_eq!(names(&chat).len(), 3, "{config}");
    }
    let subset = with(json!({ "mode": "ANY", "allowed_function_names": ["a", "c"] }));
    assert_eq!(subset["tool_choice"], "required");
    assert_eq!(names(&subset), [json!("a"), json!("c")]);
    let no_config = to_chat_value(json!({ "contents": [user("hi")], "tools": tools })).unwrap();
    assert!(no_config.get("tool_choice").is_none());
    let no_tools = to_chat_value(json!({ "contents": [user("hi")], "tools": [], "toolConfig": {} })).unwrap();
    assert!(no_tools.get("tools").is_none() && no_tools.get("tool_choice").is_none());
}

#[test]
fn response_formats_and_thinking_levels() {
    let with = |config: Value| to_chat_value(json!({ "contents": [user("hi")], "generationConfig": config })).unwrap();
    assert_eq!(
        with(json!({ "responseMimeType": "application/json" }))["response_format"],
        json!({ "type": "json_object" })
    );
    let schema = json!({ "type": "object", "properties": { "a": { "type": "string" } } });
    assert_eq!(
        with(json!({ "responseMimeType": "application/json", "responseJsonSchema": schema }))["response_format"],
        json!({ "type": "json_schema", "json_schema": { "name": "response", "schema": schema } })
    );
    for (level, effort) in [("MINIMAL", "minimal"), ("low", "low"), ("MEDIUM", "medium"), ("HIGH", "high")] {
        let chat = with(json!({ "thinkingConfig": { "thinkingLevel": level } }));
        assert_eq!(chat["reasoning_effort"], effort, "{level}");
    }
    assert_eq!(with(json!({ "thinkingConfig": { "thinkingBudget": -1 } }))["reasoning_effort"], "medium");
    assert_eq!(with(json!({ "thinkingConfig": { "thinkingBudget": 0 } }))["reasoning_effort"], "none");
    assert!(with(json!({ "thinkingConfig": { "includeThoughts": true } })).get("reasoning_effort").is_none());
}

#[test]
fn function_responses_pair_with_their_calls() {
    let call = |name: &str, id: Option<&str>| {
        let mut call = json!({ "name": name, "args": {} });
        if let Some(id) = id {
            call["id"] = id.into();
        }
        json!({ "functionCall": call })
    };
    let response = |name: &str, id: Option<&str>, n: u64| {
        let mut response = json!({ "name": name, "response": { "n": n } });
        if let Some(id) = id {
            response["id"] = id.into();
        }
        json!({ "functionResponse": response })
    };
    let chat = to_chat_value(json!({ "contents": [
        user("go"),
        { "role": "model", "parts": [call("f", None), call("g", Some("own")), call("f", None)] },
        { "role": "user", "parts": [response("f", None, 1), response("g", Some("own"), 2), response("f", None, 3)] },
        { "role": "model", "parts": [call("f", None)] },
        // An id that names no call falls back to the name.
        { "role": "user", "parts": [response("f", Some("stale"), 4)] },
    ] }))
    .unwrap();
    let ids = |message: &Value| -> Vec<Value> {
        message["tool_calls"].as_array().unwrap().iter().map(|c| c["id"].clone()).collect()
    };
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(ids(&messages[1]), [json!("call_1_0"), json!("own"), json!("call_1_2")]);
    let results: Vec<(Value, Value)> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| (m["tool_call_id"].clone(), m["content"].clone()))
        .collect();
    assert_eq!(
        results,
        [
            (json!("call_1_0"), json!(r#"{"n":1}"#)),
            (json!("own"), json!(r#"{"n":2}"#)),
            (json!("call_1_2"), json!(r#"{"n":3}"#)),
            (json!("call_3_0"), json!(r#"{"n":4}"#)),
        ]
    );
}

#[test]
fn what_chat_cannot_express_is_refused_with_the_field_named() {
    let contents = |parts: Value| json!({ "contents": [{ "role": "user", "parts": parts }] });
    let model_turn = |parts: Value| json!({ "contents": [user("hi"), { "role": "model", "parts": parts }] });
    let with = |key: &str, value: Value| {
        let mut body = json!({ "contents": [user("hi")] });
        body[key] = value;
        body
    };
    let config = |value: Value| with("generationConfig", value);
    let cases: Vec<(Value, &str)> = vec![
        (json!([1]), "must be a JSON object"),
        (json!({}), "`contents` is required"),
        (json!({ "contents": {} }), "`contents` must be an array"),
        (json!({ "contents": [] }), "at least one user or model turn"),
        (json!({ "contents": [{ "role": "user", "parts": [] }] }), "at least one user or model turn"),
        (json!({ "contents": ["hi"] }), "contents[0] must be a Content"),
        (json!({ "contents": [{ "role": "system", "parts": [] }] }), "contents[0].role `system` is not user or model"),
        (json!({ "contents": [{ "parts": {} }] }), "contents[0].parts must be an array"),
        (contents(json!([{ "what": 1 }])), "contents[0].parts[0] holds none of"),
        (contents(json!([{ "text": 5 }])), "contents[0].parts[0].text must be a string"),
        (
            contents(json!([{ "executableCode": { "language": "PYTHON", "code": "1" } }])),
            "executableCode: code execution runs only at Google",
        ),
        (contents(json!([{ "codeExecutionResult": { "outcome": "OUTCOME_OK" } }])), "codeExecutionResult"),
        (
            contents(json!([{ "inlineData": { "mimeType": "video/mp4", "data": "AA==" } }])),
            "inlineData.mimeType `video/mp4` cannot go through",
        ),
        (contents(json!([{ "inlineData": { "mimeType": "audio/ogg", "data": "AA==" } }])), "audio only as WAV or MP3"),
        (contents(json!([{ "inlineData": { "data": "AA==" } }])), "inlineData.mimeType is missing"),
        (contents(json!([{ "inlineData": { "mimeType": "image/png" } }])), "inlineData.data is missing"),
        (
            contents(
                json!([{ "fileData": { "mimeType": "application/pdf", "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc" } }]),
            ),
            "lives only at Google",
        ),
        (contents(json!([{ "fileData": { "fileUri": "gs://bucket/cat.png" } }])), "lives only at Google"),
        (
            contents(json!([{ "fileData": { "mimeType": "video/mp4", "fileUri": "https://youtu.be/x" } }])),
            "only http(s) image URLs",
        ),
        (contents(json!([{ "functionCall": { "name": "f" } }])), "belongs in a turn of role `model`"),
        (contents(json!([{ "functionResponse": { "name": "f", "response": {} } }])), "answers no earlier functionCall"),
        (
            json!({ "contents": [user("hi"), { "role": "model", "parts": [{ "functionCall": { "name": "f" } }] },
                { "role": "user", "parts": [{ "functionResponse": { "name": "f", "parts": [{ "inlineData": {} }] } }] }] }),
            "media in a function response",
        ),
        (model_turn(json!([{ "functionCall": { "args": {} } }])), "contents[1].parts[0].functionCall.name is missing"),
        (model_turn(json!([{ "functionCall": { "name": "f", "args": [1] } }])), "functionCall.args must be an object"),
        (model_turn(json!([{ "functionResponse": { "name": "f" } }])), "belongs in a turn of role `user`"),
        (
            model_turn(json!([{ "inlineData": { "mimeType": "image/png", "data": "AA==" } }])),
            "a model turn's inlineData",
        ),
        (with("systemInstruction", json!({ "parts": [{ "inlineData": {} }] })), "can only hold text"),
        (with("systemInstruction", json!(5)), "systemInstruction must be a Content"),
        (with("cachedContent", json!("cachedContents/abc")), "cachedContent `cachedContents/abc`: a context cache"),
        (
            with("tools", json!([{ "googleSearch": {} }])),
            "tools[0].googleSearch: this tool runs only at Google; use a gemini/ model",
        ),
        (
            with("tools", json!([{ "google_search_retrieval": {} }])),
            "tools[0].google_search_retrieval: this tool runs only",
        ),
        (with("tools", json!([{ "codeExecution": {} }])), "tools[0].codeExecution"),
        (with("tools", json!([{ "urlContext": {} }])), "tools[0].urlContext"),
        (with("tools", json!({})), "`tools` must be an array"),
        (
            with("tools", json!([{ "functionDeclarations": [{ "description": "x" }] }])),
            "functionDeclarations[0].name is missing",
        ),
        (
            json!({ "contents": [user("hi")], "tools": [{ "functionDeclarations": [{ "name": "f" }] }],
                "toolConfig": { "functionCallingConfig": { "mode": "SOMETIMES" } } }),
            "mode `SOMETIMES` is not AUTO, ANY, NONE or VALIDATED",
        ),
        (
            json!({ "contents": [user("hi")], "tools": [{ "functionDeclarations": [{ "name": "f" }] }],
                "toolConfig": { "functionCallingConfig": { "mode": "ANY", "allowedFunctionNames": ["g"] } } }),
            "`g` is not a declared function",
        ),
        (config(json!({ "candidateCount": 2 })), "candidateCount over 1"),
        (config(json!({ "temperature": "hot" })), "generationConfig.temperature must be a number"),
        (config(json!({ "stopSequences": "END" })), "stopSequences must be an array of strings"),
        (config(json!({ "responseMimeType": "text/x.enum" })), "responseMimeType `text/x.enum`"),
        (config(json!({ "responseModalities": ["TEXT", "IMAGE"] })), "responseModalities `IMAGE`"),
        (config(json!({ "speechConfig": { "voiceConfig": {} } })), "speechConfig"),
        (config(json!({ "responseLogprobs": true })), "log probabilities"),
        (config(json!({ "thinkingConfig": { "thinkingBudget": "lots" } })), "thinkingBudget must be an integer"),
        (config(json!({ "thinkingConfig": { "thinkingLevel": "extreme" } })), "thinkingLevel `extreme`"),
        (config(json!([])), "generationConfig must be an object"),
    ];
    for (body, expected) in cases {
        let error = to_chat_value(body.clone()).expect_err(&body.to_string());
        assert!(error.0.contains(expected), "{body}: {error} (wanted {expected:?})");
    }
    let error = to_chat(b"{not json", false).unwrap_err();
    assert!(error.0.starts_with("the generateContent request is not valid JSON"), "{error}");
}

// === answers ===

fn answer(chat: &[u8], hints: &ClientHints) -> Value {
    json(&GenerateContent.answer(chat, MODEL, hints).unwrap())
}

#[test]
fn answers_match_their_goldens() {
    for name in ["answer_text", "answer_tool_calls", "answer_reasoning"] {
        let chat = read(&format!("client_gemini/{name}.chat.json"));
        check_json(&answer(&chat, &ClientHints::default()), &format!("client_gemini/{name}.gemini.json"));
    }
}

#[test]
fn finish_reasons_and_hidden_thoughts() {
    for (reason, expected) in [
        (json!("stop"), "STOP"),
        (json!("tool_calls"), "STOP"),
        (json!("length"), "MAX_TOKENS"),
        (json!("content_filter"), "SAFETY"),
        (json!(null), "STOP"),
        (json!("error"), "OTHER"),
    ] {
        let chat =
            json!({ "id": "c", "choices": [{ "index": 0, "message": { "content": "x" }, "finish_reason": reason }] });
        let out = answer(chat.to_string().as_bytes(), &ClientHints::default());
        assert_eq!(out["candidates"][0]["finishReason"], expected, "{reason}");
        assert!(out.get("usageMetadata").is_none(), "no usage, no usageMetadata");
    }
    let chat = read("client_gemini/answer_reasoning.chat.json");
    let hidden = answer(&chat, &ClientHints::new(json!({ "includeThoughts": false })));
    assert_eq!(hidden["candidates"][0]["content"]["parts"], json!([{ "text": "{\"primes\":[11,13" }]));
    let openrouter =
        json!({ "id": "c", "choices": [{ "message": { "reasoning": "hm", "content": "" }, "finish_reason": "stop" }] });
    let out = answer(openrouter.to_string().as_bytes(), &ClientHints::default());
    assert_eq!(out["candidates"][0]["content"]["parts"], json!([{ "text": "hm", "thought": true }]));
}

#[test]
fn broken_answers_are_errors() {
    let hints = ClientHints::default();
    let error = GenerateContent.answer(br#"{"error":{"message":"quota exceeded"}}"#, MODEL, &hints).unwrap_err();
    assert_eq!(error.0, "quota exceeded");
    assert!(GenerateContent.answer(b"[]", MODEL, &hints).is_err());
    let bad_args = br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{oops"}}]},"finish_reason":"tool_calls"}]}"#;
    let error = GenerateContent.answer(bad_args, MODEL, &hints).unwrap_err();
    assert!(error.0.contains("`f` with arguments that are not a JSON object"), "{error}");
}

// === streams ===

/// The Gemini events of a stream, each `data:` payload parsed.
fn events(stream: &[Bytes]) -> Vec<Value> {
    stream
        .iter()
        .map(|event| {
            let text = std::str::from_utf8(event).expect("UTF-8 events");
            let data = text.strip_prefix("data: ").and_then(|d| d.strip_suffix("\n\n"));
            let data = data.unwrap_or_else(|| panic!("not one `data: ...\\n\\n` event: {text:?}"));
            assert!(!data.contains('\n'), "one line per event: {data:?}");
            json(data.as_bytes())
        })
        .collect()
}

/// `pieces` through a framer and `translator`, then its `finish`.
fn run<'a>(
    translator: &mut dyn StreamTranslator,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Bytes>, TranslateError> {
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    for piece in pieces {
        for event in framer.push(piece) {
            out.extend(translator.event(&event)?);
        }
    }
    if let Some(event) = framer.finish() {
        out.extend(translator.event(&event)?);
    }
    out.extend(translator.finish());
    assert!(translator.finish().is_empty(), "finish writes its events once");
    Ok(out)
}

fn gemini_stream(hints: &ClientHints) -> Box<dyn StreamTranslator> {
    GenerateContent.stream(MODEL, hints)
}

#[test]
fn the_stream_golden_comes_out_the_same_whatever_the_split() {
    let stream = read("client_gemini/stream.chat.sse");
    let mut translator = gemini_stream(&ClientHints::default());
    let whole = run(translator.as_mut(), [stream.as_slice()]).unwrap();
    assert!(translator.is_complete());
    assert_eq!(translator.usage(), Some(Usage::new(80, 30).with_cached(64)), "cached tokens are counted");
    let whole_bytes: Vec<u8> = whole.concat();
    if blessing() {
        std::fs::write(path("client_gemini/stream.gemini.sse"), &whole_bytes).unwrap();
    }
    let expected = String::from_utf8(read("client_gemini/stream.gemini.sse")).unwrap();
    assert_eq!(String::from_utf8(whole_bytes.clone()).unwrap(), expected, "stream.gemini.sse differs");

    let one_byte_each = run(gemini_stream(&ClientHints::default()).as_mut(), stream.chunks(1)).unwrap();
    assert_eq!(one_byte_each.concat(), whole_bytes, "fed a byte at a time");
    for at in 1..stream.len() {
        let (head, tail) = stream.split_at(at);
        let out = run(gemini_stream(&ClientHints::default()).as_mut(), [head, tail]).unwrap();
        assert_eq!(out.concat(), whole_bytes, "split at byte {at}");
    }
}

#[test]
fn stream_events_come_in_gemini_order() {
    let stream = read("client_gemini/stream.chat.sse");
    let out = events(&run(gemini_stream(&ClientHints::default()).as_mut(), [stream.as_slice()]).unwrap());
    let parts: Vec<Value> = out.iter().map(|e| e["candidates"][0]["content"]["parts"].clone()).collect();
    assert_eq!(
        parts,
        [
            json!([{ "text": "Two cities, ", "thought": true }]),
            json!([{ "text": "two calls.", "thought": true }]),
            json!([{ "text": "Checking " }]),
            json!([{ "text": "both. ☀️" }]),
            // The first call goes out whole when the second starts...
            json!([{ "functionCall": { "name": "get_weather", "args": { "city": "Paris" }, "id": "call_p" } }]),
            // ...and the second with the finish reason.
            json!([{ "functionCall": { "name": "get_weather", "args": { "city": "Oslo" }, "id": "call_o" } }]),
        ]
    );
    for (i, event) in out.iter().enumerate() {
        assert_eq!(event["modelVersion"], MODEL, "event {i}");
        assert_eq!(event["responseId"], "chatcmpl-s1", "event {i}");
        let last = i == out.len() - 1;
        assert_eq!(event["candidates"][0].get("finishReason").is_some(), last, "event {i}");
        assert_eq!(event.get("usageMetadata").is_some(), last, "event {i}");
    }
    let last = out.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["usageMetadata"],
        json!({ "promptTokenCount": 80, "candidatesTokenCount": 18, "totalTokenCount": 110,
            "cachedContentTokenCount": 64, "thoughtsTokenCount": 12 })
    );
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    format!("data: {}\n\n", json!({ "id": "c", "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] }))
}

#[test]
fn a_cut_stream_is_incomplete_and_sends_no_half_call() {
    let mut translator = gemini_stream(&ClientHints::default());
    let stream = chunk(json!({ "content": "Hi" }), None)
        + &chunk(
            json!({ "tool_calls": [{ "index": 0, "id": "t", "function": { "name": "f", "arguments": "{\"a\"" } }] }),
            None,
        );
    let out = events(&run(translator.as_mut(), [stream.as_bytes()]).unwrap());
    assert_eq!(out.len(), 1, "only the text: {out:?}");
    assert!(!translator.is_complete());
    assert_eq!(translator.usage(), None);
}

#[test]
fn the_end_comes_with_done_or_finish_when_no_usage_follows() {
    // [DONE] without a usage chunk releases the last event.
    let mut translator = gemini_stream(&ClientHints::default());
    let stream = chunk(json!({ "content": "Hi" }), None) + &chunk(json!({}), Some("length")) + "data: [DONE]\n\n";
    let out = events(&run(translator.as_mut(), [stream.as_bytes()]).unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(out[1]["candidates"][0]["content"]["parts"], json!([]));
    // No [DONE]: finish() releases it.
    let mut translator = gemini_stream(&ClientHints::default());
    let out = events(&run(translator.as_mut(), [chunk(json!({}), Some("content_filter")).as_bytes()]).unwrap());
    assert_eq!(out[0]["candidates"][0]["finishReason"], "SAFETY");
    assert!(translator.is_complete());
    // [DONE] without a finish reason still ends with one, and sends the call.
    let mut translator = gemini_stream(&ClientHints::default());
    let stream = chunk(json!({ "tool_calls": [{ "index": 0, "function": { "name": "f", "arguments": "" } }] }), None)
        + "data: [DONE]\n\n";
    let out = events(&run(translator.as_mut(), [stream.as_bytes()]).unwrap());
    assert_eq!(
        out[0]["candidates"][0],
        json!({ "content": { "role": "model", "parts": [{ "functionCall": { "name": "f", "args": {}, "id": "call_0" } }] },
            "finishReason": "STOP", "index": 0 })
    );
}

#[test]
fn error_chunks_and_garbage_fail_the_stream() {
    let mut translator = gemini_stream(&ClientHints::default());
    let error = run(
        translator.as_mut(),
        [&b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\"}}\n\n"[..]],
    )
    .unwrap_err();
    assert_eq!(error, TranslateError::new("Overloaded"));
    let error = run(gemini_stream(&ClientHints::default()).as_mut(), [&b"data: {\"choices\": ["[..]]).unwrap_err();
    assert!(error.0.starts_with("the chat stream sent an event that is not JSON"), "{error}");
    let bad_args =
        chunk(json!({ "tool_calls": [{ "index": 0, "function": { "name": "f", "arguments": "[1]" } }] }), None)
            + &chunk(json!({}), Some("tool_calls"));
    assert!(run(gemini_stream(&ClientHints::default()).as_mut(), [bad_args.as_bytes()]).is_err());
}

#[test]
fn hidden_thoughts_stay_out_of_the_stream() {
    let stream = chunk(json!({ "reasoning": "hmm" }), None) + &chunk(json!({ "content": "Hi" }), Some("stop"));
    let hints = ClientHints::new(json!({ "includeThoughts": false }));
    let out = events(&run(gemini_stream(&hints).as_mut(), [stream.as_bytes()]).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["candidates"][0]["content"]["parts"], json!([{ "text": "Hi" }]));
    let shown = events(&run(gemini_stream(&ClientHints::default()).as_mut(), [stream.as_bytes()]).unwrap());
    assert_eq!(shown[0]["candidates"][0]["content"]["parts"], json!([{ "text": "hmm", "thought": true }]));
}

// === count_tokens ===

#[test]
fn count_tokens_estimates_the_request() {
    let count = |body: Value| -> Result<Value, TranslateError> {
        let body = body.to_string();
        let req = ClientRequest::new(Endpoint::CountTokens, body.as_bytes(), MODEL, false);
        GenerateContent.count_tokens(&req).map(|out| json(&out))
    };
    // 4 per turn, 4 characters a token.
    assert_eq!(count(json!({ "contents": [user("12345678")] })).unwrap(), json!({ "totalTokens": 6 }));
    let wrapped = json!({ "generateContentRequest": { "model": "models/x", "contents": [user("12345678")],
        "systemInstruction": { "parts": [{ "text": "1234" }] } } });
    assert_eq!(count(wrapped).unwrap(), json!({ "totalTokens": 11 }));
    // What generateContent would refuse still counts.
    let google_only = json!({ "contents": [{ "parts": [{ "fileData": { "fileUri": "gs://b/x.mp4" } }] }],
        "tools": [{ "googleSearch": {} }] });
    assert!(count(google_only).unwrap()["totalTokens"].as_u64().unwrap() > 258);
    assert!(count(json!({ "contents": 1 })).is_err());
    assert!(count(json!({})).is_err());
    assert!(count(json!([])).is_err());
}

// === end to end through the outbound translators ===

/// The tools conversation with an image and a PDF: a typical agent request.
fn typical_request() -> Vec<u8> {
    let mut body = json(&read("client_gemini/request_tools.gemini.json"));
    let parts = body["contents"][0]["parts"].as_array_mut().unwrap();
    parts.push(json!({ "inlineData": { "mimeType": "image/png", "data": "iVBORw0KGgo=" } }));
    parts.push(json!({ "inlineData": { "mimeType": "application/pdf", "data": "JVBERi0xLjQ=" } }));
    body.to_string().into_bytes()
}

#[test]
fn chat_requests_go_through_the_outbound_translators() {
    let (chat, _) = to_chat(&typical_request(), false).unwrap();
    let chat = chat.to_string();
    let claude = json(&anthropic::chat_request(chat.as_bytes(), "claude-sonnet-4-5", false).unwrap());
    let results: Vec<&Value> = claude["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|block| block["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["tool_use_id"], "call_1_0");

    // Back to Gemini: the conversation comes back as the client wrote it,
    // thoughts and signatures aside.
    let original = json(&typical_request());
    let back = json(&gemini::chat_request(chat.as_bytes(), "gemini-2.5-flash", false).unwrap());
    let strip = |contents: &Value| -> Vec<Value> {
        let mut out = Vec::new();
        for content in contents.as_array().unwrap() {
            for part in content["parts"].as_array().unwrap() {
                if part.get("thought").is_some() {
                    continue;
                }
                let mut part = part.clone();
                let object = part.as_object_mut().unwrap();
                object.remove("thoughtSignature");
                for key in ["functionCall", "function_call", "functionResponse", "function_response"] {
                    if let Some(mut inner) = object.remove(key) {
                        inner.as_object_mut().unwrap().remove("id");
                        object.insert(key.replace("_call", "Call").replace("_response", "Response"), inner);
                    }
                }
                out.push(part);
            }
        }
        out
    };
    assert_eq!(strip(&back["contents"]), strip(&original["contents"]));
    assert_eq!(back["systemInstruction"]["parts"], json!([{ "text": "Use the tools." }]));
    assert_eq!(back["tools"][0]["functionDeclarations"].as_array().unwrap().len(), 3);
}

/// A provider's stream through its translator and this dialect's, as the
/// proxy chains them.
fn chained(provider: Box<dyn StreamTranslator>, stream: &[u8]) -> (Vec<Value>, ChainedStream) {
    let mut chain = ChainedStream::new(Some(provider), gemini_stream(&ClientHints::default()));
    let out = run(&mut chain, stream.chunks(7)).unwrap();
    (events(&out), chain)
}

#[test]
fn gemini_streams_come_back_through_chat() {
    let stream = read("gemini/stream_tools.gemini.sse");
    let (out, chain) = chained(Box::new(gemini::ChatStream::new(MODEL, true, 0)), &stream);
    let parts: Vec<Value> =
        out.iter().flat_map(|e| e["candidates"][0]["content"]["parts"].as_array().unwrap().clone()).collect();
    assert_eq!(
        parts,
        [
            json!({ "text": "Let me check both cities.", "thought": true }),
            json!({ "text": "Checking." }),
            json!({ "functionCall": { "name": "get_weather", "args": { "city": "Paris" }, "id": "call_tools-1_0" } }),
            json!({ "functionCall": { "name": "get_weather", "args": { "city": "Oslo" }, "id": "call_tools-1_1" } }),
        ]
    );
    let last = out.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 80);
    assert_eq!(last["usageMetadata"]["thoughtsTokenCount"], 15);
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 30);
    assert!(chain.is_complete());
    assert_eq!(chain.usage(), Some(Usage::new(80, 45)));
}

#[test]
fn anthropic_streams_come_back_through_chat() {
    let stream = read("anthropic/streams/text_and_tools.sse");
    let (out, chain) = chained(Box::new(anthropic::ChatStream::new(MODEL, true, 0)), &stream);
    assert!(chain.is_complete());
    let last = out.last().unwrap();
    assert!(last["candidates"][0]["finishReason"].is_string());
    assert!(last["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
    let calls: Vec<&Value> = out
        .iter()
        .flat_map(|e| e["candidates"][0]["content"]["parts"].as_array().unwrap())
        .filter_map(|p| p.get("functionCall"))
        .collect();
    assert!(!calls.is_empty(), "the fixture calls a tool");
    for call in calls {
        assert!(call["args"].is_object() && call["id"].is_string() && call["name"].is_string(), "{call}");
    }
    for (i, event) in out.iter().enumerate() {
        assert_eq!(event.get("usageMetadata").is_some(), i == out.len() - 1, "usage only on the last event");
    }
}

#[test]
fn the_stream_is_fed_events_not_bytes() {
    // SseEvent as the upstream gives it, without a framer.
    let mut translator = gemini_stream(&ClientHints::default());
    let event = SseEvent { event: None, data: r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}"#.into() };
    assert_eq!(translator.event(&event).unwrap().len(), 1);
    assert!(!translator.is_complete());
}
