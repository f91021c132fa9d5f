//! Token usage read from the tail of a response, without buffering it:
//! the last few KiB are kept as they pass, and the last `"usage"` object in
//! them is read at the end. That finds OpenAI's `usage` in a completion, in
//! an embeddings answer, and in the final chunk of a stream.
//!
//! ```
//! use keyrelay_layers::usage::{Usage, UsageTap};
//!
//! let stream = concat!(
//!     "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
//!     "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
//!     "data: [DONE]\n\n",
//! );
//! let mut tap = UsageTap::default();
//! for chunk in stream.as_bytes().chunks(7) {
//!     tap.push(chunk); // as the frames pass, split anywhere
//! }
//! assert_eq!(tap.usage(), Some(Usage { prompt_tokens: 9, completion_tokens: 2 }));
//! assert_eq!(UsageTap::default().usage(), None);
//! ```

use bytes::{Buf, BytesMut};
use serde::Deserialize;

/// How much of a body's end is kept.
const TAIL: usize = 8 * 1024;

/// Tokens of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// `usage.prompt_tokens` (0 when absent).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// `usage.completion_tokens` (0 when absent, as in embeddings answers).
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Keeps the last 8 KiB of a body, to read its usage at the end.
#[derive(Debug, Default)]
pub struct UsageTap {
    tail: BytesMut,
    /// The latest frame, not yet copied: a body of one frame (most whole
    /// answers, once coalesced) is read in place.
    last: Option<bytes::Bytes>,
}

impl UsageTap {
    /// Sees the next frame of the body, without copying it until another
    /// one follows.
    pub fn push_bytes(&mut self, frame: &bytes::Bytes) {
        if let Some(previous) = self.last.take() {
            self.push(&previous);
        }
        self.last = Some(frame.clone());
    }

    /// Sees the next chunk of the body; only the tail is kept.
    pub fn push(&mut self, chunk: &[u8]) {
        if let Some(previous) = self.last.take() {
            self.push(&previous);
        }
        if chunk.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - TAIL..]);
            return;
        }
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(TAIL);
        self.tail.advance(overflow);
        self.tail.extend_from_slice(chunk);
    }

    /// The usage in what was seen, if any.
    pub fn usage(&self) -> Option<Usage> {
        match &self.last {
            None => usage_in_tail(&self.tail),
            Some(last) if self.tail.is_empty() => usage_in_tail(&last[last.len().saturating_sub(TAIL)..]),
            Some(last) => {
                let mut tail = self.tail.clone();
                tail.extend_from_slice(last);
                usage_in_tail(&tail[tail.len().saturating_sub(TAIL)..])
            }
        }
    }
}

/// The last `"usage": {...}` object in `tail` that parses; `null` usages
/// (stream chunks before the last) are skipped.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let mut end = tail.len();
    while let Some(at) = memchr::memmem::rfind(&tail[..end], USAGE_KEY) {
        if let Some(object) = value_after_key(&tail[at + USAGE_KEY.len()..]).filter(|v| v.starts_with(b"{")) {
            let mut values = serde_json::Deserializer::from_slice(object).into_iter::<Usage>();
            if let Some(Ok(usage)) = values.next() {
                return Some(usage);
            }
        }
        end = at;
    }
    None
}

/// Whether `json` has a `"usage"` key whose value is an object (not `null`).
pub(crate) fn has_usage_object(json: &[u8]) -> bool {
    usage_values(json).any(|value| value.is_some_and(|v| v.starts_with(b"{")))
}

/// Whether every `"usage"` key in `json` (a run of SSE events) is
/// `"usage": null`. A usage object, also one whose value starts on the next
/// `data:` line (which an SSE framer joins before parsing), says no.
pub(crate) fn only_null_usage(json: &[u8]) -> bool {
    usage_values(json).all(|value| value.is_some_and(|v| v.starts_with(b"null")))
}

const USAGE_KEY: &[u8] = b"\"usage\"";

/// What follows each `"usage"` key of `json`, in order: the value after its
/// colon, or `None` when no colon follows on the same line.
fn usage_values(json: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    memchr::memmem::find_iter(json, USAGE_KEY).map(move |at| value_after_key(&json[at + USAGE_KEY.len()..]))
}

/// What follows `: ` after a key.
fn value_after_key(rest: &[u8]) -> Option<&[u8]> {
    Some(rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_in_a_completion_and_in_the_last_stream_chunk() {
        let completion = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        assert_eq!(usage_in_tail(completion), Some(Usage { prompt_tokens: 19, completion_tokens: 10 }));
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(usage_in_tail(stream), Some(Usage { prompt_tokens: 5, completion_tokens: 7 }));
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(usage_in_tail(embeddings), Some(Usage { prompt_tokens: 8, completion_tokens: 0 }));
        assert_eq!(usage_in_tail(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(usage_in_tail(b"no usage here"), None);
    }

    #[test]
    fn the_tap_keeps_only_the_tail_across_any_split() {
        let body = format!("{}{}", "x".repeat(20_000), r#""usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#);
        for split in [1, 7, 100, 4096, 9000, 30_000] {
            let mut tap = UsageTap::default();
            for chunk in body.as_bytes().chunks(split) {
                tap.push(chunk);
            }
            assert!(tap.tail.len() <= TAIL);
            assert_eq!(tap.usage(), Some(Usage { prompt_tokens: 3, completion_tokens: 4 }), "split {split}");
            let mut frames = UsageTap::default();
            for chunk in body.as_bytes().chunks(split) {
                frames.push_bytes(&bytes::Bytes::copy_from_slice(chunk));
            }
            assert!(frames.tail.len() <= TAIL);
            assert_eq!(frames.usage(), tap.usage(), "frames of {split}");
        }
    }
}
