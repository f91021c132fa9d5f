//! Which provider a mock plays, and what that changes: where the key goes,
//! the base URL keyrelay is given, and the wire format of the default
//! answers ([`super::openai`], [`super::anthropic`], [`super::gemini`]).

use http::HeaderMap;
use keyrelay_layers::{
    pool::{KeyId, Secret},
    provider::ProviderId,
};

use super::{Recorded, anthropic, gemini, openai};
use crate::support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, GEMINI_KEY_ONE, GEMINI_KEY_TWO, KEY_ONE, KEY_THREE, KEY_TWO,
};

/// Which provider a mock plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    /// The provider id in keyrelay.
    pub fn provider(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }

    /// The header that carries the key.
    pub fn key_header(self) -> &'static str {
        match self {
            Self::OpenAi => "authorization",
            Self::Anthropic => "x-api-key",
            Self::Gemini => "x-goog-api-key",
        }
    }

    /// The pool keys tests configure for this provider, in order.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Self::OpenAi => &[KEY_ONE, KEY_TWO, KEY_THREE],
            Self::Anthropic => &[ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO],
            Self::Gemini => &[GEMINI_KEY_ONE, GEMINI_KEY_TWO],
        }
    }

    /// What keyrelay's `<P>_API_BASE` adds to the mock's host: OpenAI's
    /// base names its version, the others' are host only.
    pub(super) fn base_path(self) -> &'static str {
        match self {
            Self::OpenAi => "/v1",
            Self::Anthropic | Self::Gemini => "",
        }
    }

    /// The pool key a request carries.
    pub(super) fn key_of(self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(self.key_header())?.to_str().ok()?;
        match self {
            Self::OpenAi => value.strip_prefix("Bearer ").map(str::to_owned),
            Self::Anthropic | Self::Gemini => Some(value.to_owned()),
        }
    }

    /// The answer a request gets unless scripted otherwise, or the refusal
    /// the real provider would give it.
    pub(super) fn route(self, req: &Recorded) -> Result<Canned, Refusal> {
        match self {
            Self::OpenAi => Ok(openai::route(req)),
            Self::Anthropic => anthropic::route(req),
            Self::Gemini => gemini::route(req),
        }
    }

    /// The events of [`super::Script::Stream`] for `model`.
    pub(super) fn default_stream(self, model: &str) -> Vec<String> {
        match self {
            Self::OpenAi => openai::stream_events(model),
            Self::Anthropic => anthropic::text_stream(),
            Self::Gemini => gemini::text_stream(),
        }
    }
}

/// The answer a well-formed request gets unless scripted otherwise.
pub(super) enum Canned {
    /// A whole JSON answer.
    Json { status: u16, body: String },
    /// `200 text/event-stream`, these events one frame each.
    Events(Vec<String>),
}

impl Canned {
    pub(super) fn ok(body: impl Into<String>) -> Self {
        Self::Json { status: 200, body: body.into() }
    }
}

/// The provider's own error answer to a request it would refuse; a refused
/// request takes no script.
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) body: String,
}

/// The id keyrelay shows for a pool key of `provider`.
pub fn key_id_of(provider: &str, secret: &str) -> String {
    KeyId::new(&ProviderId::new(provider), &Secret::new(secret)).as_str().to_owned()
}
