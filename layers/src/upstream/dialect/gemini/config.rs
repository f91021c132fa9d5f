//! Tools, `tool_choice` and the request-wide parameters
//! (`generationConfig`).

use serde_json::{Map, Value, json};

use super::{
    TranslateError, err,
    schema::{Ordered, clean_schema, clean_schema_ordered},
};

/// Thinking budgets for OpenAI's `reasoning_effort`.
const THINKING_BUDGETS: &[(&str, u64)] =
    &[("none", 0), ("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)];

/// One OpenAI tool as a `FunctionDeclaration`.
pub(super) fn declaration(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    let at = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => return Err(err(format!("{at}.type `{other}` is not supported for Gemini (only `function`)"))),
    }
    let function = tool.get("function").ok_or_else(|| err(format!("{at}.function is missing")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("{at}.function.name is missing")))?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out.insert("description".into(), description.into());
    }
    if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
        let cleaned = clean_schema(parameters);
        // Gemini refuses an object schema without properties: a function
        // without arguments simply has no `parameters`.
        let empty_object = cleaned.get("type").and_then(Value::as_str) == Some("object")
            && cleaned.get("properties").is_none()
            && cleaned.get("anyOf").is_none();
        if !empty_object && cleaned.as_object().is_some_and(|o| !o.is_empty()) {
            out.insert("parameters".into(), cleaned);
        }
    }
    Ok(Value::Object(out))
}

/// `tool_choice` as a `functionCallingConfig`.
pub(super) fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "none" => json!({ "mode": "NONE" }),
            "required" => json!({ "mode": "ANY" }),
            other => return Err(err(format!("tool_choice `{other}` is not one of auto, none, required"))),
        },
        Some(object) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
            None => {
                return Err(err(
                    "tool_choice must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}",
                ));
            }
        },
    };
    Ok(Some(config))
}

pub(super) fn generation_config(
    request: &Map<String, Value>,
    body: &[u8],
) -> Result<Map<String, Value>, TranslateError> {
    refuse_unexpressible_shapes(request)?;
    let mut config = Map::new();
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")] {
        if let Some(value) = number(request, from)? {
            config.insert(to.into(), value);
        }
    }
    let max_tokens = match number(request, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => number(request, "max_tokens")?,
    };
    if let Some(n) = max_tokens {
        config.insert("maxOutputTokens".into(), n);
    }
    if let Some(n) = number(request, "n")? {
        config.insert("candidateCount".into(), n);
    }
    if let Some(seed) = number(request, "seed")? {
        config.insert("seed".into(), seed);
    }
    match request.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                config.insert("stopSequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return Err(err("`stop` must be a string or an array of strings")),
    }
    match request.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = format.pointer("/json_schema/schema").filter(|s| !s.is_null()) {
                    // The body again, this time keeping the order of its keys.
                    let ordered = serde_json::from_slice::<Ordered>(body).ok();
                    let ordered_schema =
                        ordered.as_ref().and_then(|o| o.pointer("/response_format/json_schema/schema"));
                    config.insert("responseSchema".into(), clean_schema_ordered(schema, ordered_schema));
                }
            }
            _ => return Err(err("response_format.type must be text, json_object or json_schema")),
        },
    }
    match request.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(effort) => {
            let effort = effort.as_str().unwrap_or_default();
            let budget = THINKING_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .map(|(_, budget)| *budget)
                .ok_or_else(|| err("reasoning_effort must be one of none, minimal, low, medium, high"))?;
            let thinking = if budget == 0 {
                json!({ "thinkingBudget": 0 })
            } else {
                json!({ "thinkingBudget": budget, "includeThoughts": true })
            };
            config.insert("thinkingConfig".into(), thinking);
        }
    }
    Ok(config)
}

/// Refuses answer shapes this translation cannot give. Gemini has token
/// log probabilities (`responseLogprobs`, `logprobs`), but in a shape of its
/// own (`logprobsResult`) that is not translated into OpenAI's
/// `choices[].logprobs`: a client asking for them would get an answer
/// without them. Audio output needs Gemini's speech models and a
/// `speechConfig`, and comes back as audio parts OpenAI's `message.audio`
/// does not carry.
fn refuse_unexpressible_shapes(request: &Map<String, Value>) -> Result<(), TranslateError> {
    match request.get("logprobs") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(err(
                "`logprobs` is not supported for Gemini models: their log probabilities are not translated",
            ));
        }
        Some(_) => return Err(err("`logprobs` must be a boolean")),
    }
    if request.get("top_logprobs").is_some_and(|n| !n.is_null() && n.as_u64() != Some(0)) {
        return Err(err(
            "`top_logprobs` is not supported for Gemini models: their log probabilities are not translated",
        ));
    }
    let audio_modality = request
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|modalities| modalities.iter().any(|m| m == "audio"));
    if audio_modality || request.get("audio").is_some_and(|a| !a.is_null()) {
        return Err(err("audio output (`modalities: [\"audio\"]`, `audio`) is not supported for Gemini models"));
    }
    Ok(())
}

/// A numeric field, if present and not null.
fn number(request: &Map<String, Value>, key: &str) -> Result<Option<Value>, TranslateError> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n @ Value::Number(_)) => Ok(Some(n.clone())),
        Some(_) => Err(err(format!("`{key}` must be a number"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::upstream::dialect::gemini::test_support::{request, user};

    #[test]
    fn reasoning_effort_sets_a_thinking_budget() {
        for (effort, expected) in [
            ("none", json!({ "thinkingBudget": 0 })),
            ("minimal", json!({ "thinkingBudget": 512, "includeThoughts": true })),
            ("low", json!({ "thinkingBudget": 1024, "includeThoughts": true })),
            ("medium", json!({ "thinkingBudget": 8192, "includeThoughts": true })),
            ("high", json!({ "thinkingBudget": 24576, "includeThoughts": true })),
        ] {
            let out = request(json!({ "messages": [user("hi")], "reasoning_effort": effort }), "m").unwrap();
            assert_eq!(out["generationConfig"]["thinkingConfig"], expected, "{effort}");
        }
    }

    #[test]
    fn answer_shapes_not_translated_are_refused_and_the_seed_kept() {
        let with = |fields: Value| {
            let mut body = json!({ "messages": [user("hi")] });
            body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            request(body, "gemini-2.5-flash")
        };
        for (fields, expected) in [
            (json!({ "logprobs": true }), "`logprobs` is not supported for Gemini"),
            (json!({ "logprobs": 1 }), "`logprobs` must be a boolean"),
            (json!({ "top_logprobs": 5 }), "`top_logprobs` is not supported for Gemini"),
            (json!({ "modalities": ["text", "audio"] }), "audio output"),
            (json!({ "audio": { "voice": "alloy", "format": "mp3" } }), "audio output"),
        ] {
            let error = with(fields.clone()).expect_err(&fields.to_string());
            assert!(error.0.contains(expected), "{fields}: {error} (wanted {expected:?})");
        }
        let out =
            with(json!({ "logprobs": false, "top_logprobs": null, "seed": 7, "modalities": ["text"], "audio": null }))
                .unwrap();
        assert_eq!(out["generationConfig"], json!({ "seed": 7 }));
    }
}
