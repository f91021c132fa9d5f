//! Gemini's generateContent as a client speaks it: its requests to chat
//! completions, and chat answers back to Gemini's.
//!
//! Input: byte 0 picks the mode by its low bit, byte 1 is an option byte,
//! the rest is the payload.
//!
//! - odd (`s`): the payload is a chat-completions stream, pushed through
//!   the framer in chunks of `(option >> 1) % 64` bytes (0: whole) into the
//!   dialect's stream translator (`includeThoughts: false` when bit 0 of
//!   the option is set). Every event out is `data: <JSON object>\n\n`
//!   (Gemini's streams have no `[DONE]`), and a complete stream that was
//!   not refused ends with an event carrying a `finishReason`.
//! - even (`r`): the payload is a client's body: `to_chat` (a stream when
//!   bit 0 of the option is set) gives Ok, a chat request whose `model` is
//!   the model and whose `messages` is an array, which the Anthropic and
//!   Gemini outbound translators take or refuse; or Err. `answer` (the
//!   payload as a chat completion) and `count_tokens` give Ok (a JSON
//!   object) or Err.
#![no_main]

use keyrelay_fuzz::{assert_json, chunks, translate};
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::{
        anthropic,
        client::{ClientDialect, ClientHints, ClientRequest, gemini::GenerateContent},
        gemini,
    },
};
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "gpt-4.1";

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    let hints = if option & 1 == 1 {
        ClientHints::new(serde_json::json!({ "includeThoughts": false }))
    } else {
        ClientHints::default()
    };
    if mode & 1 == 1 {
        let size = (option >> 1) % 64;
        let pieces = if size == 0 { vec![payload] } else { chunks(payload, &[size]) };
        let mut stream = GenerateContent.stream(MODEL, &hints);
        let translated = translate(&pieces, stream.as_mut());
        let mut last = None;
        for event in &translated.out {
            let data = event
                .strip_prefix(b"data: ")
                .and_then(|rest| rest.strip_suffix(b"\n\n"))
                .unwrap_or_else(|| panic!("not a `data: ...\\n\\n` event: {:?}", String::from_utf8_lossy(event)));
            assert!(!data.contains(&b'\n'), "a data line with a newline inside");
            let value = assert_json("a Gemini stream event", data);
            assert!(value.is_object(), "a Gemini stream event is an object");
            last = Some(value);
        }
        if !translated.failed && stream.is_complete() {
            let last = last.expect("a complete stream sends its last event");
            assert!(last["candidates"][0]["finishReason"].is_string(), "the last event has no finishReason: {last}");
        }
    } else {
        let stream = option & 1 == 1;
        let endpoint = if stream { Endpoint::StreamGenerateContent } else { Endpoint::GenerateContent };
        let req = ClientRequest::new(endpoint, payload, MODEL, stream);
        if let Ok(chat) = GenerateContent.to_chat(&req) {
            let body = assert_json("to_chat", &chat.body);
            assert_eq!(body["model"], MODEL);
            assert!(body["messages"].is_array(), "no messages in {body}");
            assert_eq!(body.get("stream").is_some(), stream);
            if let Ok(out) = anthropic::chat_request(&chat.body, "claude-sonnet-4-5", stream) {
                assert!(assert_json("anthropic::chat_request", &out).is_object());
            }
            if let Ok(out) = gemini::chat_request(&chat.body, "gemini-2.5-flash", stream) {
                assert!(assert_json("gemini::chat_request", &out).is_object());
            }
        }
        if let Ok(out) = GenerateContent.answer(payload, MODEL, &hints) {
            assert!(assert_json("answer", &out).is_object());
        }
        if let Ok(out) = GenerateContent.count_tokens(&req) {
            assert!(assert_json("count_tokens", &out)["totalTokens"].is_u64());
        }
    }
});
