//! Token usage read from the tail of a response, without buffering it:
//! the last few KiB are kept as they pass, and the last `"usage"` object in
//! them is read at the end. That finds OpenAI's `usage` in a completion, in
//! an embeddings answer, and in the final chunk of a stream — and, since
//! every dialect's names are understood ([`usage_in_tail`]), Anthropic's
//! and the Responses API's `usage` and Gemini's `usageMetadata` in the
//! answers that pass through in their own dialect.
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
//! assert_eq!(tap.usage(), Some(Usage::new(9, 2)));
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
    /// The prompt tokens read from the provider's prompt cache: part of
    /// `prompt_tokens` (as OpenAI counts them), priced at the cached rate.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    /// `prompt` and `completion` tokens, none of them cached.
    pub const fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { prompt_tokens, completion_tokens, cached_tokens: 0 }
    }

    /// The same, with `cached` of the prompt tokens read from a cache.
    pub const fn with_cached(mut self, cached: u64) -> Self {
        self.cached_tokens = cached;
        self
    }
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

/// The last `"usage": {...}` (or Gemini's `"usageMetadata": {...}`)
/// object in `tail` that parses; `null` usages (stream chunks before the
/// last) are skipped. Every dialect's names count: OpenAI's
/// `prompt_tokens` / `completion_tokens`; Anthropic's `input_tokens` plus
/// its cache reads and writes / `output_tokens`; the Responses API's
/// `input_tokens` / `output_tokens`; Gemini's `promptTokenCount` /
/// `candidatesTokenCount` plus `thoughtsTokenCount`. The cached part of
/// the prompt: OpenAI's `prompt_tokens_details.cached_tokens`, the
/// Responses API's `input_tokens_details.cached_tokens`, Anthropic's
/// `cache_read_input_tokens`, Gemini's `cachedContentTokenCount`.
///
/// ```
/// use keyrelay_layers::usage::{usage_in_tail, Usage};
///
/// let anthropic = br#"{"usage": {"input_tokens": 3, "cache_read_input_tokens": 100, "output_tokens": 9}}"#;
/// assert_eq!(usage_in_tail(anthropic), Some(Usage::new(103, 9).with_cached(100)));
/// let gemini = br#"{"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7, "thoughtsTokenCount": 2}}"#;
/// assert_eq!(usage_in_tail(gemini), Some(Usage::new(5, 9)));
/// let openai = br#"{"usage": {"prompt_tokens": 50, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 32}}}"#;
/// assert_eq!(usage_in_tail(openai), Some(Usage::new(50, 1).with_cached(32)));
/// ```
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    // One backward search finds both keys: `"usage"` and `"usageMetadata"`
    // (a second search would scan the whole tail of every OpenAI answer
    // for a key it never has).
    let mut end = tail.len();
    while let Some(at) = memchr::memmem::rfind(&tail[..end], USAGE_STEM) {
        let rest = &tail[at + USAGE_STEM.len()..];
        let value = rest.strip_prefix(b"\"").or_else(|| rest.strip_prefix(b"Metadata\"")).and_then(value_after_key);
        if let Some(object) = value.filter(|v| v.starts_with(b"{")) {
            let mut values = serde_json::Deserializer::from_slice(object).into_iter::<AnyUsage>();
            if let Some(Ok(usage)) = values.next() {
                return Some(usage.into());
            }
        }
        end = at;
    }
    None
}

/// A usage object in any dialect's names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyUsage {
    #[serde(default, rename = "prompt_tokens")]
    prompt: Option<u64>,
    #[serde(default, rename = "completion_tokens")]
    completion: Option<u64>,
    #[serde(default, rename = "input_tokens")]
    input: Option<u64>,
    #[serde(default, rename = "output_tokens")]
    output: Option<u64>,
    #[serde(default, rename = "cache_read_input_tokens")]
    cache_read: u64,
    #[serde(default, rename = "cache_creation_input_tokens")]
    cache_creation: u64,
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default, rename = "prompt_tokens_details")]
    prompt_details: Option<CachedDetails>,
    #[serde(default, rename = "input_tokens_details")]
    input_details: Option<CachedDetails>,
}

/// OpenAI's `prompt_tokens_details` and the Responses API's
/// `input_tokens_details`: the cached part of the prompt.
#[derive(Deserialize)]
struct CachedDetails {
    #[serde(default, rename = "cached_tokens")]
    cached: Option<u64>,
}

impl From<AnyUsage> for Usage {
    fn from(u: AnyUsage) -> Self {
        // Anthropic's `input_tokens` leaves out its cache reads and writes;
        // OpenAI's `prompt_tokens` includes cached tokens: counted alike.
        let prompt = u
            .prompt
            .or(u.input.map(|input| input + u.cache_read + u.cache_creation))
            .or(u.prompt_token_count.map(|prompt| prompt + u.tool_use_prompt_token_count));
        let completion = u
            .completion
            .or(u.output)
            .or(u.candidates_token_count.map(|candidates| candidates + u.thoughts_token_count));
        let cached = u
            .prompt_details
            .or(u.input_details)
            .and_then(|d| d.cached)
            .unwrap_or(u.cache_read.max(u.cached_content_token_count));
        Usage { prompt_tokens: prompt.unwrap_or(0), completion_tokens: completion.unwrap_or(0), cached_tokens: cached }
    }
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
/// What both usage keys start with.
const USAGE_STEM: &[u8] = b"\"usage";

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
        assert_eq!(usage_in_tail(completion), Some(Usage::new(19, 10)));
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(usage_in_tail(stream), Some(Usage::new(5, 7)));
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(usage_in_tail(embeddings), Some(Usage::new(8, 0)));
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
            assert_eq!(tap.usage(), Some(Usage::new(3, 4)), "split {split}");
            let mut frames = UsageTap::default();
            for chunk in body.as_bytes().chunks(split) {
                frames.push_bytes(&bytes::Bytes::copy_from_slice(chunk));
            }
            assert!(frames.tail.len() <= TAIL);
            assert_eq!(frames.usage(), tap.usage(), "frames of {split}");
        }
    }
}
