//! Responses `tools` and `tool_choice` as chat completions'.
//!
//! A `custom` tool (free-form text in, as Codex's `apply_patch`) becomes a
//! function with one string parameter, `input`: the model's call
//! `{"input": "..."}` comes back to the client as a `custom_tool_call`
//! with that text. Its grammar, if it has one, is told to the model in the
//! function's description, since chat completions cannot constrain a
//! parameter by a grammar.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, fail, present};

/// OpenAI's built-in tools, which OpenAI runs itself.
const BUILT_IN: [&str; 11] = [
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "computer_use",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
];

/// The chat tools for a Responses `tools` array, and the names of those
/// that stand for custom tools.
pub(super) fn translate_tools(tools: Option<&Value>) -> Result<(Vec<Value>, Vec<String>), TranslateError> {
    let tools = match tools {
        None => return Ok((Vec::new(), Vec::new())),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("`tools` must be an array"),
    };
    let mut out = Vec::with_capacity(tools.len());
    let mut custom = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let Value::Object(tool) = tool else {
            return fail(format!("tools[{i}] must be an object"));
        };
        let kind = match tool.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => return fail(format!("tools[{i}] has no type")),
        };
        let name = || match tool.get("name") {
            Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
            _ => fail(format!("tools[{i}] ({kind}) has no name")),
        };
        match kind {
            "function" => {
                let mut function = Map::new();
                function.insert("name".into(), name()?.into());
                for field in ["description", "parameters", "strict"] {
                    if let Some(value) = present(tool, field) {
                        function.insert(field.into(), value.clone());
                    }
                }
                out.push(json!({"type": "function", "function": function}));
            }
            "custom" => {
                let name = name()?;
                let description = custom_description(tool, i)?;
                out.push(json!({"type": "function", "function": {
                    "name": name,
                    "description": description,
                    "parameters": {
                        "type": "object",
                        "properties": {"input": {"type": "string", "description": "The tool's input, as free-form text."}},
                        "required": ["input"],
                        "additionalProperties": false,
                    },
                }}));
                custom.push(name);
            }
            built_in if BUILT_IN.contains(&built_in) => {
                return fail(format!(
                    "tools[{i}] is OpenAI's built-in `{built_in}` tool, which runs only at OpenAI; use an openai/ model or remove the tool"
                ));
            }
            other => return fail(format!("tools[{i}] has type `{}`; expected function or custom", echo(other))),
        }
    }
    Ok((out, custom))
}

/// A custom tool's description, with its input format spelled out.
fn custom_description(tool: &Map<String, Value>, i: usize) -> Result<String, TranslateError> {
    let mut description = match present(tool, "description") {
        Some(Value::String(text)) => text.clone(),
        Some(_) => return fail(format!("tools[{i}].description must be a string")),
        None => String::new(),
    };
    let Some(format) = present(tool, "format") else {
        return Ok(description);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => {}
        Some("grammar") => {
            let syntax = format.get("syntax").and_then(Value::as_str).unwrap_or("lark");
            let Some(definition) = format.get("definition").and_then(Value::as_str) else {
                return fail(format!("tools[{i}].format is a grammar without a definition"));
            };
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&format!("The input must follow this {syntax} grammar:\n{definition}"));
        }
        Some(other) => return fail(format!("tools[{i}].format has type `{}`; expected text or grammar", echo(other))),
    }
    Ok(description)
}

/// Chat's `tool_choice` for a Responses one.
pub(super) fn translate_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        Value::String(mode) => fail(format!("`tool_choice` `{}` is not one of auto, none, required", echo(mode))),
        Value::Object(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => match choice.get("name") {
                Some(Value::String(name)) => Ok(json!({"type": "function", "function": {"name": name}})),
                _ => fail("`tool_choice` of type function needs a `name`"),
            },
            Some(kind) if BUILT_IN.contains(&kind) => fail(format!(
                "`tool_choice` names OpenAI's built-in `{kind}` tool, which runs only at OpenAI; use an openai/ model or remove it"
            )),
            Some(other) => fail(format!(
                "`tool_choice` of type `{}` is not translated; use auto, none, required or a function",
                echo(other)
            )),
            None => fail("`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": ...}"),
        },
        _ => fail("`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": ...}"),
    }
}
