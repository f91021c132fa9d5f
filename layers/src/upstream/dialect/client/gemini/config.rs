//! `tools`, `toolConfig` and `generationConfig` as the chat request's
//! tools, `tool_choice` and parameters.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, err, field};

/// Thinking budgets below this are `low` effort, up to the next `medium`,
/// the rest `high` (the outbound translator asks 1024, 8192 and 24576).
const LOW_BUDGET_BELOW: i64 = 4096;
const MEDIUM_BUDGET_BELOW: i64 = 16384;

/// How deep a schema's types are lower-cased; deeper is left as it is
/// (the JSON parser already bounds nesting).
const MAX_SCHEMA_DEPTH: usize = 64;

/// `tools` and `toolConfig` into the chat request.
pub(super) fn apply_tools(request: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let tools = match field(request, "tools") {
        None => return Ok(()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(err("`tools` must be an array of Tool objects")),
    };
    let mut functions = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let tool = tool.as_object().ok_or_else(|| err(format!("tools[{i}] must be a Tool object")))?;
        for (key, value) in tool {
            if value.is_null() {
                continue;
            }
            if key == "functionDeclarations" || key == "function_declarations" {
                let declarations =
                    value.as_array().ok_or_else(|| err(format!("tools[{i}].functionDeclarations must be an array")))?;
                for (j, declaration) in declarations.iter().enumerate() {
                    functions.push(function_tool(declaration, &format!("tools[{i}].functionDeclarations[{j}]"))?);
                }
            } else {
                return Err(err(format!(
                    "tools[{i}].{}: this tool runs only at Google; use a gemini/ model, or leave it out",
                    echo(key)
                )));
            }
        }
    }
    if functions.is_empty() {
        return Ok(());
    }
    let config =
        field(request, "toolConfig").and_then(|c| c.as_object()).and_then(|c| field(c, "functionCallingConfig"));
    let choice = match config {
        Some(config) => tool_choice(config, &mut functions)?,
        None => None,
    };
    out.insert("tools".into(), Value::Array(functions));
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// A `FunctionDeclaration` as a chat function tool.
fn function_tool(declaration: &Value, at: &str) -> Result<Value, TranslateError> {
    let declaration = declaration.as_object().ok_or_else(|| err(format!("{at} must be an object")))?;
    let name = field(declaration, "name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| err(format!("{at}.name is missing")))?;
    let mut function = Map::new();
    function.insert("name".into(), name.into());
    if let Some(description) = field(declaration, "description").and_then(Value::as_str) {
        function.insert("description".into(), description.into());
    }
    // `parametersJsonSchema` is JSON Schema already; `parameters` is
    // Gemini's OpenAPI subset, whose types are upper-case.
    if let Some(schema) = field(declaration, "parametersJsonSchema") {
        function.insert("parameters".into(), schema.clone());
    } else if let Some(schema) = field(declaration, "parameters") {
        function.insert("parameters".into(), json_schema(schema));
    }
    Ok(json!({ "type": "function", "function": function }))
}

/// `functionCallingConfig` as a `tool_choice`; `ANY` with several allowed
/// names keeps only those tools, since chat can force one function but
/// not a set.
fn tool_choice(config: &Value, functions: &mut Vec<Value>) -> Result<Option<Value>, TranslateError> {
    let config = config.as_object().ok_or_else(|| err("toolConfig.functionCallingConfig must be an object"))?;
    let allowed: Vec<&str> = match field(config, "allowedFunctionNames") {
        None => Vec::new(),
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err(err("toolConfig.functionCallingConfig.allowedFunctionNames must be an array")),
    };
    let mode = field(config, "mode").and_then(Value::as_str).unwrap_or("AUTO").to_ascii_uppercase();
    let choice = match mode.as_str() {
        "AUTO" | "VALIDATED" | "MODE_UNSPECIFIED" => "auto".into(),
        "NONE" => "none".into(),
        "ANY" => {
            for name in &allowed {
                if !functions.iter().any(|f| f["function"]["name"] == *name) {
                    return Err(err(format!(
                        "toolConfig.functionCallingConfig.allowedFunctionNames: `{}` is not a declared function",
                        echo(name)
                    )));
                }
            }
            match allowed.as_slice() {
                [name] => json!({ "type": "function", "function": { "name": name } }),
                [] => "required".into(),
                names => {
                    functions.retain(|f| names.iter().any(|name| f["function"]["name"] == *name));
                    "required".into()
                }
            }
        }
        other => {
            return Err(err(format!(
                "toolConfig.functionCallingConfig.mode `{}` is not AUTO, ANY, NONE or VALIDATED",
                echo(other)
            )));
        }
    };
    Ok(Some(choice))
}

/// `generationConfig` into the chat request; returns `includeThoughts`
/// when the client set it.
pub(super) fn apply_generation_config(
    config: Option<&Value>,
    out: &mut Map<String, Value>,
) -> Result<Option<bool>, TranslateError> {
    let Some(config) = config else { return Ok(None) };
    let config = config.as_object().ok_or_else(|| err("generationConfig must be an object"))?;
    refuse_unexpressible(config)?;
    for (from, to) in [
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("maxOutputTokens", "max_tokens"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
        ("seed", "seed"),
    ] {
        if let Some(value) = field(config, from) {
            if !value.is_number() {
                return Err(err(format!("generationConfig.{from} must be a number")));
            }
            out.insert(to.into(), value.clone());
        }
    }
    match field(config, "candidateCount") {
        None => {}
        Some(n) if n.as_u64().is_some_and(|n| n <= 1) => {}
        Some(_) => {
            return Err(err(
                "generationConfig.candidateCount over 1 is not supported through chat completions: send one request \
                 per candidate",
            ));
        }
    }
    match field(config, "stopSequences") {
        None => {}
        Some(Value::Array(stops)) if stops.is_empty() => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        Some(_) => return Err(err("generationConfig.stopSequences must be an array of strings")),
    }
    if let Some(format) = response_format(config)? {
        out.insert("response_format".into(), format);
    }
    let thinking = match field(config, "thinkingConfig") {
        None => return Ok(None),
        Some(Value::Object(thinking)) => thinking,
        Some(_) => return Err(err("generationConfig.thinkingConfig must be an object")),
    };
    if let Some(effort) = reasoning_effort(thinking)? {
        out.insert("reasoning_effort".into(), effort.into());
    }
    Ok(field(thinking, "includeThoughts").and_then(Value::as_bool))
}

/// Answers chat cannot give: other modalities, speech, log probabilities.
fn refuse_unexpressible(config: &Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(modalities) = field(config, "responseModalities") {
        let modalities =
            modalities.as_array().ok_or_else(|| err("generationConfig.responseModalities must be an array"))?;
        for modality in modalities {
            let modality = modality.as_str().unwrap_or_default();
            if !modality.eq_ignore_ascii_case("text") {
                return Err(err(format!(
                    "generationConfig.responseModalities `{}`: only text answers come through chat completions; use \
                     a gemini/ model",
                    echo(modality)
                )));
            }
        }
    }
    if field(config, "speechConfig").is_some() {
        return Err(err("generationConfig.speechConfig: spoken answers do not come through chat completions"));
    }
    if field(config, "responseLogprobs").and_then(Value::as_bool) == Some(true) || field(config, "logprobs").is_some() {
        return Err(err(
            "generationConfig.responseLogprobs / logprobs: log probabilities are not translated from chat completions",
        ));
    }
    Ok(())
}

/// `responseMimeType` and its schema as a `response_format`.
fn response_format(config: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let schema = match (field(config, "responseJsonSchema"), field(config, "responseSchema")) {
        (Some(schema), _) => Some(schema.clone()),
        (None, Some(schema)) => Some(json_schema(schema)),
        (None, None) => None,
    };
    let mime = match field(config, "responseMimeType") {
        None => None,
        Some(Value::String(mime)) => Some(mime.trim().to_ascii_lowercase()),
        Some(_) => return Err(err("generationConfig.responseMimeType must be a string")),
    };
    match (mime.as_deref(), schema) {
        (None | Some("" | "text/plain"), None) => Ok(None),
        (None | Some("application/json"), Some(schema)) => Ok(Some(json!({
            "type": "json_schema",
            "json_schema": { "name": "response", "schema": schema },
        }))),
        (Some("application/json"), None) => Ok(Some(json!({ "type": "json_object" }))),
        (Some(mime), _) => Err(err(format!(
            "generationConfig.responseMimeType `{}`: chat completions answers only text or JSON \
             (application/json, with or without a schema)",
            echo(mime)
        ))),
    }
}

/// `thinkingConfig` as a `reasoning_effort`: `thinkingLevel` wins over
/// `thinkingBudget` (Gemini refuses both at once).
fn reasoning_effort(thinking: &Map<String, Value>) -> Result<Option<&'static str>, TranslateError> {
    if let Some(level) = field(thinking, "thinkingLevel") {
        let level = level.as_str().unwrap_or_default().to_ascii_lowercase();
        return match level.as_str() {
            "minimal" => Ok(Some("minimal")),
            "low" => Ok(Some("low")),
            "medium" => Ok(Some("medium")),
            "high" => Ok(Some("high")),
            "thinking_level_unspecified" | "" => Ok(None),
            other => Err(err(format!(
                "generationConfig.thinkingConfig.thinkingLevel `{}` is not MINIMAL, LOW, MEDIUM or HIGH",
                echo(other)
            ))),
        };
    }
    let Some(budget) = field(thinking, "thinkingBudget") else { return Ok(None) };
    let budget =
        budget.as_i64().ok_or_else(|| err("generationConfig.thinkingConfig.thinkingBudget must be an integer"))?;
    Ok(Some(match budget {
        0 => "none",
        // -1: the model decides; the middle is the fairest guess.
        ..0 => "medium",
        1..LOW_BUDGET_BELOW => "low",
        LOW_BUDGET_BELOW..MEDIUM_BUDGET_BELOW => "medium",
        _ => "high",
    }))
}

/// Gemini's OpenAPI-style schema as JSON Schema: its upper-case type
/// names (`OBJECT`, `STRING`) lower-cased, `nullable: true` as a `null`
/// type beside the other (what the outbound translator turns back into
/// `nullable`), `propertyOrdering` (Gemini's alone) dropped; the rest kept.
pub(super) fn json_schema(schema: &Value) -> Value {
    let mut schema = schema.clone();
    lower_types(&mut schema, 0);
    schema
}

fn lower_types(schema: &mut Value, depth: usize) {
    let Some(object) = schema.as_object_mut() else { return };
    if depth > MAX_SCHEMA_DEPTH {
        return;
    }
    object.remove("propertyOrdering");
    let nullable = object.remove("nullable").and_then(|n| n.as_bool()).unwrap_or(false);
    match object.get_mut("type") {
        Some(Value::String(kind)) => {
            let kind = kind.to_ascii_lowercase();
            let kind = if nullable && kind != "null" { json!([kind, "null"]) } else { kind.into() };
            object.insert("type".into(), kind);
        }
        Some(Value::Array(kinds)) => {
            for kind in kinds {
                if let Value::String(kind) = kind {
                    *kind = kind.to_ascii_lowercase();
                }
            }
        }
        _ if nullable => match object.get_mut("anyOf") {
            Some(Value::Array(variants)) => variants.push(json!({ "type": "null" })),
            // Nothing to hang a `null` on: it keeps saying so Gemini's way.
            _ => {
                object.insert("nullable".into(), true.into());
            }
        },
        _ => {}
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = object.get_mut(key) {
            lower_types(sub, depth + 1);
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = object.get_mut(key) {
            subs.iter_mut().for_each(|sub| lower_types(sub, depth + 1));
        }
    }
    for key in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(subs)) = object.get_mut(key) {
            subs.values_mut().for_each(|sub| lower_types(sub, depth + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn thinking_budgets_become_efforts() {
        for (budget, effort) in [
            (0, "none"),
            (-1, "medium"),
            (512, "low"),
            (1024, "low"),
            (8192, "medium"),
            (16384, "high"),
            (24576, "high"),
        ] {
            let thinking = json!({ "thinkingBudget": budget });
            assert_eq!(reasoning_effort(thinking.as_object().unwrap()).unwrap(), Some(effort), "{budget}");
        }
        let both = json!({ "thinkingBudget": 0, "thinking_level": "HIGH" });
        assert_eq!(reasoning_effort(both.as_object().unwrap()).unwrap(), Some("high"));
        let bad = json!({ "thinkingLevel": "EXTREME" });
        assert!(reasoning_effort(bad.as_object().unwrap()).unwrap_err().0.contains("`extreme`"));
    }

    #[test]
    fn openapi_schemas_become_json_schemas() {
        let schema = json!({
            "type": "OBJECT",
            "properties": {
                "type": { "type": "STRING", "enum": ["OBJECT"] },
                "list": { "type": "ARRAY", "items": { "type": "INTEGER", "nullable": true } },
                "either": { "anyOf": [{ "type": "NUMBER" }, { "type": "BOOLEAN" }], "nullable": true },
                "plain": { "type": "STRING", "nullable": false },
            },
            "required": ["type"],
            "propertyOrdering": ["type", "list", "either", "plain"],
        });
        assert_eq!(
            json_schema(&schema),
            json!({
                "type": "object",
                "properties": {
                    "type": { "type": "string", "enum": ["OBJECT"] },
                    "list": { "type": "array", "items": { "type": ["integer", "null"] } },
                    "either": { "anyOf": [{ "type": "number" }, { "type": "boolean" }, { "type": "null" }] },
                    "plain": { "type": "string" },
                },
                "required": ["type"],
            })
        );
    }
}
