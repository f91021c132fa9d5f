//! The inbound Messages API translator (`client::anthropic::Messages`):
//! what Claude Code and the Anthropic SDKs send, and the chat answers they
//! get back translated.
//!
//! Input: byte 0 picks the mode (its value modulo 3), byte 1 is an option
//! byte, the rest is the payload.
//!
//! - 0 (request): the payload is a Messages request. `to_chat` (a stream
//!   when bit 0 of the option is set) gives Err or a chat request (a JSON
//!   object with the model and a `messages` array), which the outbound
//!   `anthropic::chat_request` and `gemini::chat_request` take or refuse;
//!   `count_tokens` gives Err or `{"input_tokens": N}`.
//! - 1 (stream): the payload is a chat-completions stream, pushed through
//!   the framer in chunks of `option % 64` bytes (0: whole) into the
//!   Messages stream translator. Every event out is `event: <type>\ndata:
//!   <JSON of that type>\n\n`; a stream that was not refused starts with
//!   `message_start` and ends with `message_stop`, once.
//! - 2 (answer): the payload is a whole `chat.completion`: `answer` gives
//!   Ok (a `message` object) or Err.
#![no_main]

use bytes::Bytes;
use keyrelay_fuzz::{assert_json, chunks, translate};
use keyrelay_layers::{
    extensions::Endpoint,
    upstream::dialect::{
        anthropic,
        client::{ClientDialect, ClientHints, ClientRequest, anthropic::Messages},
        gemini,
    },
};
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "gpt-4.1";

/// The event's type, checking that it is one framed Messages event.
fn event_type(event: &Bytes) -> String {
    let text = std::str::from_utf8(event).expect("events are UTF-8");
    let rest = text.strip_prefix("event: ").unwrap_or_else(|| panic!("no event name: {text:?}"));
    let (name, rest) = rest.split_once('\n').unwrap_or_else(|| panic!("no data line: {text:?}"));
    let data = rest.strip_prefix("data: ").and_then(|d| d.strip_suffix("\n\n"));
    let data = data.unwrap_or_else(|| panic!("not `data: ...\\n\\n`: {text:?}"));
    assert!(!data.contains('\n'), "a data line with a newline inside: {text:?}");
    let value = assert_json("a Messages event", data.as_bytes());
    assert_eq!(value["type"], name, "the event's name is not its type: {text:?}");
    name.to_owned()
}

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    match mode % 3 {
        0 => {
            let request = ClientRequest::new(Endpoint::Messages, payload, MODEL, option & 1 == 1);
            if let Ok(chat) = Messages.to_chat(&request) {
                let value = assert_json("to_chat", &chat.body);
                assert_eq!(value["model"], MODEL);
                assert!(value["messages"].is_array(), "no messages in {value}");
                let _ = anthropic::chat_request(&chat.body, "claude-sonnet-4-5", request.stream);
                let _ = gemini::chat_request(&chat.body, "gemini-2.5-flash", request.stream);
            }
            if let Ok(count) = Messages.count_tokens(&request) {
                assert!(assert_json("count_tokens", &count)["input_tokens"].is_u64());
            }
        }
        1 => {
            let size = option % 64;
            let pieces = if size == 0 { vec![payload] } else { chunks(payload, &[size]) };
            let mut stream = Messages.stream("claude-via-gpt", &ClientHints::default());
            let translated = translate(&pieces, stream.as_mut());
            let types: Vec<String> = translated.out.iter().map(event_type).collect();
            if !translated.failed {
                assert_eq!(types.first().map(String::as_str), Some("message_start"), "{types:?}");
                assert_eq!(types.last().map(String::as_str), Some("message_stop"), "{types:?}");
                assert_eq!(types.iter().filter(|t| *t == "message_stop").count(), 1, "{types:?}");
            }
        }
        _ => {
            if let Ok(message) = Messages.answer(payload, "claude-via-gpt", &ClientHints::default()) {
                assert_eq!(assert_json("answer", &message)["type"], "message");
            }
        }
    }
});
