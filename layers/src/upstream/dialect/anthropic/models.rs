//! Anthropic's model list.

use serde::Deserialize;

use super::TranslateError;

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The model ids in Anthropic's `GET /v1/models` answer.
pub fn model_ids(body: &[u8]) -> Result<Vec<String>, TranslateError> {
    let list: ModelList = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("Anthropic's model list is not what its API documents: {e}")))?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}
