//! The Messages request for an OpenAI chat request: the request-wide
//! parameters; messages and tools have their own files.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    DEFAULT_MAX_TOKENS, TranslateError, echo, fail,
    messages::translate_messages,
    shape::{JsonAnswer, refuse_unexpressible_shapes},
    tools::{translate_tool, translate_tool_choice},
};
use crate::upstream::dialect::AnswerHints;

/// The Anthropic Messages request for an OpenAI chat request; `model` is the
/// upstream model name.
///
/// A `response_format` asking for JSON becomes a forced tool whose input is
/// the answer: translate the answer with
/// [`ProviderDialect`](crate::upstream::dialect::ProviderDialect), which
/// carries that over, not with [`chat_response`](super::chat_response).
pub fn chat_request(body: &[u8], model: &str, stream: bool) -> Result<Bytes, TranslateError> {
    translate(body, model, stream).map(|(body, _)| body)
}

/// [`chat_request`], and what its answer's translation must know.
pub(super) fn translate(body: &[u8], model: &str, stream: bool) -> Result<(Bytes, AnswerHints), TranslateError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut request) = request else {
        return fail("the request body must be a JSON object");
    };

    if let Some(n) = request.get("n").filter(|n| !n.is_null()) {
        match n.as_u64() {
            Some(0 | 1) => {}
            Some(_) => {
                return fail("`n` greater than 1 is not supported for Anthropic models: send one request per choice");
            }
            None => return fail("`n` must be a positive integer"),
        }
    }
    refuse_unexpressible_shapes(&request)?;
    let json_answer = JsonAnswer::asked_by(&request)?;

    let messages = match request.get_mut("messages").map(Value::take) {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return fail("`messages` is empty: send at least one message"),
        Some(Value::Null) | None => return fail("`messages` is required"),
        Some(_) => return fail("`messages` must be an array of messages"),
    };
    let (system, turns) = translate_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }

    let mut max_tokens = match present(&request, "max_completion_tokens").or_else(|| present(&request, "max_tokens")) {
        Some(value) => value.as_u64().ok_or_else(|| {
            TranslateError::new("`max_tokens` / `max_completion_tokens` must be a non-negative integer")
        })?,
        None => DEFAULT_MAX_TOKENS,
    };
    if let Some(effort) = present(&request, "reasoning_effort") {
        let Some(effort) = effort.as_str() else {
            return fail("`reasoning_effort` must be a string");
        };
        if let Some(budget) = thinking_budget(effort)? {
            // Anthropic counts thinking inside max_tokens and wants room
            // left for the answer: the client's limit stays the answer's.
            if max_tokens <= budget {
                max_tokens = max_tokens.saturating_add(budget);
            }
            out.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
        }
    }
    out.insert("max_tokens".into(), max_tokens.into());
    out.insert("stream".into(), stream.into());

    // Recent Claude models refuse temperature and top_p together (the
    // temperature is kept), and thinking refuses changed sampling.
    let thinking = out.contains_key("thinking");
    for field in ["temperature", "top_p"] {
        if let Some(value) = present(&request, field) {
            if !value.is_number() {
                return fail(format!("`{field}` must be a number"));
            }
            if !thinking && !out.contains_key("temperature") {
                out.insert(field.into(), value.clone());
            }
        }
    }

    match present(&request, "stop") {
        None => {}
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            if !stops.iter().all(Value::is_string) {
                return fail("`stop` must be a string or an array of strings");
            }
            if !stops.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return fail("`stop` must be a string or an array of strings"),
    }

    let tools = match request.get_mut("tools").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => {
            tools.into_iter().enumerate().map(|(i, tool)| translate_tool(i, tool)).collect::<Result<_, _>>()?
        }
        Some(_) => return fail("`tools` must be an array"),
    };
    let mut hints = AnswerHints::default();
    if let Some(json_answer) = json_answer {
        json_answer.refuse_conflicts(&request, !tools.is_empty(), thinking)?;
        let (tool, choice) = json_answer.forced_tool();
        out.insert("tool_choice".into(), choice);
        out.insert("tools".into(), json!([tool]));
        hints.json_via_tool = true;
    } else if !tools.is_empty() {
        let mut choice = match present(&request, "tool_choice") {
            Some(choice) => translate_tool_choice(choice)?,
            None => json!({"type": "auto"}),
        };
        let serial = present(&request, "parallel_tool_calls").and_then(Value::as_bool) == Some(false);
        if serial && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = true.into();
        }
        if present(&request, "tool_choice").is_some() || serial {
            out.insert("tool_choice".into(), choice);
        }
        out.insert("tools".into(), Value::Array(tools));
    }

    if let Some(user) = present(&request, "user") {
        let Some(user) = user.as_str() else {
            return fail("`user` must be a string");
        };
        out.insert("metadata".into(), json!({ "user_id": user }));
    }

    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::new(format!("cannot encode the Anthropic request: {e}")))?;
    Ok((Bytes::from(body), hints))
}

/// A field that is there and not `null`.
pub(super) fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

/// Thinking tokens for an OpenAI `reasoning_effort` (`None`: no thinking).
fn thinking_budget(effort: &str) -> Result<Option<u64>, TranslateError> {
    Ok(Some(match effort {
        "none" => return Ok(None),
        // Anthropic's smallest budget is 1024.
        "minimal" | "low" => 1024,
        "medium" => 4096,
        "high" => 16384,
        "xhigh" => 32768,
        other => {
            return fail(format!(
                "`reasoning_effort` `{}` is not one of none, minimal, low, medium, high, xhigh",
                echo(other)
            ));
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::upstream::dialect::ECHO_LIMIT;

    use crate::upstream::dialect::anthropic::test_support::{request, user};

    fn request_error(body: &[u8]) -> String {
        chat_request(body, "claude-test", false).expect_err("a translate error").0
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "`messages` is required"),
            (r#"{"messages":null}"#, "`messages` is required"),
            (r#"{"messages":[]}"#, "`messages` is empty"),
            (r#"{"messages":{}}"#, "must be an array"),
            (r#"{"messages":["hi"]}"#, "messages[0] must be an object"),
            (r#"{"messages":[{"content":"hi"}]}"#, "messages[0] has no role"),
            (r#"{"messages":[{"role":7,"content":"hi"}]}"#, "messages[0].role must be a string"),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"role":"robot","content":"hi"}]}"#,
                "messages[1] has role `robot`",
            ),
            (r#"{"messages":[{"role":"function","name":"f","content":"1"}]}"#, "legacy role `function`"),
            (r#"{"messages":[{"role":"system","content":"only a system prompt"}]}"#, "no user or assistant message"),
            (r#"{"messages":[{"role":"user","content":7}]}"#, "messages[0].content must be a string or an array"),
            (r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#, "messages[0].content[0] has no type"),
            (r#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#, "without a text string"),
            (r#"{"messages":[{"role":"user","content":[{"type":"video","video":{}}]}]}"#, "type `video`"),
            (r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#, "no audio"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
                "http(s) URL or a base64 data URL",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/svg+xml,<svg/>"}}]}]}"#,
                "base64 data URL",
            ),
            (r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#, "has no url"),
            (r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#, "file_id"),
            (
                r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":"https://x"}]},{"role":"user","content":"hi"}]}"#,
                "system messages take only text",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}]}"#,
                "messages[0].tool_calls[0].function.arguments is not valid JSON",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
                "must encode a JSON object",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#,
                "tool_calls[0] has no id",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"t","function":{"arguments":"{}"}}]}]}"#,
                "function has no name",
            ),
            (r#"{"messages":[{"role":"tool","content":"42"}]}"#, "messages[0] (role tool) has no tool_call_id"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#, "`n` greater than 1"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#, "non-negative integer"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":"lots"}"#, "non-negative integer"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"warm"}"#, "`temperature` must be a number"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stop":7}"#, "`stop` must be"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a",1]}"#, "`stop` must be"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"extreme"}"#,
                "`reasoning_effort` `extreme`",
            ),
            (r#"{"messages":[{"role":"user","content":"hi"}],"user":42}"#, "`user` must be a string"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"tools":{}}"#, "`tools` must be an array"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"custom","custom":{"name":"x"}}]}"#,
                "only function tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{}}]}"#,
                "tools[0].function has no name",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"sometimes"}"#,
                "`tool_choice` `sometimes`",
            ),
            (
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function"}}"#,
                "`tool_choice` must be",
            ),
        ];
        for (body, expected) in cases {
            let message = request_error(body.as_bytes());
            assert!(message.contains(expected), "{body}: {message:?} should say {expected:?}");
        }
    }

    #[test]
    fn client_words_are_quoted_bounded() {
        let role = "r".repeat(10_000);
        let message = request_error(json!({"messages": [{"role": role, "content": "hi"}]}).to_string().as_bytes());
        assert!(message.len() < 200, "{message}");
        assert!(message.contains(&format!("`{}...`", "r".repeat(ECHO_LIMIT))));
    }

    #[test]
    fn reasoning_effort_budgets_leave_room_for_the_answer() {
        let with = |effort: &str, max_tokens: Option<u64>| {
            let mut body = user(json!("hi"));
            body["reasoning_effort"] = effort.into();
            if let Some(max) = max_tokens {
                body["max_tokens"] = max.into();
            }
            let out = request(body).unwrap();
            (out.get("thinking").map(|t| t["budget_tokens"].as_u64().unwrap()), out["max_tokens"].as_u64().unwrap())
        };
        assert_eq!(with("none", None), (None, DEFAULT_MAX_TOKENS));
        assert_eq!(with("minimal", None), (Some(1024), 4096));
        assert_eq!(with("low", None), (Some(1024), 4096));
        assert_eq!(with("medium", None), (Some(4096), 8192));
        assert_eq!(with("medium", Some(4097)), (Some(4096), 4097));
        assert_eq!(with("high", None), (Some(16384), 20480));
        assert_eq!(with("high", Some(32000)), (Some(16384), 32000));
        assert_eq!(with("xhigh", Some(100)), (Some(32768), 32868));
    }

    #[test]
    fn one_sampling_parameter_and_none_with_thinking() {
        let with = |fields: Value| {
            let mut body = user(json!("hi"));
            body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let out = request(body).unwrap();
            (out.get("temperature").cloned(), out.get("top_p").cloned())
        };
        assert_eq!(with(json!({"temperature": 0.5, "top_p": 0.9})), (Some(json!(0.5)), None));
        assert_eq!(with(json!({"top_p": 0.9})), (None, Some(json!(0.9))));
        assert_eq!(with(json!({"temperature": 0, "top_p": null})), (Some(json!(0)), None));
        assert_eq!(with(json!({"temperature": 0.5, "top_p": 0.9, "reasoning_effort": "low"})), (None, None));
        assert_eq!(with(json!({"temperature": 0.5, "reasoning_effort": "none"})), (Some(json!(0.5)), None));
    }
}
