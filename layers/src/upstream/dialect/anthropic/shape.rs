//! Request parameters that change the shape of the answer, which the
//! Messages API does not have as such.
//!
//! - `response_format` `json_schema` / `json_object`: Anthropic's answers
//!   follow a schema only as a tool's `input`, so the request gets one tool
//!   standing for the answer (`input_schema` the client's schema, or any
//!   object for `json_object`) and a `tool_choice` that forces it. The
//!   answer's translation ([`AnswerHints::json_via_tool`]) turns that tool's
//!   input into the message `content`, as a JSON string, with finish reason
//!   `stop`: the client sees what OpenAI's structured outputs give. Client
//!   tools, a `tool_choice` that wants them, or thinking
//!   (`reasoning_effort`, which Anthropic refuses with a forced tool) next
//!   to it are refused rather than half honoured.
//! - `logprobs` / `top_logprobs` and audio output (`modalities` with
//!   `audio`, `audio`): Anthropic has none, so they are refused; a client
//!   that reads them would otherwise fail on an answer without them.
//! - `seed` is dropped: Anthropic has no seed, and it changes no field of
//!   the answer (OpenAI's own determinism under a seed is best effort).
//!
//! [`AnswerHints::json_via_tool`]: crate::upstream::dialect::AnswerHints::json_via_tool

use serde_json::{Map, Value, json};

use super::{TranslateError, fail, request::present};

/// The tool's name when the client's schema has no usable one.
const DEFAULT_TOOL_NAME: &str = "json_answer";

/// Refuses answer shapes Anthropic cannot give.
pub(super) fn refuse_unexpressible_shapes(request: &Map<String, Value>) -> Result<(), TranslateError> {
    match present(request, "logprobs") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return fail(
                "`logprobs` is not supported for Anthropic models: their API returns no token log probabilities",
            );
        }
        Some(_) => return fail("`logprobs` must be a boolean"),
    }
    if present(request, "top_logprobs").is_some_and(|n| n.as_u64() != Some(0)) {
        return fail(
            "`top_logprobs` is not supported for Anthropic models: their API returns no token log probabilities",
        );
    }
    let audio_modality = present(request, "modalities")
        .and_then(Value::as_array)
        .is_some_and(|modalities| modalities.iter().any(|m| m == "audio"));
    if audio_modality || present(request, "audio").is_some() {
        return fail("audio output (`modalities: [\"audio\"]`, `audio`) is not supported for Anthropic models");
    }
    Ok(())
}

/// A structured answer the client asked for with `response_format`.
#[derive(Debug)]
pub(super) struct JsonAnswer {
    /// `json_schema` or `json_object`, for messages.
    kind: &'static str,
    name: String,
    description: String,
    schema: Value,
}

impl JsonAnswer {
    /// The structured answer `response_format` asks for, if any (`text`
    /// and no `response_format` ask for none).
    pub(super) fn asked_by(request: &Map<String, Value>) -> Result<Option<Self>, TranslateError> {
        let Some(format) = present(request, "response_format") else {
            return Ok(None);
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Self {
                kind: "json_object",
                name: DEFAULT_TOOL_NAME.to_owned(),
                description: "Give the whole answer as this tool's input: one JSON object.".to_owned(),
                schema: json!({"type": "object", "additionalProperties": true}),
            })),
            Some("json_schema") => {
                let Some(spec) = format.get("json_schema").and_then(Value::as_object) else {
                    return fail("`response_format.json_schema` must be an object with the `schema`");
                };
                let name = spec
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|name| is_tool_name(name))
                    .unwrap_or(DEFAULT_TOOL_NAME)
                    .to_owned();
                let description = match spec.get("description").and_then(Value::as_str) {
                    Some(description) => format!("Give the whole answer as this tool's input. {description}"),
                    None => "Give the whole answer as this tool's input.".to_owned(),
                };
                let schema = match spec.get("schema") {
                    None | Some(Value::Null) => json!({"type": "object", "additionalProperties": true}),
                    Some(Value::Object(schema)) => object_schema(schema.clone())?,
                    Some(_) => return fail("`response_format.json_schema.schema` must be a JSON schema object"),
                };
                Ok(Some(Self { kind: "json_schema", name, description, schema }))
            }
            _ => fail("`response_format.type` must be text, json_object or json_schema"),
        }
    }

    /// Refuses what cannot go with a forced tool: the client's own tools, a
    /// `tool_choice` that wants them, and thinking.
    pub(super) fn refuse_conflicts(
        &self,
        request: &Map<String, Value>,
        has_tools: bool,
        thinking: bool,
    ) -> Result<(), TranslateError> {
        let kind = self.kind;
        if has_tools {
            return fail(format!(
                "`response_format` {kind} cannot be combined with `tools` for Anthropic models: the structured answer \
                 is asked for as a tool call of its own; send the tool calls and the structured answer as separate requests"
            ));
        }
        let wants_tools = present(request, "tool_choice").is_some_and(|c| c != "auto" && c != "none");
        if wants_tools {
            return fail(format!(
                "`response_format` {kind} cannot be combined with a `tool_choice` that requires a tool for Anthropic models"
            ));
        }
        if thinking {
            return fail(format!(
                "`response_format` {kind} cannot be combined with `reasoning_effort` for Anthropic models (Anthropic \
                 refuses a forced tool with extended thinking): leave `reasoning_effort` out or set it to \"none\""
            ));
        }
        Ok(())
    }

    /// The tool standing for the answer, and the `tool_choice` forcing it
    /// (once: the answer is one tool input).
    pub(super) fn forced_tool(self) -> (Value, Value) {
        let choice = json!({"type": "tool", "name": self.name, "disable_parallel_tool_use": true});
        let tool = json!({"name": self.name, "description": self.description, "input_schema": self.schema});
        (tool, choice)
    }
}

/// Anthropic's tool names: `^[a-zA-Z0-9_-]{1,64}$` (OpenAI's schema names
/// follow the same rule, but a client may send anything).
fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The schema as a tool's `input_schema`, which must describe an object.
fn object_schema(mut schema: Map<String, Value>) -> Result<Value, TranslateError> {
    match schema.get("type") {
        None => {
            schema.insert("type".into(), "object".into());
        }
        Some(kind) if kind == "object" => {}
        Some(_) => {
            return fail(
                "`response_format.json_schema.schema` must describe a JSON object (\"type\": \"object\") for Anthropic \
                 models, whose structured answers are a tool's object input",
            );
        }
    }
    Ok(Value::Object(schema))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::upstream::dialect::{TranslateError, anthropic::request::translate};

    fn request(body: Value) -> Result<(Value, bool), TranslateError> {
        let (out, hints) = translate(body.to_string().as_bytes(), "claude-test", false)?;
        Ok((serde_json::from_slice(&out).unwrap(), hints.json_via_tool))
    }

    fn with(fields: Value) -> Value {
        let mut body = json!({"messages": [{"role": "user", "content": "Solve 8x + 7 = -23"}]});
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        body
    }

    const MATH: &str = r#"{"type": "object", "properties": {"steps": {"type": "array", "items": {"type": "string"}},
        "final_answer": {"type": "string"}}, "required": ["steps", "final_answer"], "additionalProperties": false}"#;

    #[test]
    fn a_json_schema_becomes_one_forced_tool() {
        let schema: Value = serde_json::from_str(MATH).unwrap();
        let format =
            json!({"type": "json_schema", "json_schema": {"name": "math_response", "strict": true, "schema": schema}});
        let (out, json_via_tool) = request(with(json!({"response_format": format}))).unwrap();
        assert!(json_via_tool);
        assert_eq!(
            out["tools"],
            json!([{"name": "math_response", "description": "Give the whole answer as this tool's input.", "input_schema": schema}])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "tool", "name": "math_response", "disable_parallel_tool_use": true})
        );
        assert!(out.get("response_format").is_none());

        // No usable name: the default; a schema without `type` is an object's.
        let format = json!({"type": "json_schema", "json_schema": {"name": "a name with spaces", "description": "A pair.",
            "schema": {"properties": {"a": {"type": "string"}}}}});
        let (out, _) = request(with(json!({"response_format": format}))).unwrap();
        assert_eq!(out["tools"][0]["name"], "json_answer");
        assert_eq!(out["tools"][0]["description"], "Give the whole answer as this tool's input. A pair.");
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object", "properties": {"a": {"type": "string"}}}));
        assert_eq!(out["tool_choice"]["name"], "json_answer");
    }

    #[test]
    fn json_object_is_any_object_and_text_is_nothing() {
        let (out, json_via_tool) = request(with(json!({"response_format": {"type": "json_object"}}))).unwrap();
        assert!(json_via_tool);
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object", "additionalProperties": true}));
        assert_eq!(out["tool_choice"]["type"], "tool");
        for format in [json!({"type": "text"}), Value::Null] {
            let (out, json_via_tool) = request(with(json!({"response_format": format}))).unwrap();
            assert!(!json_via_tool);
            assert!(out.get("tools").is_none() && out.get("tool_choice").is_none());
        }
        // Tool choices that ask for no tool go with it.
        for choice in ["auto", "none"] {
            let body = with(json!({"response_format": {"type": "json_object"}, "tool_choice": choice}));
            assert_eq!(request(body).unwrap().0["tool_choice"]["type"], "tool");
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let cases = [
            (json!({"response_format": format, "tools": tools}), "cannot be combined with `tools`"),
            (json!({"response_format": format, "tool_choice": "required"}), "`tool_choice` that requires a tool"),
            (
                json!({"response_format": {"type": "json_object"}, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
                "json_object cannot be combined with a `tool_choice`",
            ),
            (
                json!({"response_format": format, "reasoning_effort": "low"}),
                "cannot be combined with `reasoning_effort`",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}}),
                "must describe a JSON object",
            ),
            (json!({"response_format": {"type": "json_schema", "json_schema": {"schema": true}}}), "schema object"),
            (json!({"response_format": {"type": "json_schema"}}), "`response_format.json_schema` must be an object"),
            (json!({"response_format": {"type": "yaml"}}), "`response_format.type` must be text"),
            (json!({"logprobs": true}), "`logprobs` is not supported for Anthropic"),
            (json!({"logprobs": "yes"}), "`logprobs` must be a boolean"),
            (json!({"logprobs": false, "top_logprobs": 3}), "`top_logprobs` is not supported"),
            (json!({"modalities": ["text", "audio"]}), "audio output"),
            (json!({"audio": {"voice": "alloy", "format": "wav"}}), "audio output"),
        ];
        for (fields, expected) in cases {
            let error = request(with(fields.clone())).expect_err(&fields.to_string());
            assert!(error.0.contains(expected), "{fields}: {error} (wanted {expected:?})");
        }
        let with_json_off = json!({"response_format": format, "reasoning_effort": "none", "tools": []});
        assert!(request(with(with_json_off)).is_ok());
    }

    #[test]
    fn harmless_values_and_the_seed_pass() {
        let (out, _) =
            request(with(json!({"logprobs": false, "top_logprobs": 0, "seed": 42, "modalities": ["text"]}))).unwrap();
        for field in ["logprobs", "top_logprobs", "seed", "modalities"] {
            assert!(out.get(field).is_none(), "{field} has no Anthropic counterpart");
        }
    }
}
