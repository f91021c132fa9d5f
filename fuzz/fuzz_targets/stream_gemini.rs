//! Gemini's answers translated back into OpenAI's.
//!
//! Input: byte 0 picks the mode by its low bit, byte 1 is an option byte,
//! the rest is the payload.
//!
//! - odd (`s`): the payload is a `streamGenerateContent?alt=sse` stream,
//!   pushed through the framer in chunks of `(option >> 1) % 64` bytes (0:
//!   whole) into `gemini::ChatStream` (with the usage chunk when bit 0 of
//!   the option is set). Every event out is `data: <JSON>\n\n` or
//!   `data: [DONE]\n\n`, and a stream that was not refused ends with `[DONE]`.
//! - even (`r`): the payload is a whole answer: `gemini::chat_response` and
//!   `gemini::embeddings_response_encoded` (floats, and base64 when bit 0 of
//!   the option is set) give Ok (a JSON object) or Err;
//!   `gemini::error_body` (status from the option byte) always gives an
//!   OpenAI-shaped JSON error; `model_ids` and `next_page_token` do not panic.
#![no_main]

use keyrelay_fuzz::{assert_error_body, assert_json, assert_stream, chunks, status, translate};
use keyrelay_layers::upstream::dialect::gemini;
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "gemini-2.5-flash";
const EMBEDDING_MODEL: &str = "text-embedding-004";
const CREATED: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    if mode & 1 == 1 {
        let size = (option >> 1) % 64;
        let pieces = if size == 0 { vec![payload] } else { chunks(payload, &[size]) };
        let mut stream = gemini::ChatStream::new(MODEL, option & 1 == 1, CREATED);
        assert_stream(&translate(&pieces, &mut stream));
    } else {
        if let Ok(out) = gemini::chat_response(payload, MODEL, CREATED) {
            assert!(assert_json("gemini::chat_response", &out).is_object());
        }
        if let Ok(out) = gemini::embeddings_response_encoded(payload, EMBEDDING_MODEL, false) {
            assert!(assert_json("gemini::embeddings_response_encoded", &out).is_object());
        }
        if option & 1 == 1
            && let Ok(out) = gemini::embeddings_response_encoded(payload, EMBEDDING_MODEL, true)
        {
            assert!(assert_json("gemini::embeddings_response_encoded (base64)", &out).is_object());
        }
        assert_error_body("gemini::error_body", &gemini::error_body(status(*option), payload));
        let _ = gemini::model_ids(payload);
        let _ = gemini::next_page_token(payload);
    }
});
