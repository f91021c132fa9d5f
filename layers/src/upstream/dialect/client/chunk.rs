//! One `chat.completion.chunk` as the client dialects' stream translators
//! read it: only the fields they use, borrowed from the event's text.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

/// One chat chunk. `U` is how the translator reads `usage` (raw JSON, or
/// its own typed view).
#[derive(Deserialize)]
pub(super) struct Chunk<'a, U = Value> {
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) choices: Vec<Choice<'a>>,
    pub(super) usage: Option<U>,
    pub(super) error: Option<Value>,
}

/// One choice of a chunk (the translators follow choice 0).
#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    pub(super) index: Option<u64>,
    #[serde(borrow)]
    pub(super) delta: Option<Delta<'a>>,
    #[serde(borrow)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

/// What a choice adds.
#[derive(Deserialize)]
pub(super) struct Delta<'a> {
    #[serde(borrow)]
    pub(super) content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter's name for `reasoning_content`.
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) tool_calls: Option<Vec<ToolCallPiece<'a>>>,
}

impl Delta<'_> {
    /// The reasoning text, under either provider's name.
    pub(super) fn reasoning(&self) -> Option<&str> {
        self.reasoning_content.as_deref().or(self.reasoning.as_deref())
    }
}

/// A piece of a tool call: its id and name on the first piece of its
/// `index`, its arguments in pieces.
#[derive(Deserialize)]
pub(super) struct ToolCallPiece<'a> {
    pub(super) index: Option<u64>,
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) function: Option<FunctionPiece<'a>>,
}

/// The function part of a tool call piece.
#[derive(Deserialize)]
pub(super) struct FunctionPiece<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) arguments: Option<Cow<'a, str>>,
}
