//! The Responses API as a client speaks it, through chat completions.
//!
//! Input: byte 0 picks the mode by its low bit, byte 1 is an option byte,
//! the rest is the payload. Bit 0 of the option picks the request whose
//! hints the answers get: a plain one, or one with a function and a custom
//! tool (so that custom tool calls are translated back).
//!
//! - odd (`s`): the payload is a chat-completions stream, pushed through the
//!   framer in chunks of `(option >> 1) % 64` bytes (0: whole) into the
//!   Responses stream translator. Every event out is
//!   `event: <type>\ndata: <JSON>\n\n`, its JSON's `type` the event's name
//!   and its `sequence_number` counting from 0; a stream that was not
//!   refused ends with one final event (`response.completed`,
//!   `.incomplete` or `.failed`), and nothing after it.
//! - even (`r`): the payload is a Responses request: `to_chat` gives Ok (a
//!   chat request, a JSON object with `messages`) or Err; `count_tokens`
//!   gives Ok (`response.input_tokens`) or Err. Then the payload as a whole
//!   chat completion: `answer` gives Ok (a `response` object) or Err.
#![no_main]

use keyrelay_fuzz::{assert_json, chunks, translate};
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::client::{ClientDialect, ClientHints, ClientRequest, responses::Responses},
};
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "upstream-model";

const TOOLS_REQUEST: &[u8] = br#"{"model": "m", "input": "hi", "instructions": "Be brief.",
    "tools": [{"type": "function", "name": "f"}, {"type": "custom", "name": "apply_patch"}]}"#;

fn hints(with_tools: bool) -> ClientHints {
    if !with_tools {
        return ClientHints::default();
    }
    let request = ClientRequest::new(Endpoint::Responses, TOOLS_REQUEST, MODEL, false);
    Responses.to_chat(&request).expect("the seed request translates").hints
}

/// Checks the framing and numbering of the Responses events.
fn assert_events(out: &[bytes::Bytes], failed: bool) {
    let mut finals = 0;
    for (i, event) in out.iter().enumerate() {
        let text = std::str::from_utf8(event).expect("events are UTF-8");
        let (name, data) = text
            .strip_prefix("event: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .and_then(|t| t.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not `event: ...\\ndata: ...\\n\\n`: {text:?}"));
        assert!(!data.contains('\n'), "a data line with a newline inside: {text:?}");
        let value = assert_json("a Responses event", data.as_bytes());
        assert_eq!(value["type"], name, "the event's name is its type");
        assert_eq!(value["sequence_number"], i, "sequence numbers count from 0");
        assert_eq!(finals, 0, "an event after the final one: {text:?}");
        if matches!(name, "response.completed" | "response.incomplete" | "response.failed") {
            finals += 1;
            assert!(value["response"]["output"].is_array());
        }
    }
    if !failed {
        assert_eq!(finals, 1, "a stream that was not refused ends with one final event");
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    let hints = hints(option & 1 == 1);
    if mode & 1 == 1 {
        let size = (option >> 1) % 64;
        let pieces = if size == 0 { vec![payload] } else { chunks(payload, &[size]) };
        let mut stream = Responses.stream(MODEL, &hints);
        let translated = translate(&pieces, stream.as_mut());
        assert_events(&translated.out, translated.failed);
    } else {
        for stream in [false, true] {
            let request = ClientRequest::new(Endpoint::Responses, payload, MODEL, stream);
            if let Ok(chat) = Responses.to_chat(&request) {
                let body = assert_json("the chat request", &chat.body);
                assert!(body["messages"].is_array(), "{body}");
                assert_eq!(body["model"], MODEL);
            }
        }
        let request = ClientRequest::new(Endpoint::Responses, payload, MODEL, false);
        if let Ok(count) = Responses.count_tokens(&request) {
            assert!(assert_json("the token count", &count)["input_tokens"].is_u64());
        }
        if let Ok(answer) = Responses.answer(payload, MODEL, &hints) {
            assert_eq!(assert_json("the response", &answer)["object"], "response");
        }
    }
});
