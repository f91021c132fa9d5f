//! What the request translation tests of every concern share.

use serde_json::{Value, json};

use super::chat_request;
use crate::upstream::dialect::TranslateError;

/// The Anthropic body for an OpenAI chat `body`.
pub(super) fn request(body: Value) -> Result<Value, TranslateError> {
    let out = chat_request(body.to_string().as_bytes(), "claude-test", false)?;
    Ok(serde_json::from_slice(&out).unwrap())
}

/// A chat of one user message with this `content`.
pub(super) fn user(content: Value) -> Value {
    json!({"messages": [{"role": "user", "content": content}]})
}
