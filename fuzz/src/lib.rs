//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Input layout for the targets that need knobs: the first byte(s) choose a
//! mode and options, the rest is the payload. See README.md for each target.

use bytes::Bytes;
use keyrelay_layers::upstream::dialect::{SseEvent, SseFramer, StreamTranslator, sse::DONE};

/// Splits `payload` into chunks whose sizes cycle through `sizes` (each
/// 0..=63; a 0 is an empty chunk, which a body may deliver too). With no
/// sizes, the payload is one chunk.
pub fn chunks<'a>(payload: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let size = usize::from(sizes[i % sizes.len()] % 64);
        i += 1;
        if size == 0 {
            out.push(&rest[..0]);
            // Always make progress, even when every size is 0.
            let (head, tail) = rest.split_at(1);
            out.push(head);
            rest = tail;
            continue;
        }
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// Every event of `chunks` as the framer gives them, `finish` included.
pub fn frame(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut framer = SseFramer::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(framer.push(chunk));
    }
    events.extend(framer.finish());
    events
}

/// What a translator made of a stream.
#[derive(Debug, Default)]
pub struct Translated {
    /// Every chunk it produced, `finish`'s included.
    pub out: Vec<Bytes>,
    /// The first event it refused (the stream ends there with an error).
    pub failed: bool,
}

/// Drives `translator` the way `upstream::TranslatedStream` does: events of
/// each chunk through `event` until one fails; at the end the framer's last
/// event, then `finish` (only when nothing failed).
pub fn translate(chunks: &[&[u8]], translator: &mut dyn StreamTranslator) -> Translated {
    let mut framer = SseFramer::new();
    let mut result = Translated::default();
    for chunk in chunks {
        for event in framer.push(chunk) {
            match translator.event(&event) {
                Ok(out) => result.out.extend(out),
                Err(_) => {
                    result.failed = true;
                    return result;
                }
            }
        }
    }
    if let Some(event) = framer.finish() {
        match translator.event(&event) {
            Ok(out) => result.out.extend(out),
            Err(_) => {
                result.failed = true;
                return result;
            }
        }
    }
    // Both are asked by the upstream at the end; neither may panic.
    let _ = translator.is_complete();
    let _ = translator.usage();
    result.out.extend(translator.finish());
    let _ = translator.usage();
    result
}

/// Asserts that `chunk` is one OpenAI SSE event as the translators write
/// them: `data: <JSON>\n\n`, or `data: [DONE]\n\n`.
pub fn assert_openai_event(chunk: &[u8]) {
    if chunk == DONE {
        return;
    }
    let data = chunk
        .strip_prefix(b"data: ")
        .and_then(|rest| rest.strip_suffix(b"\n\n"))
        .unwrap_or_else(|| panic!("not a `data: ...\\n\\n` event: {:?}", String::from_utf8_lossy(chunk)));
    assert!(!data.contains(&b'\n'), "a data line with a newline inside: {:?}", String::from_utf8_lossy(chunk));
    if let Err(err) = serde_json::from_slice::<serde_json::Value>(data) {
        panic!("event data is not JSON ({err}): {:?}", String::from_utf8_lossy(data));
    }
}

/// Asserts that `bytes` is JSON, naming `what` when it is not.
pub fn assert_json(what: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|err| panic!("{what} is not JSON ({err}): {:?}", String::from_utf8_lossy(bytes)))
}

/// A status for error bodies, from one byte: the ones providers send most,
/// then any 4xx/5xx.
pub fn status(byte: u8) -> u16 {
    const COMMON: [u16; 10] = [400, 401, 403, 404, 408, 413, 429, 500, 503, 529];
    COMMON.get(usize::from(byte)).copied().unwrap_or(400 + u16::from(byte) % 200)
}

/// Asserts what every translated stream promises: each event is
/// `data: <JSON>` or `[DONE]`, and a stream that was not refused ends with
/// `[DONE]`, once.
pub fn assert_stream(translated: &Translated) {
    for chunk in &translated.out {
        assert_openai_event(chunk);
    }
    if !translated.failed {
        assert_eq!(translated.out.last().map(|c| &c[..]), Some(DONE), "the stream does not end with [DONE]");
        let dones = translated.out.iter().filter(|c| &c[..] == DONE).count();
        assert_eq!(dones, 1, "[DONE] more than once");
    }
}

/// Asserts that an error body is OpenAI's shape: `{"error": {"message": "...", "type": "..."}}`
/// with a non-empty message.
pub fn assert_error_body(what: &str, bytes: &[u8]) {
    let value = assert_json(what, bytes);
    let message = value["error"]["message"].as_str();
    assert!(message.is_some_and(|m| !m.is_empty()), "{what}: no error.message in {value}");
    assert!(value["error"]["type"].is_string(), "{what}: no error.type in {value}");
}
