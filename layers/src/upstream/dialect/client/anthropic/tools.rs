//! Messages `tools` and `tool_choice` as chat completions'.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, fail};

/// The function tools for `tools`; Anthropic's server tools are refused,
/// since no other provider runs them.
pub(super) fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let tools = match tools {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("`tools` must be an array"),
    };
    tools.iter().enumerate().map(|(i, tool)| translate_tool(i, tool)).collect()
}

fn translate_tool(i: usize, tool: &Value) -> Result<Value, TranslateError> {
    let Some(tool) = tool.as_object() else {
        return fail(format!("tools[{i}] must be an object"));
    };
    let name = match tool.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return fail(format!("tools[{i}] has no name")),
    };
    match tool.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "custom" => {}
        Some(kind) => {
            let kind = kind.as_str().map_or_else(|| kind.to_string(), str::to_owned);
            return fail(format!(
                "tools[{i}] `{}` is Anthropic's server tool `{}`: only Anthropic providers run it; \
                 use an Anthropic model or leave the tool out",
                echo(name),
                echo(&kind)
            ));
        }
    }
    let mut function = Map::new();
    function.insert("name".into(), name.as_str().into());
    match tool.get("description") {
        None | Some(Value::Null) => {}
        Some(description @ Value::String(_)) => {
            function.insert("description".into(), description.clone());
        }
        Some(_) => return fail(format!("tools[{i}].description must be a string")),
    }
    let parameters = match tool.get("input_schema") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => return fail(format!("tools[{i}].input_schema must be a JSON schema object")),
    };
    function.insert("parameters".into(), parameters);
    if let Some(strict @ Value::Bool(_)) = tool.get("strict") {
        function.insert("strict".into(), strict.clone());
    }
    Ok(json!({"type": "function", "function": function}))
}

/// Chat's `tool_choice` for Anthropic's, and whether parallel tool calls
/// are off (`disable_parallel_tool_use`).
pub(super) fn translate_tool_choice(choice: &Value) -> Result<(Value, bool), TranslateError> {
    let Some(kind) = choice.get("type").and_then(Value::as_str) else {
        return fail("`tool_choice` must be an object with a type (auto, any, tool or none)");
    };
    let serial = match choice.get("disable_parallel_tool_use") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(disabled)) => *disabled,
        Some(_) => return fail("`tool_choice.disable_parallel_tool_use` must be a boolean"),
    };
    let choice = match kind {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => return Ok((json!("none"), false)),
        "tool" => match choice.get("name") {
            Some(Value::String(name)) => json!({"type": "function", "function": {"name": name}}),
            _ => return fail("`tool_choice.name` must be a string when the type is tool"),
        },
        other => return fail(format!("`tool_choice.type` `{}` is not one of auto, any, tool, none", echo(other))),
    };
    Ok((choice, serial))
}
