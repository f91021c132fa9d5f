//! Reasoning written inside the content as `<think>...</think>` (DeepSeek-R1
//! distills, QwQ, many vLLM and Ollama models), moved into OpenAI's
//! `reasoning_content`: an opt-in per provider, for whole answers
//! ([`split_completion`]) and streams ([`ThinkSplitter`]).
//!
//! Only one block counts, and only where these models put it: a `<think>`
//! at the very start of the content (after optional whitespace), up to the
//! first `</think>`; the whitespace right after `</think>` is dropped. Any
//! later tag is ordinary content.
//!
//! A whole answer may also carry only the closing tag (the chat template
//! opened the block inside the prompt): everything before the first
//! `</think>` is then reasoning. A stream cannot tell that case from an
//! ordinary answer without holding the whole answer back, so
//! [`ThinkSplitter::new`] treats such a `</think>` as content, and
//! [`ThinkSplitter::already_open`] is for providers whose template is known to
//! open the block.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::{think::{split_completion, ThinkSplitter}, SseEvent, StreamTranslator};
//! use serde_json::{json, Value};
//!
//! let answer = json!({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
//!     "message": {"role": "assistant", "content": "<think>2 + 2 = 4</think>\n\nFour."}}]});
//! let out: Value = serde_json::from_slice(&split_completion(answer.to_string().as_bytes()).unwrap()).unwrap();
//! assert_eq!(out["choices"][0]["message"]["reasoning_content"], "2 + 2 = 4");
//! assert_eq!(out["choices"][0]["message"]["content"], "Four.");
//!
//! // A stream may split the tags anywhere: only what is still undecided waits.
//! let mut splitter = ThinkSplitter::new();
//! let (mut reasoning, mut content) = (String::new(), String::new());
//! for piece in ["<thi", "nk>2 + 2", " = 4</th", "ink>\n\nFour."] {
//!     let chunk = json!({"object": "chat.completion.chunk",
//!         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
//!     for event in splitter.event(&SseEvent { event: None, data: chunk.to_string() }).unwrap() {
//!         let chunk: Value = serde_json::from_slice(event.strip_prefix(b"data: ").unwrap()).unwrap();
//!         let delta = &chunk["choices"][0]["delta"];
//!         reasoning += delta["reasoning_content"].as_str().unwrap_or_default();
//!         content += delta["content"].as_str().unwrap_or_default();
//!     }
//! }
//! assert!(splitter.finish().is_empty(), "nothing was left held back");
//! assert_eq!((reasoning.as_str(), content.as_str()), ("2 + 2 = 4", "Four."));
//! ```

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use super::{
    StreamTranslator, TranslateError,
    sse::{DONE, SseEvent, data_event},
};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// An OpenAI `chat.completion` with each choice's think block moved from
/// `message.content` into `message.reasoning_content` (after any reasoning
/// already there). A body with nothing to move comes back byte for byte;
/// otherwise it is re-serialised with every other value unchanged.
pub fn split_completion(body: &[u8]) -> Result<Bytes, TranslateError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the provider's answer is not JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(TranslateError::new("the provider's answer is not a JSON object"));
    };
    let mut changed = false;
    if let Some(Value::Array(choices)) = object.get_mut("choices") {
        for choice in choices {
            let Some(Value::Object(message)) = choice.get_mut("message") else { continue };
            let Some((reasoning, content)) = message.get("content").and_then(Value::as_str).and_then(split_text) else {
                continue;
            };
            let (reasoning, content) = (reasoning.to_owned(), content.to_owned());
            message.insert("content".to_owned(), Value::String(content));
            append_reasoning(message, &reasoning);
            changed = true;
        }
    }
    if !changed {
        return Ok(Bytes::copy_from_slice(body));
    }
    let out = serde_json::to_vec(&value).map_err(|e| TranslateError::new(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// `(reasoning, content)` when `text` holds a think block, by the rules in
/// the module documentation.
fn split_text(text: &str) -> Option<(&str, &str)> {
    if let Some(inner) = text.trim_start().strip_prefix(OPEN) {
        return Some(match inner.find(CLOSE) {
            Some(at) => (&inner[..at], inner[at + CLOSE.len()..].trim_start()),
            None => (inner, ""),
        });
    }
    let at = text.find(CLOSE)?;
    if text[..at].contains(OPEN) {
        return None; // a block that does not start the content: ordinary text
    }
    Some((&text[..at], text[at + CLOSE.len()..].trim_start()))
}

/// Adds `reasoning` after the object's `reasoning_content` (a string, or
/// absent or null). Empty reasoning adds nothing, not even the key.
fn append_reasoning(object: &mut Map<String, Value>, reasoning: &str) {
    if reasoning.is_empty() {
        return;
    }
    let joined = match object.get("reasoning_content") {
        Some(Value::String(existing)) => format!("{existing}{reasoning}"),
        _ => reasoning.to_owned(),
    };
    object.insert("reasoning_content".to_owned(), Value::String(joined));
}

/// Where one choice's content stands relative to its think block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Only whitespace so far, or a prefix of `<think>` after it.
    #[default]
    Start,
    /// Inside the block: text is reasoning until `</think>`.
    Inside,
    /// Just past `</think>`: whitespace is dropped.
    AfterClose,
    /// Ordinary content, passed through as it comes.
    Outside,
}

/// One choice's state: its phase and the text held back because it may be
/// the start of a tag (in [`Phase::Start`], also the whitespace before it).
#[derive(Debug, Default)]
struct Choice {
    phase: Phase,
    pending: String,
}

/// Text split from one piece of content.
#[derive(Debug, Default)]
struct Split {
    content: String,
    reasoning: String,
}

impl Choice {
    /// Feeds the next piece of content; returns what can be said of it now.
    fn feed(&mut self, text: &str, already_open: bool) -> Split {
        let mut out = Split::default();
        let mut text = std::mem::take(&mut self.pending) + text;
        loop {
            match self.phase {
                Phase::Start => {
                    let trimmed = text.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        text = rest.to_owned();
                        self.phase = Phase::Inside;
                    } else if trimmed.is_empty() || OPEN.starts_with(trimmed) {
                        self.pending = text;
                        return out;
                    } else {
                        self.phase = if already_open { Phase::Inside } else { Phase::Outside };
                    }
                }
                Phase::Inside => match text.find(CLOSE) {
                    Some(at) => {
                        out.reasoning.push_str(&text[..at]);
                        text = text[at + CLOSE.len()..].to_owned();
                        self.phase = Phase::AfterClose;
                    }
                    None => {
                        let keep = partial_suffix(&text, CLOSE);
                        self.pending = text.split_off(text.len() - keep);
                        out.reasoning.push_str(&text);
                        return out;
                    }
                },
                Phase::AfterClose => {
                    let rest = text.trim_start();
                    if !rest.is_empty() {
                        out.content.push_str(rest);
                        self.phase = Phase::Outside;
                    }
                    return out;
                }
                Phase::Outside => {
                    out.content.push_str(&text);
                    return out;
                }
            }
        }
    }

    /// No more content for this choice: the held-back text, as what it is.
    fn flush(&mut self, already_open: bool) -> Split {
        let pending = std::mem::take(&mut self.pending);
        let inside = self.phase == Phase::Inside || (self.phase == Phase::Start && already_open);
        if inside {
            Split { content: String::new(), reasoning: pending }
        } else {
            Split { content: pending, reasoning: String::new() }
        }
    }
}

/// The length of the longest proper prefix of `tag` that `text` ends with.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}

/// Rewrites an OpenAI `chat.completion.chunk` stream so that each choice's
/// think block arrives as `delta.reasoning_content` instead of
/// `delta.content`, whatever the chunks' boundaries.
///
/// Events it has nothing to change (the role chunk, usage, errors, anything
/// that is not JSON) pass through as they came; `data: [DONE]` passes
/// through as [`DONE`], after a last chunk with whatever text was held back.
/// Only the part of a tag that is still undecided is held back, and a
/// choice's `finish_reason` releases it in that same chunk.
#[derive(Debug, Default)]
pub struct ThinkSplitter {
    already_open: bool,
    choices: BTreeMap<u64, Choice>,
    /// `id`, `object`, `created`, `model`, `system_fingerprint` of the last
    /// chunk, for the chunk that carries held-back text at the end.
    last: Map<String, Value>,
}

impl ThinkSplitter {
    /// For content that opens its own block with `<think>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// For providers whose chat template opens the block in the prompt: the
    /// content is reasoning from its start until `</think>` (a leading
    /// `<think>` is still dropped). An answer with no `</think>` at all is
    /// then reasoning through and through.
    pub fn already_open() -> Self {
        Self { already_open: true, ..Self::default() }
    }

    /// Rewrites one parsed chunk; `false` when nothing in it changed.
    fn rewrite(&mut self, chunk: &mut Map<String, Value>) -> bool {
        for key in ["id", "object", "created", "model", "system_fingerprint"] {
            if let Some(value) = chunk.get(key) {
                self.last.insert(key.to_owned(), value.clone());
            }
        }
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else { return false };
        let mut changed = false;
        for (position, choice) in choices.iter_mut().enumerate() {
            let Some(choice) = choice.as_object_mut() else { continue };
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            let state = self.choices.entry(index).or_default();
            let original = choice.get("delta").and_then(|d| d.get("content")).and_then(Value::as_str);
            let mut split = original.map(|text| state.feed(text, self.already_open)).unwrap_or_default();
            if choice.get("finish_reason").is_some_and(|reason| !reason.is_null()) {
                let rest = state.flush(self.already_open);
                split.content.push_str(&rest.content);
                split.reasoning.push_str(&rest.reasoning);
            }
            if split.reasoning.is_empty() && original.unwrap_or_default() == split.content {
                continue;
            }
            changed = true;
            if !choice.get("delta").is_some_and(Value::is_object) {
                choice.insert("delta".to_owned(), Value::Object(Map::new()));
            }
            if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                set_delta(delta, split);
            }
        }
        changed
    }

    /// A chunk with every choice's held-back text, if any is left.
    fn flush(&mut self) -> Option<Bytes> {
        let mut choices = Vec::new();
        for (&index, state) in &mut self.choices {
            let split = state.flush(self.already_open);
            if split.content.is_empty() && split.reasoning.is_empty() {
                continue;
            }
            let mut delta = Map::new();
            set_delta(&mut delta, split);
            let mut choice = Map::new();
            choice.insert("index".to_owned(), index.into());
            choice.insert("delta".to_owned(), Value::Object(delta));
            choice.insert("finish_reason".to_owned(), Value::Null);
            choices.push(Value::Object(choice));
        }
        if choices.is_empty() {
            return None;
        }
        let mut chunk = self.last.clone();
        chunk.entry("object").or_insert_with(|| "chat.completion.chunk".into());
        chunk.insert("choices".to_owned(), Value::Array(choices));
        let data = serde_json::to_vec(&chunk).expect("a JSON value always serializes");
        Some(data_event(&data))
    }
}

/// Puts split text into a delta: reasoning after any already there, and
/// `content` only when not empty, unless the delta would be left with no
/// field at all (then `"content": ""` keeps the chunk a valid delta).
fn set_delta(delta: &mut Map<String, Value>, split: Split) {
    append_reasoning(delta, &split.reasoning);
    if split.content.is_empty() {
        delta.remove("content");
        if delta.is_empty() {
            delta.insert("content".to_owned(), Value::String(String::new()));
        }
    } else {
        delta.insert("content".to_owned(), Value::String(split.content));
    }
}

/// An event as it came (its name, and each data line: `data_event` alone
/// would send the lines after the first without their `data: `).
fn passthrough(event: &SseEvent) -> Bytes {
    framed(event.event.as_deref(), event.data.as_bytes())
}

/// `event:` (if named) and `data:` lines, then the blank line.
fn framed(name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

impl StreamTranslator for ThinkSplitter {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        if event.data.trim() == "[DONE]" {
            let mut out: Vec<Bytes> = self.flush().into_iter().collect();
            out.push(Bytes::from_static(DONE));
            return Ok(out);
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&event.data) else {
            return Ok(vec![passthrough(event)]);
        };
        if !self.rewrite(&mut chunk) {
            return Ok(vec![passthrough(event)]);
        }
        let data = serde_json::to_vec(&chunk).expect("a JSON value always serializes");
        Ok(vec![framed(event.event.as_deref(), &data)])
    }

    fn finish(&mut self) -> Vec<Bytes> {
        self.flush().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_by_the_rules() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("<think>a</think>\n\nb", Some(("a", "b"))),
            (" \n<think>a</think>b", Some(("a", "b"))),
            ("a</think>\n b", Some(("a", "b"))),
            ("<think>a", Some(("a", ""))),
            ("<think>a</think>", Some(("a", ""))),
            ("<think></think>b", Some(("", "b"))),
            ("<think>a</think>b</think>c", Some(("a", "b</think>c"))),
            ("<think>a<think>b</think>c", Some(("a<think>b", "c"))),
            ("plain", None),
            ("x <think>a</think> b", None),
            ("<thinking>a</thinking>", None),
            ("<thi", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(split_text(text), *want, "{text:?}");
        }
    }

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_suffix("abc</thi", CLOSE), 5);
        assert_eq!(partial_suffix("abc<", CLOSE), 1);
        assert_eq!(partial_suffix("abc</think>", CLOSE), 0);
        assert_eq!(partial_suffix("abc", CLOSE), 0);
        assert_eq!(partial_suffix("", CLOSE), 0);
    }

    #[test]
    fn a_choice_holds_back_only_partial_tags() {
        let mut choice = Choice::default();
        let s = choice.feed("\n<thi", false);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("", ""));
        let s = choice.feed("nk>abc</th", false);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("", "abc"));
        assert_eq!(choice.pending, "</th");
        let s = choice.feed("ink>\n\n", false);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("", ""));
        let s = choice.feed("\nAnswer <", false);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("Answer <", ""));
        assert_eq!(choice.phase, Phase::Outside);
        assert!(choice.pending.is_empty());
    }

    #[test]
    fn already_open_reads_reasoning_first() {
        let mut choice = Choice::default();
        let s = choice.feed("a</think>\n\nb", true);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("b", "a"));
        let mut choice = Choice::default();
        let s = choice.feed("<think>a</think>b", true);
        assert_eq!((s.content.as_str(), s.reasoning.as_str()), ("b", "a"));
        let mut choice = Choice::default();
        assert!(choice.feed("<", true).reasoning.is_empty());
        assert_eq!(choice.flush(true).reasoning, "<");
    }
}
