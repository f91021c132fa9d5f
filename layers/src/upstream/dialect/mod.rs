//! Provider wire dialects: pure functions that turn the client's OpenAI
//! request into the provider's and the provider's answers back into
//! OpenAI's, with no I/O. One module per dialect; `sse` is the incremental
//! event framer they share.
//!
//! Each dialect is a [`ProviderDialect`], found by [`for_dialect`]: the
//! upstream service asks it for the provider's path and body
//! ([`ProviderDialect::request`]), keeps the [`AnswerHints`] that come back,
//! and hands them to [`ProviderDialect::answer`] or
//! [`ProviderDialect::stream`] with the provider's answer. Adding a dialect
//! is adding a module that implements the trait and one line in
//! [`for_dialect`].
//!
//! ```
//! use bytes::Bytes;
//! use keyrelay_layers::{extensions::Endpoint, provider::Dialect, upstream::dialect::{for_dialect, OutboundRequest}};
//!
//! let anthropic = for_dialect(Dialect::Anthropic);
//! let body = Bytes::from_static(br#"{"model": "anthropic/claude-sonnet-4-5",
//!     "messages": [{"role": "user", "content": "Hi"}]}"#);
//! let out = anthropic.request(&OutboundRequest::new(Endpoint::ChatCompletions, &body, "claude-sonnet-4-5", false)).unwrap();
//! assert_eq!(out.path, "v1/messages");
//!
//! let answer = br#"{"id": "msg_1", "type": "message", "role": "assistant",
//!     "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
//!     "usage": {"input_tokens": 9, "output_tokens": 3}}"#;
//! let completion = anthropic.answer(Endpoint::ChatCompletions, &Bytes::from_static(answer), "claude-sonnet-4-5", 0, out.hints);
//! let completion: serde_json::Value = serde_json::from_slice(&completion.unwrap()).unwrap();
//! assert_eq!(completion["choices"][0]["message"]["content"], "Hello!");
//!
//! // What the provider's API cannot express is refused before anything is sent.
//! let embeddings = Bytes::from_static(br#"{"model": "anthropic/x", "input": "Hi"}"#);
//! assert!(anthropic.request(&OutboundRequest::new(Endpoint::Embeddings, &embeddings, "x", false)).is_err());
//! ```
//!
//! The translating dialects also keep the free functions they had before
//! the trait (`anthropic::chat_request`, `gemini::chat_response`,
//! `ChatStream::new`...), which the fuzz targets and benches drive:
//!
//! - `chat_request(body, model, stream) -> Result<Bytes, TranslateError>`:
//!   the provider's request body for an OpenAI chat request (`model` is the
//!   upstream model name, without `provider/`);
//! - `chat_response(body, model, created) -> Result<Bytes, TranslateError>`:
//!   an OpenAI `chat.completion` from the provider's whole answer;
//! - `ChatStream::new(model, include_usage, created)`: a [`StreamTranslator`]
//!   from the provider's stream events to OpenAI `chat.completion.chunk`
//!   events, ending with `data: [DONE]`;
//! - `error_body(status, body) -> Bytes`: an OpenAI-shaped error that keeps
//!   the provider's machine-readable fields (`type`, `status`, `details`) so
//!   that [`crate::classify`] still reads them;
//! - `model_ids(body) -> Result<Vec<String>, TranslateError>`: the
//!   provider's model list.
//!
//! They take no [`AnswerHints`]: an answer shaped by the request (an
//! Anthropic `response_format`, Gemini's base64 embeddings) needs the trait.
//!
//! A stream is driven the way the upstream service drives it: the provider's
//! bytes go through an [`SseFramer`], each whole event through the dialect's
//! [`StreamTranslator`], and [`StreamTranslator::finish`] closes it.
//!
//! ```
//! use bytes::Bytes;
//! use keyrelay_layers::upstream::dialect::{anthropic, SseFramer, StreamTranslator, TranslateError};
//!
//! fn translate(chunks: &[&[u8]], translator: &mut dyn StreamTranslator) -> Result<Vec<Bytes>, TranslateError> {
//!     let mut framer = SseFramer::new();
//!     let mut out = Vec::new();
//!     for chunk in chunks {
//!         for event in framer.push(chunk) {
//!             out.extend(translator.event(&event)?);
//!         }
//!     }
//!     if let Some(event) = framer.finish() {
//!         out.extend(translator.event(&event)?);
//!     }
//!     out.extend(translator.finish());
//!     Ok(out)
//! }
//!
//! // A provider error in the middle of a stream fails it, with the provider's message.
//! let mut stream = anthropic::ChatStream::new("claude-sonnet-4-5", false, 0);
//! let chunks: [&[u8]; 2] = [
//!     b"event: error\ndata: {\"type\":\"error\",\"error\":",
//!     b"{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
//! ];
//! assert_eq!(translate(&chunks, &mut stream).unwrap_err(), TranslateError::new("Overloaded"));
//!
//! // A request the provider's API cannot express is refused before anything is sent.
//! let two_answers = br#"{"model": "anthropic/claude-sonnet-4-5", "n": 2, "messages": []}"#;
//! assert!(anthropic::chat_request(two_answers, "claude-sonnet-4-5", false).is_err());
//! ```

pub mod anthropic;
pub mod client;
pub mod gemini;
pub mod openai;
mod provider;
pub mod sse;
pub mod think;

use std::fmt;

use bytes::Bytes;

pub use self::{
    provider::{AnswerHints, OutboundRequest, ProviderDialect, Translated, for_dialect},
    sse::{SseEvent, SseFramer},
};

/// A client request the provider's format cannot express, or a provider
/// answer that is not what its format promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError(pub String);

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TranslateError {}

impl TranslateError {
    /// An error with this message (shown to the client, or logged).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A translation that cannot be made, with this message.
pub(crate) fn fail<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError::new(message))
}

/// Client-chosen words are quoted back in messages at most this many
/// characters long.
pub(crate) const ECHO_LIMIT: usize = 60;

/// `s`, cut to [`ECHO_LIMIT`] characters for a message.
pub(crate) fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Turns a provider's stream events into OpenAI stream bytes.
pub trait StreamTranslator: Send {
    /// One provider event in; zero or more complete OpenAI SSE events out
    /// (each already framed as `data: ...\n\n`). An `Err` ends the stream
    /// with an error event (the provider reported a failure mid-stream).
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError>;

    /// The provider's stream ended: whatever is still owed, and `data: [DONE]`.
    fn finish(&mut self) -> Vec<Bytes>;

    /// Whether the provider's stream reached its proper end; one that stops
    /// before is broken, and must not look complete to the client.
    fn is_complete(&self) -> bool {
        true
    }

    /// Whether `frame`, one or more whole events that start a fresh event,
    /// may go to the client exactly as it came because the translator would
    /// change nothing in it. Passing frames through spares re-framing and
    /// re-encoding every event; translators that keep state say no.
    fn passes_unchanged(&mut self, frame: &[u8]) -> bool {
        let _ = frame;
        false
    }

    /// `frame` (one or more whole events that start a fresh event, like
    /// [`passes_unchanged`](Self::passes_unchanged)) as the client gets it,
    /// when that is the provider's events kept or dropped whole, as they
    /// came; `None` sends every event through [`event`](Self::event).
    fn keep_whole_events(&mut self, frame: &Bytes) -> Option<Bytes> {
        let _ = frame;
        None
    }

    /// The tokens the provider reported, once known (counted for the key
    /// even when the client did not ask to see them).
    fn usage(&self) -> Option<crate::usage::Usage> {
        None
    }
}
