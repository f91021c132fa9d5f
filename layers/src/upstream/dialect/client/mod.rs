//! Inbound dialects: what a client speaks when it is not OpenAI's chat
//! completions, as pure translations to and from chat completions, the hub.
//!
//! The proxy handles a request as one cell of a matrix, inbound dialect
//! (what the client speaks, [`Inbound`]) by outbound dialect (what the
//! provider speaks, [`crate::provider::Dialect`]):
//!
//! - the same dialect on both sides passes through byte for byte, model
//!   and credentials aside (Anthropic to Anthropic, Gemini to Gemini, the
//!   Responses API to a provider that speaks it);
//! - otherwise the client's request becomes a chat-completions request
//!   ([`ClientDialect::to_chat`]), which the provider's
//!   [`ProviderDialect`](super::ProviderDialect) turns into its own (or
//!   sends as it is, to an OpenAI-compatible provider); the answer comes
//!   back the same way, through chat completions
//!   ([`ClientDialect::answer`], [`ClientDialect::stream`]).
//!
//! So each dialect is written once per side, and every translated cell goes
//! through the same two well-tested halves. Adding a dialect is adding its
//! [`ClientDialect`] (these files) and its
//! [`ProviderDialect`](super::ProviderDialect), and naming them in
//! [`for_inbound`] and [`super::for_dialect`].

pub mod anthropic;
mod chain;
mod chunk;
pub mod gemini;
pub mod responses;

use std::sync::Arc;

use bytes::Bytes;

pub use self::chain::ChainedStream;
use super::{StreamTranslator, TranslateError};
use crate::extensions::{Endpoint, Inbound};

/// A client's request in its own dialect, as its translation needs it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ClientRequest<'a> {
    /// The endpoint the client called (it names the dialect).
    pub endpoint: Endpoint,
    /// The client's body, as it came.
    pub body: &'a [u8],
    /// The upstream model name (without any `provider/` prefix).
    pub model: &'a str,
    /// Whether the client asked for a stream (Gemini says so in its path).
    pub stream: bool,
}

impl<'a> ClientRequest<'a> {
    /// A request to `endpoint` with this body, for the upstream `model`.
    pub fn new(endpoint: Endpoint, body: &'a [u8], model: &'a str, stream: bool) -> Self {
        Self { endpoint, body, model, stream }
    }
}

/// What the client's request says that its answer must repeat or obey
/// (the Responses API echoes `instructions`, `tools` and more in its
/// `response` object; an answer may depend on the request's tool names):
/// whatever JSON the dialect chose to keep, opaque to everyone else.
#[derive(Clone, Debug, Default)]
pub struct ClientHints(Option<Arc<serde_json::Value>>);

impl ClientHints {
    /// Hints holding `value`.
    pub fn new(value: serde_json::Value) -> Self {
        Self(Some(Arc::new(value)))
    }

    /// What the dialect kept, if anything.
    pub fn get(&self) -> Option<&serde_json::Value> {
        self.0.as_deref()
    }
}

/// The chat-completions request that stands for the client's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatRequest {
    /// A `POST /v1/chat/completions` body, with `model` the upstream model
    /// name; a stream asks for `stream_options.include_usage`, so that the
    /// client's events can carry the usage.
    pub body: Bytes,
    /// What the answer's translation needs from the request.
    pub hints: ClientHints,
}

/// One inbound dialect as translations to and from chat completions. Pure:
/// no I/O; every method may be called from any thread.
pub trait ClientDialect: Send + Sync + 'static {
    /// The chat-completions request for the client's request. `Err`: chat
    /// completions cannot express it (the proxy answers 400 with the
    /// message, in the client's error shape).
    fn to_chat(&self, req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError>;

    /// A whole `chat.completion` as the client's answer; `model` is the
    /// model name the answer carries.
    fn answer(&self, chat: &[u8], model: &str, hints: &ClientHints) -> Result<Bytes, TranslateError>;

    /// A translator from `chat.completion.chunk` events (ending with
    /// `data: [DONE]`, a usage-only chunk before it) to the client's
    /// stream events. It is complete once the chat stream gave a
    /// `finish_reason` or `[DONE]`; its [`StreamTranslator::usage`] is the
    /// usage chunk's; an `{"error": ...}` event is an `Err`.
    fn stream(&self, model: &str, hints: &ClientHints) -> Box<dyn StreamTranslator>;

    /// The client's token-count answer, estimated from its request (for
    /// providers that cannot count in this dialect); `Err` for a body that
    /// is not a request of this dialect.
    fn count_tokens(&self, req: &ClientRequest<'_>) -> Result<Bytes, TranslateError>;
}

/// The translations of an inbound dialect; `None` for OpenAI's, which is
/// the hub itself.
pub fn for_inbound(inbound: Inbound) -> Option<&'static dyn ClientDialect> {
    match inbound {
        Inbound::Anthropic => Some(&anthropic::Messages),
        Inbound::Responses => Some(&responses::Responses),
        Inbound::Gemini => Some(&gemini::GenerateContent),
        _ => None,
    }
}

/// A rough token count of text: 4 characters a token, what every dialect's
/// estimate uses when the provider's tokenizer is not at hand.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}
