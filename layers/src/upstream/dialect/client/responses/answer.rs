//! A whole `chat.completion` as a whole `response` object.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{
    TranslateError, fail,
    shape::{self, ChatUsage, Hints, Identity, Status},
};
use crate::upstream::dialect::client::ClientHints;

/// A chat completion; only what the translation reads.
#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChatUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Message {
    content: Option<String>,
    refusal: Option<String>,
    reasoning_content: Option<String>,
    /// OpenRouter's name for `reasoning_content`.
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct ToolCall {
    id: Option<String>,
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    name: Option<String>,
    arguments: Option<String>,
}

/// The `response` for a chat completion; `model` is the name it carries.
pub(super) fn answer(chat: &[u8], model: &str, hints: &ClientHints) -> Result<Bytes, TranslateError> {
    let completion: Completion = serde_json::from_slice(chat)
        .map_err(|e| TranslateError::new(format!("the chat answer is not a chat completion: {e}")))?;
    if let Some(error) = completion.error {
        return Err(error_message(&error));
    }
    let Some(choice) = completion.choices.into_iter().next() else {
        return fail("the chat answer has no choices");
    };
    let status = Status::from_finish_reason(choice.finish_reason.as_deref());
    let message = choice.message.unwrap_or_default();

    let mut output = Vec::new();
    let reasoning = message.reasoning_content.or(message.reasoning).filter(|r| !r.is_empty());
    if let Some(reasoning) = reasoning {
        output.push(shape::reasoning_item(&shape::random_id("rs"), &reasoning));
    }
    let text = match (message.content.filter(|c| !c.is_empty()), message.refusal.filter(|r| !r.is_empty())) {
        (Some(content), _) => Some(content),
        (None, refusal) => refusal,
    };
    if let Some(text) = text {
        output.push(shape::message_item(&shape::random_id("msg"), &text, status.item_status()));
    }
    for call in message.tool_calls.unwrap_or_default() {
        let function = call.function.unwrap_or(Function { name: None, arguments: None });
        let name = function.name.unwrap_or_default();
        let custom = Hints::is_custom(hints, &name);
        let call_id = call.id.unwrap_or_else(|| shape::random_id("call"));
        let arguments = function.arguments.unwrap_or_default();
        let id = shape::random_id(shape::call_prefix(custom));
        output.push(shape::call_item(&id, &call_id, &name, &arguments, custom));
    }

    let usage = completion.usage.map(|u| u.responses());
    let response = shape::response(&Identity::new(), model, &status, output, usage, hints);
    serde_json::to_vec(&response)
        .map(Bytes::from)
        .map_err(|e| TranslateError::new(format!("cannot encode the response: {e}")))
}

/// The message of a chat `error` object (or the object itself, as text).
pub(super) fn error_message(error: &Value) -> TranslateError {
    let message = error.get("message").and_then(Value::as_str).filter(|m| !m.is_empty());
    match (message, error.as_str()) {
        (Some(message), _) | (None, Some(message)) => TranslateError::new(message),
        (None, None) => TranslateError::new(format!("the provider reported an error: {error}")),
    }
}
