//! OpenAI `tools` and `tool_choice` as Anthropic's.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, fail};

pub(super) fn translate_tool(i: usize, mut tool: Value) -> Result<Value, TranslateError> {
    match tool.get("type") {
        None => {}
        Some(kind) if kind == "function" => {}
        Some(kind) => {
            return fail(format!(
                "tools[{i}] has type {}; Anthropic takes only function tools",
                echo(&kind.to_string())
            ));
        }
    }
    let Some(function) = tool.get_mut("function").filter(|f| f.is_object()) else {
        return fail(format!("tools[{i}] has no function"));
    };
    let Some(name) = function.get_mut("name").map(Value::take).filter(Value::is_string) else {
        return fail(format!("tools[{i}].function has no name"));
    };
    let mut out = Map::new();
    out.insert("name".into(), name);
    match function.get_mut("description").map(Value::take) {
        None | Some(Value::Null) => {}
        Some(description @ Value::String(_)) => {
            out.insert("description".into(), description);
        }
        Some(_) => return fail(format!("tools[{i}].function.description must be a string")),
    }
    let schema = match function.get_mut("parameters").map(Value::take) {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema,
        Some(_) => return fail(format!("tools[{i}].function.parameters must be a JSON schema object")),
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

pub(super) fn translate_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    let named = |name: &Value| match name {
        Value::String(name) => Ok(json!({"type": "tool", "name": name})),
        _ => fail("`tool_choice.function.name` must be a string"),
    };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => fail(format!("`tool_choice` `{}` is not one of auto, none, required", echo(other))),
        },
        Value::Object(object) => match (object.get("type"), object.get("function").and_then(|f| f.get("name"))) {
            (Some(kind), Some(name)) if kind == "function" => named(name),
            _ => fail(
                "`tool_choice` must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}",
            ),
        },
        _ => fail("`tool_choice` must be a string or an object"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::upstream::dialect::anthropic::test_support::{request, user};

    #[test]
    fn tool_choice_modes() {
        let with = |choice: Value, parallel: Option<bool>| {
            let mut body = user(json!("hi"));
            body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
            body["tool_choice"] = choice;
            if let Some(parallel) = parallel {
                body["parallel_tool_calls"] = parallel.into();
            }
            request(body).unwrap().get("tool_choice").cloned()
        };
        assert_eq!(with(json!("auto"), None), Some(json!({"type": "auto"})));
        assert_eq!(with(json!("none"), None), Some(json!({"type": "none"})));
        assert_eq!(with(json!("required"), None), Some(json!({"type": "any"})));
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "f"}}), None),
            Some(json!({"type": "tool", "name": "f"}))
        );
        assert_eq!(with(Value::Null, None), None, "Anthropic's default (auto) is left implicit");
        assert_eq!(with(Value::Null, Some(true)), None);
        assert_eq!(with(Value::Null, Some(false)), Some(json!({"type": "auto", "disable_parallel_tool_use": true})));
        assert_eq!(
            with(json!("required"), Some(false)),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(with(json!("none"), Some(false)), Some(json!({"type": "none"})));
        // No tools: no tool_choice either.
        let mut body = user(json!("hi"));
        body["tool_choice"] = json!("required");
        body["tools"] = json!([]);
        let out = request(body).unwrap();
        assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
    }
}
