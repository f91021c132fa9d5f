//! Anthropic's answers translated back into OpenAI's.
//!
//! Input: byte 0 picks the mode by its low bit, byte 1 is an option byte,
//! the rest is the payload.
//!
//! - odd (`s`): the payload is a Messages stream, pushed through the framer
//!   in chunks of `(option >> 1) % 64` bytes (0: whole) into
//!   `anthropic::ChatStream` (with the usage chunk when bit 0 of the option
//!   is set). Every event out is `data: <JSON>\n\n` or `data: [DONE]\n\n`,
//!   and a stream that was not refused ends with `[DONE]`.
//! - even (`r`): the payload is a whole answer: `anthropic::chat_response`
//!   gives Ok (a JSON object) or Err; `anthropic::error_body` (status from
//!   the option byte) always gives an OpenAI-shaped JSON error;
//!   `anthropic::model_ids` gives Ok or Err.
#![no_main]

use keyrelay_fuzz::{assert_error_body, assert_json, assert_stream, chunks, status, translate};
use keyrelay_layers::upstream::dialect::anthropic;
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "claude-sonnet-4-5";
const CREATED: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    if mode & 1 == 1 {
        let size = (option >> 1) % 64;
        let pieces = if size == 0 { vec![payload] } else { chunks(payload, &[size]) };
        let mut stream = anthropic::ChatStream::new(MODEL, option & 1 == 1, CREATED);
        assert_stream(&translate(&pieces, &mut stream));
    } else {
        if let Ok(out) = anthropic::chat_response(payload, MODEL, CREATED) {
            assert!(assert_json("anthropic::chat_response", &out).is_object());
        }
        assert_error_body("anthropic::error_body", &anthropic::error_body(status(*option), payload));
        let _ = anthropic::model_ids(payload);
    }
});
