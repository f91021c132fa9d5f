//! Gemini's `generateContent` as a client speaks it (Gemini CLI, the Google
//! GenAI SDKs): its requests to chat completions, and chat answers back to
//! `GenerateContentResponse`s, whole or as `streamGenerateContent?alt=sse`
//! events. The mirror image of the outbound translator in
//! [`crate::upstream::dialect::gemini`]: a request that goes through both
//! comes back as it was, where chat completions can say it.
//!
//! ```
//! use keyrelay_layers::extensions::Endpoint;
//! use keyrelay_layers::upstream::dialect::client::{ClientDialect, ClientHints, ClientRequest, gemini::GenerateContent};
//!
//! // The model is in the path, not the body: the proxy hands it over.
//! let body = br#"{"systemInstruction": {"parts": [{"text": "Be brief."}]},
//!     "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
//!     "generationConfig": {"maxOutputTokens": 100}}"#;
//! let req = ClientRequest::new(Endpoint::GenerateContent, body, "gpt-4.1", false);
//! let chat = GenerateContent.to_chat(&req).unwrap();
//! let chat: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
//! assert_eq!(chat["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));
//! assert_eq!(chat["max_tokens"], 100);
//!
//! let completion = br#"{"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1",
//!     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
//!     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}"#;
//! let answer = GenerateContent.answer(completion, "gpt-4.1", &ClientHints::default()).unwrap();
//! let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
//! assert_eq!(answer["candidates"][0]["content"]["parts"][0]["text"], "Hello!");
//! assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
//! assert_eq!(answer["usageMetadata"]["totalTokenCount"], 12);
//! ```
//!
//! Requests (camelCase and snake_case field names alike, as the REST API
//! takes them):
//!
//! | Gemini | chat completions |
//! |---|---|
//! | `systemInstruction` | one `system` message |
//! | `contents[]` of role `user` (or none) | `user` messages |
//! | `contents[]` of role `model` | `assistant` messages: text, `tool_calls` |
//! | `text` parts | `text` parts; a model turn's `thought` parts are dropped |
//! | `inlineData` image / PDF / WAV or MP3 audio | `image_url` (data URL) / `file` / `input_audio` |
//! | `fileData` with an http(s) image URL | `image_url` |
//! | `functionCall` (`id`, or `call_<turn>_<n>` made up) | a `tool_calls` entry |
//! | `functionResponse` | a `tool` message (the `response` as JSON text), before the turn's other parts |
//! | `tools[].functionDeclarations` | function `tools` (OpenAPI upper-case types lower-cased) |
//! | `toolConfig.functionCallingConfig` `AUTO` / `VALIDATED`, `ANY`, `NONE` | `tool_choice` `auto`, `required` (or the one allowed function), `none` |
//! | `temperature`, `topP`, `maxOutputTokens`, `stopSequences` | `temperature`, `top_p`, `max_tokens`, `stop` |
//! | `presencePenalty`, `frequencyPenalty`, `seed` | the same, snake_case |
//! | `responseMimeType: application/json` (+ `responseSchema` / `responseJsonSchema`) | `response_format` `json_object` (`json_schema` named `response`) |
//! | `thinkingConfig` `thinkingBudget` / `thinkingLevel` | `reasoning_effort` (budget 0: `none`; -1: `medium`; under 4096: `low`; under 16384: `medium`; more: `high`) |
//!
//! A `functionResponse` answers the earlier call with its `id`, else the
//! oldest unanswered call of its `name`. Several `allowedFunctionNames` with
//! `ANY` keep only those tools (chat can force one function, not a set).
//!
//! Dropped, as they change nothing the client relies on: `safetySettings`
//! (the upstream keeps its own policy), `labels` (Google billing tags),
//! `topK`, `mediaResolution`, thought signatures, a function's `response`
//! schema, `thinkingConfig.includeThoughts: true` (thoughts come back
//! whenever the upstream gives them; `false` leaves them out of the answer).
//!
//! Refused with a [`TranslateError`] naming the field: what runs only at
//! Google (the `googleSearch`, `googleSearchRetrieval`, `codeExecution`,
//! `urlContext`... tools, `executableCode` / `codeExecutionResult` parts,
//! `cachedContent`, Files API and `gs://` file URIs), `candidateCount` over
//! 1, answers that are not text (`responseModalities` other than `TEXT`,
//! `speechConfig`), log probabilities, and media chat cannot carry (video,
//! other audio formats, media in a model turn or in a function response).
//!
//! Answers: reasoning becomes a `thought: true` text part, the content a
//! text part, each tool call a whole `functionCall` (arguments parsed, the
//! call's id kept); `finish_reason` `stop` and `tool_calls` are `STOP`,
//! `length` is `MAX_TOKENS`, `content_filter` is `SAFETY`. Usage: the
//! completion's reasoning tokens are `thoughtsTokenCount`, the rest
//! `candidatesTokenCount`, as Gemini counts them. `responseId` is the chat
//! id, `modelVersion` the model. The stream sends one event per chunk that
//! carries something; a tool call goes out whole once its arguments are
//! complete, and the finish reason with the usage on the last event.

mod answer;
mod config;
mod count;
mod parts;
mod request;
mod stream;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{ChatRequest, ClientDialect, ClientHints, ClientRequest};
use crate::upstream::dialect::{StreamTranslator, TranslateError};

pub use self::stream::GeminiStream;

/// Gemini's [`ClientDialect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateContent;

impl ClientDialect for GenerateContent {
    fn to_chat(&self, req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
        request::to_chat(req)
    }

    fn answer(&self, chat: &[u8], model: &str, hints: &ClientHints) -> Result<Bytes, TranslateError> {
        answer::answer(chat, model, hints)
    }

    fn stream(&self, model: &str, hints: &ClientHints) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::new(model, hints))
    }

    fn count_tokens(&self, req: &ClientRequest<'_>) -> Result<Bytes, TranslateError> {
        count::count_tokens(req.body)
    }
}

// === helpers ===

fn err(message: impl Into<String>) -> TranslateError {
    TranslateError::new(message)
}

fn parse_object(body: &[u8], what: &str) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(err(format!("{what} must be a JSON object"))),
        Err(e) => Err(err(format!("{what} is not valid JSON: {e}"))),
    }
}

/// A field by its camelCase name or its snake_case twin (the REST API
/// takes both); `null` counts as absent.
fn field<'a>(object: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    let found = match object.get(camel) {
        Some(value) => Some(value),
        None if camel.bytes().any(|b| b.is_ascii_uppercase()) => object.get(&snake_case(camel)),
        None => None,
    };
    found.filter(|value| !value.is_null())
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a JSON value always serializes"))
}

/// Client-chosen words are quoted back at most this many characters long.
const ECHO_LIMIT: usize = 60;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_are_found_by_either_spelling() {
        let object = json!({ "inline_data": 1, "mimeType": 2, "nothing": null });
        let object = object.as_object().unwrap();
        assert_eq!(field(object, "inlineData"), Some(&json!(1)));
        assert_eq!(field(object, "mimeType"), Some(&json!(2)));
        assert_eq!(field(object, "nothing"), None);
        assert_eq!(snake_case("responseJsonSchema"), "response_json_schema");
        assert_eq!(echo(&"x".repeat(100)).len(), ECHO_LIMIT + 3);
    }
}
