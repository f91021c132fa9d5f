//! `<think>` blocks moved into `reasoning_content`: whole answers by table,
//! streams split at every character boundary.
#![cfg(feature = "upstream")]

use bytes::Bytes;
use keyrelay_layers::upstream::dialect::{
    SseEvent, SseFramer, StreamTranslator,
    sse::DONE,
    think::{ThinkSplitter, split_completion},
};
use serde_json::{Value, json};

// === split_completion ===

fn completion(choices: Value) -> Value {
    json!({
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "deepseek-r1-distill-llama-70b",
        "system_fingerprint": "fp_x",
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    })
}

fn choice(index: u64, message: Value) -> Value {
    json!({"index": index, "message": message, "logprobs": null, "finish_reason": "stop"})
}

fn split(body: &Value) -> Value {
    let out = split_completion(body.to_string().as_bytes()).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn whole_answers_by_table() {
    let message = |content: Value| json!({"role": "assistant", "content": content});
    let with_reasoning = |reasoning: &str, content: &str| json!({"role": "assistant", "content": content, "reasoning_content": reasoning});
    let cases = [
        ("leading block", message(json!("<think>Let me think.</think>\n\nThe answer is 4."))),
        ("whitespace before the block", message(json!("\n <think>Let me think.</think> \n The answer is 4."))),
        ("closing tag only", message(json!("Let me think.</think>\n\nThe answer is 4."))),
    ];
    for (name, message) in cases {
        let out = split(&completion(json!([choice(0, message)])));
        assert_eq!(out, completion(json!([choice(0, with_reasoning("Let me think.", "The answer is 4."))])), "{name}");
    }

    let out = split(&completion(json!([choice(0, message(json!("<think>still thinking when cut off")))])));
    assert_eq!(out, completion(json!([choice(0, with_reasoning("still thinking when cut off", ""))])), "unclosed");

    let out = split(&completion(json!([choice(0, message(json!("<think>\n\n</think>\n\nHi")))])));
    assert_eq!(out, completion(json!([choice(0, with_reasoning("\n\n", "Hi"))])), "whitespace-only reasoning");

    let out = split(&completion(json!([choice(0, message(json!("<think></think>Hi")))])));
    assert_eq!(out, completion(json!([choice(0, message(json!("Hi")))])), "empty reasoning adds no field");
}

#[test]
fn answers_without_a_block_come_back_byte_for_byte() {
    let untouched =
        ["The answer is 4.", "Use <think> tags like this: <think>x</think>", "<thinking>not ours</thinking>", ""];
    for content in untouched {
        // Spacing and field order serde_json would not reproduce.
        let body = format!(
            r#"{{ "model":"m", "id":"x",  "choices":[{{"index":0,"message":{{"role":"assistant","content":{}}}}}]}}"#,
            serde_json::to_string(content).unwrap()
        );
        assert_eq!(split_completion(body.as_bytes()).unwrap(), Bytes::from(body.clone()), "{content:?}");
    }
    let tool_call = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#;
    assert_eq!(split_completion(tool_call.as_bytes()).unwrap(), Bytes::from(tool_call));
    let no_choices = r#"{"error":{"message":"</think>"}}"#;
    assert_eq!(split_completion(no_choices.as_bytes()).unwrap(), Bytes::from(no_choices));
}

#[test]
fn each_choice_on_its_own_and_existing_reasoning_kept_first() {
    let body = completion(json!([
        choice(0, json!({"role": "assistant", "content": "<think>A</think>\nfirst"})),
        choice(1, json!({"role": "assistant", "content": "second, no block"})),
        choice(2, json!({"role": "assistant", "content": "C</think>third", "reasoning_content": "native. "})),
        choice(3, json!({"role": "assistant", "content": "<think>D</think>fourth", "reasoning_content": null})),
    ]));
    assert_eq!(
        split(&body),
        completion(json!([
            choice(0, json!({"role": "assistant", "content": "first", "reasoning_content": "A"})),
            choice(1, json!({"role": "assistant", "content": "second, no block"})),
            choice(2, json!({"role": "assistant", "content": "third", "reasoning_content": "native. C"})),
            choice(3, json!({"role": "assistant", "content": "fourth", "reasoning_content": "D"})),
        ]))
    );
}

#[test]
fn answers_that_are_not_json_objects_are_errors() {
    assert!(split_completion(b"not json").is_err());
    assert!(split_completion(b"[1,2]").is_err());
}

// === ThinkSplitter ===

const ID: &str = r#""id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,"model":"qwq-32b","system_fingerprint":"fp_q""#;

fn content_chunk(index: u64, text: &str) -> String {
    let text = serde_json::to_string(text).unwrap();
    format!(
        r#"{{{ID},"choices":[{{"index":{index},"delta":{{"content":{text}}},"logprobs":null,"finish_reason":null}}]}}"#
    )
}

fn role_chunk() -> String {
    format!(
        r#"{{{ID},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
    )
}

fn finish_chunk(index: u64) -> String {
    format!(r#"{{{ID},"choices":[{{"index":{index},"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#)
}

fn usage_chunk() -> String {
    format!(r#"{{{ID},"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}}}"#)
}

/// The provider's stream as bytes, one `data:` event per item.
fn stream(events: &[String]) -> Vec<u8> {
    events.iter().flat_map(|data| format!("data: {data}\n\n").into_bytes()).collect()
}

/// Frames `input`, runs every event through `splitter`, then `finish`: the
/// output events, one `Vec` per input event, and what `finish` returned.
fn run(mut splitter: ThinkSplitter, input: &[u8]) -> (Vec<Vec<Bytes>>, Vec<Bytes>) {
    let mut framer = SseFramer::new();
    let mut events = framer.push(input);
    events.extend(framer.finish());
    let per_event = events.iter().map(|event| splitter.event(event).unwrap()).collect();
    (per_event, splitter.finish())
}

fn parse_events(bytes: &[Bytes]) -> Vec<SseEvent> {
    let mut framer = SseFramer::new();
    let mut events: Vec<SseEvent> = bytes.iter().flat_map(|b| framer.push(b)).collect();
    events.extend(framer.finish());
    events
}

/// Concatenated `(reasoning_content, content)` per choice index of the
/// chunks in `out`.
fn texts(out: &[Bytes], index: u64) -> (String, String) {
    let (mut reasoning, mut content) = (String::new(), String::new());
    for event in parse_events(out) {
        if event.data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&event.data).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            if choice["index"] != index {
                continue;
            }
            let delta = &choice["delta"];
            reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(delta["content"].as_str().unwrap_or(""));
        }
    }
    (reasoning, content)
}

/// The content cut at `cuts` (byte offsets on character boundaries).
fn pieces<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([&text.len()]) {
        out.push(&text[from..cut]);
        from = cut;
    }
    out
}

/// Every way to cut `text` into two and three pieces, and one character a piece.
fn all_cuts(text: &str) -> Vec<Vec<usize>> {
    let bounds: Vec<usize> = text.char_indices().map(|(at, _)| at).skip(1).collect();
    let mut out = vec![vec![]];
    for (n, &a) in bounds.iter().enumerate() {
        out.push(vec![a]);
        for &b in &bounds[n + 1..] {
            out.push(vec![a, b]);
        }
    }
    out.push(bounds);
    out
}

const ANSWER: &str = "<think>Let me think.</think>\n\nThe answer is 4.";

#[test]
fn a_realistic_stream_split_at_every_boundary() {
    let cut_sets = all_cuts(ANSWER);
    assert!(cut_sets.len() > 1000);
    for cuts in cut_sets {
        let parts = pieces(ANSWER, &cuts);
        let mut input = vec![role_chunk()];
        input.extend(parts.iter().map(|part| content_chunk(0, part)));
        input.extend([finish_chunk(0), usage_chunk(), "[DONE]".to_owned()]);
        let (per_event, finished) = run(ThinkSplitter::new(), &stream(&input));
        assert!(finished.is_empty(), "{parts:?}: finish owes nothing");
        assert_eq!(per_event.len(), input.len());
        for (data, out) in input.iter().zip(&per_event) {
            assert_eq!(out.len(), 1, "{parts:?}: one event out per event in");
            let out = &out[0];
            if data == "[DONE]" {
                assert_eq!(&out[..], DONE);
            } else if !data.contains(r#""content":"#) || data == &role_chunk() {
                assert_eq!(out, &format!("data: {data}\n\n"), "{parts:?}: passes through byte for byte");
            } else {
                // Everything but the delta's text is what the provider sent.
                let events = parse_events(std::slice::from_ref(out));
                let mut got: Value = serde_json::from_str(&events[0].data).unwrap();
                let mut sent: Value = serde_json::from_str(data).unwrap();
                let delta = got["choices"][0]["delta"].as_object_mut().unwrap().clone();
                assert!(!delta.is_empty(), "{parts:?}: a delta never ends up empty");
                assert!(delta.keys().all(|k| k == "content" || k == "reasoning_content"), "{parts:?}: {delta:?}");
                got["choices"][0]["delta"] = json!({});
                sent["choices"][0]["delta"] = json!({});
                assert_eq!(got, sent, "{parts:?}");
            }
        }
        let out: Vec<Bytes> = per_event.into_iter().flatten().collect();
        assert_eq!(texts(&out, 0), ("Let me think.".to_owned(), "The answer is 4.".to_owned()), "{parts:?}");
    }
}

#[test]
fn tags_split_over_many_chunks() {
    let input: Vec<String> = ["<thi", "nk>abc</th", "ink>\n\nAnswer"].iter().map(|t| content_chunk(0, t)).collect();
    let (per_event, finished) = run(ThinkSplitter::new(), &stream(&input));
    assert!(finished.is_empty());
    let datas: Vec<String> = per_event.iter().map(|out| parse_events(out)[0].data.clone()).collect();
    let deltas: Vec<Value> =
        datas.iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"].clone()).collect();
    assert_eq!(
        deltas,
        [json!({"content": ""}), json!({"reasoning_content": "abc"}), json!({"content": "Answer"})],
        "a chunk left with nothing keeps an empty content"
    );
}

#[test]
fn a_role_chunk_that_holds_back_drops_its_content() {
    let input = [format!(
        r#"{{{ID},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"<think"}},"finish_reason":null}}]}}"#
    )];
    let (per_event, _) = run(ThinkSplitter::new(), &stream(&input));
    let chunk: Value = serde_json::from_str(&parse_events(&per_event[0])[0].data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"], json!({"role": "assistant"}));
}

/// Whatever the cut, a stream says what the whole answer says.
#[test]
fn streams_agree_with_whole_answers() {
    let contents = [
        ANSWER,
        "  \n<think>\nhmm é ü </think>  done",
        "<think>never closed < </",
        "<think>closed at the very end</think>",
        "<think>a</thinking> b</think>c</think>d",
        "no block at all",
        "<thinking>not ours</thinking>",
        "<thi",
        "  ",
        "answer with <think>a late</think> tag",
        "<think></think>\n\nempty",
        "</",
    ];
    for text in contents {
        let whole: Value = serde_json::from_slice(
            &split_completion(completion(json!([choice(0, json!({"content": text}))])).to_string().as_bytes()).unwrap(),
        )
        .unwrap();
        let message = &whole["choices"][0]["message"];
        let want = (
            message["reasoning_content"].as_str().unwrap_or("").to_owned(),
            message["content"].as_str().unwrap().to_owned(),
        );
        for cuts in all_cuts(text) {
            let parts = pieces(text, &cuts);
            // With and without a finish_reason and a [DONE] to release what is held back.
            for ending in [vec![finish_chunk(0), "[DONE]".to_owned()], vec!["[DONE]".to_owned()], vec![]] {
                let mut input: Vec<String> = parts.iter().map(|part| content_chunk(0, part)).collect();
                input.extend(ending.clone());
                let (per_event, finished) = run(ThinkSplitter::new(), &stream(&input));
                let mut out: Vec<Bytes> = per_event.into_iter().flatten().collect();
                if !ending.is_empty() {
                    assert!(finished.is_empty(), "{parts:?}");
                    assert_eq!(out.last().map(|b| &b[..]), Some(DONE), "{parts:?}: [DONE] stays last");
                }
                out.extend(finished);
                assert_eq!(texts(&out, 0), want, "{text:?} as {parts:?} then {ending:?}");
            }
        }
    }
}

#[test]
fn held_back_text_is_released_by_finish_reason_done_or_finish() {
    // Unclosed at the end: "</th" might have been a tag, but it was reasoning.
    let body = [content_chunk(0, "<think>abc</th")];

    let input = [body[0].clone(), finish_chunk(0)];
    let (per_event, _) = run(ThinkSplitter::new(), &stream(&input));
    let chunk: Value = serde_json::from_str(&parse_events(&per_event[1])[0].data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"], json!({"reasoning_content": "</th"}));
    assert_eq!(chunk["choices"][0]["finish_reason"], "stop");

    let input = [body[0].clone(), "[DONE]".to_owned()];
    let (per_event, finished) = run(ThinkSplitter::new(), &stream(&input));
    assert!(finished.is_empty());
    assert_eq!(per_event[1].len(), 2);
    assert_eq!(&per_event[1][1][..], DONE);
    let chunk: Value = serde_json::from_str(&parse_events(&per_event[1][..1])[0].data).unwrap();
    assert_eq!(
        chunk,
        json!({
            "id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "qwq-32b", "system_fingerprint": "fp_q",
            "choices": [{"index": 0, "delta": {"reasoning_content": "</th"}, "finish_reason": null}],
        })
    );

    let (_, finished) = run(ThinkSplitter::new(), &stream(&body));
    assert_eq!(finished.len(), 1);
    let chunk: Value = serde_json::from_str(&parse_events(&finished)[0].data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"], json!({"reasoning_content": "</th"}));
    assert_eq!(chunk["id"], "chatcmpl-7");

    // Outside a block, a held-back prefix is content.
    let (_, finished) = run(ThinkSplitter::new(), &stream(&[content_chunk(0, " <thin")]));
    let chunk: Value = serde_json::from_str(&parse_events(&finished)[0].data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"], json!({"content": " <thin"}));
}

#[test]
fn choices_are_split_on_their_own() {
    let input = [
        content_chunk(0, "<think>zero "),
        content_chunk(1, "one has no block"),
        content_chunk(0, "thinks</th"),
        content_chunk(1, " at all</think>"),
        content_chunk(0, "ink>\n0"),
        finish_chunk(0),
        finish_chunk(1),
        "[DONE]".to_owned(),
    ];
    let (per_event, finished) = run(ThinkSplitter::new(), &stream(&input));
    assert!(finished.is_empty());
    let out: Vec<Bytes> = per_event.into_iter().flatten().collect();
    assert_eq!(texts(&out, 0), ("zero thinks".to_owned(), "0".to_owned()));
    assert_eq!(texts(&out, 1), (String::new(), "one has no block at all</think>".to_owned()));
}

#[test]
fn native_reasoning_in_a_delta_comes_first() {
    let input = [format!(
        r#"{{{ID},"choices":[{{"index":0,"delta":{{"reasoning_content":"native ","content":"<think>ours"}},"finish_reason":null}}]}}"#
    )];
    let (per_event, _) = run(ThinkSplitter::new(), &stream(&input));
    let chunk: Value = serde_json::from_str(&parse_events(&per_event[0])[0].data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"], json!({"reasoning_content": "native ours"}));
}

#[test]
fn other_events_pass_through() {
    let mut splitter = ThinkSplitter::new();
    let keepalive = SseEvent { event: None, data: "not json".into() };
    assert_eq!(splitter.event(&keepalive).unwrap(), [Bytes::from_static(b"data: not json\n\n")]);
    let named = SseEvent { event: Some("error".into()), data: "{\"error\":{\"message\":\"x\"}}\nmore".into() };
    assert_eq!(
        splitter.event(&named).unwrap(),
        [Bytes::from_static(b"event: error\ndata: {\"error\":{\"message\":\"x\"}}\ndata: more\n\n")]
    );
    let error = SseEvent { event: None, data: r#"{"error":{"message":"<think>"}}"#.into() };
    assert_eq!(splitter.event(&error).unwrap(), [Bytes::from(format!("data: {}\n\n", error.data))]);
    assert_eq!(splitter.event(&SseEvent { event: None, data: "[DONE]".into() }).unwrap(), [Bytes::from_static(DONE)]);
    assert!(splitter.finish().is_empty());
}

#[test]
fn already_open_reads_the_content_as_reasoning_until_the_closing_tag() {
    for text in ["Let me think.</think>\n\nThe answer is 4.", ANSWER] {
        for cuts in all_cuts(text) {
            let parts = pieces(text, &cuts);
            let mut input: Vec<String> = parts.iter().map(|part| content_chunk(0, part)).collect();
            input.extend([finish_chunk(0), "[DONE]".to_owned()]);
            let (per_event, finished) = run(ThinkSplitter::already_open(), &stream(&input));
            assert!(finished.is_empty());
            let out: Vec<Bytes> = per_event.into_iter().flatten().collect();
            assert_eq!(texts(&out, 0), ("Let me think.".to_owned(), "The answer is 4.".to_owned()), "{parts:?}");
        }
    }
    // A `new()` splitter reads a closing tag alone as content.
    let input = [content_chunk(0, "Let me think.</think>4"), "[DONE]".to_owned()];
    let (per_event, _) = run(ThinkSplitter::new(), &stream(&input));
    let out: Vec<Bytes> = per_event.into_iter().flatten().collect();
    assert_eq!(texts(&out, 0), (String::new(), "Let me think.</think>4".to_owned()));
}

/// Found by fuzzing (fuzz/fuzz_targets/stream_openai.rs): an unnamed event
/// with more than one `data:` line passed through as `data: line1\nline2`,
/// so the client's SSE parser dropped every line after the first.
#[test]
fn events_passed_through_keep_every_data_line() {
    let input = b"data: {\"not\":\ndata: \"a chunk\"}\n\nevent: note\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
    let (per_event, finished) = run(ThinkSplitter::new(), input);
    assert!(finished.is_empty());
    let out: Vec<Bytes> = per_event.into_iter().flatten().collect();
    assert_eq!(
        parse_events(&out),
        [
            SseEvent { event: None, data: "{\"not\":\n\"a chunk\"}".into() },
            SseEvent { event: Some("note".into()), data: "one\ntwo".into() },
            SseEvent { event: None, data: "[DONE]".into() },
        ]
    );
}
