//! Gemini's model list.

use serde_json::Value;

use super::{TranslateError, err, parse_object};

/// The model ids (without `models/`) of a `models.list` answer, keeping
/// only models that chat or embed when Gemini says what each supports.
pub fn model_ids(body: &[u8]) -> Result<Vec<String>, TranslateError> {
    let response = parse_object(body, "Gemini's model list")?;
    let models = match response.get("models") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(models)) => models,
        Some(_) => return Err(err("Gemini's model list has a `models` that is not an array")),
    };
    let mut ids = Vec::with_capacity(models.len());
    for model in models {
        let Some(name) = model.get("name").and_then(Value::as_str) else { continue };
        let usable = match model.get("supportedGenerationMethods").and_then(Value::as_array) {
            Some(methods) => methods.iter().any(|m| matches!(m.as_str(), Some("generateContent" | "embedContent"))),
            None => true,
        };
        let id = name.strip_prefix("models/").unwrap_or(name);
        if usable && !id.is_empty() {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The `nextPageToken` of a `models.list` answer, when there are more pages.
pub fn next_page_token(body: &[u8]) -> Option<String> {
    let response = serde_json::from_slice::<Value>(body).ok()?;
    let token = response.get("nextPageToken")?.as_str()?;
    (!token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_of_odd_shapes() {
        assert!(model_ids(br#"{"models":{}}"#).is_err());
        assert_eq!(model_ids(br#"{"models":[{"displayName":"no name"},{"name":"plain"}]}"#).unwrap(), ["plain"]);
    }
}
