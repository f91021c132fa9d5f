//! What the request translation tests of every concern share.

use serde_json::{Value, json};

use super::chat_request;
use crate::upstream::dialect::TranslateError;

/// The Gemini body for an OpenAI chat `body` to `model`.
pub(super) fn request(body: Value, model: &str) -> Result<Value, TranslateError> {
    let out = chat_request(body.to_string().as_bytes(), model, false)?;
    Ok(serde_json::from_slice(&out).unwrap())
}

/// One user message of plain text.
pub(super) fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}
