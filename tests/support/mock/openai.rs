//! OpenAI's wire format: the default answers replayed from
//! `tests/fixtures/openai/*` with the `model` the request asked for, and
//! OpenAI's error answers as [`Script`] constructors.

use http::Method;
use serde_json::Value;

use super::{Recorded, Script, dialect::Canned};

const CHAT_COMPLETION: &str = include_str!("../../fixtures/openai/chat_completion.json");
const CHAT_STREAM: &str = include_str!("../../fixtures/openai/chat_completion_stream.sse");
const EMBEDDINGS: &str = include_str!("../../fixtures/openai/embeddings.json");
const MODELS: &str = include_str!("../../fixtures/openai/models.json");
/// An OpenAI 400 body, pretty-printed as OpenAI sends it.
pub const INVALID_REQUEST: &str = include_str!("../../fixtures/openai/error_invalid_request.json");

const UNKNOWN_URL: &str = r#"{"error":{"message":"Unknown request URL. (mock upstream)","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#;
const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const INSUFFICIENT_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const PAYMENT_REQUIRED: &str = r#"{"error":{"message":"Payment required: add credits to continue.","type":"billing_error","param":null,"code":null}}"#;
/// Echoes the whole key, as a careless provider might.
const INVALID_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
/// Echoes the whole key too.
const SERVER_ERROR: &str = r#"{"error":{"message":"The server had an error while processing your request with key {key}. Sorry about that!","type":"server_error","param":null,"code":null}}"#;

/// The default answers (OpenAI checks nothing the mock would refuse):
///
/// - `POST .../chat/completions`: a `chat.completion`, or with
///   `"stream": true` a `text/event-stream` of `chat.completion.chunk`
///   events and `data: [DONE]`;
/// - `POST .../embeddings`: an embedding list;
/// - `GET .../models`: a model list;
/// - the Responses API (see [`super::responses`]);
/// - anything else: 404 with an OpenAI error body.
pub(super) fn route(req: &Recorded) -> Canned {
    if let Some(canned) = super::responses::route(req) {
        return canned;
    }
    let model = req.model();
    let model = model.as_deref().unwrap_or("unknown");
    match (&req.method, req.path.as_str()) {
        (&Method::POST, p) if p.ends_with("/chat/completions") => match req.wants_stream() {
            true => Canned::Events(stream_events(model)),
            false => Canned::ok(chat_completion(model)),
        },
        (&Method::POST, p) if p.ends_with("/embeddings") => Canned::ok(with_model(EMBEDDINGS, model)),
        (&Method::GET, p) if p.ends_with("/models") => Canned::ok(MODELS),
        _ => Canned::Json { status: 404, body: UNKNOWN_URL.to_owned() },
    }
}

/// The non-streaming chat answer the mock gives for `model`, byte for byte.
pub fn chat_completion(model: &str) -> String {
    with_model(CHAT_COMPLETION, model)
}

/// A fixture document with its `model` set to what the request asked for.
fn with_model(fixture: &str, model: &str) -> String {
    let mut doc: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    doc["model"] = Value::from(model);
    doc.to_string()
}

/// The stream fixture's events, each `data: ...\n\n`, `model` set.
pub fn stream_events(model: &str) -> Vec<String> {
    CHAT_STREAM
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("fixture events are data:");
            if data == "[DONE]" {
                "data: [DONE]\n\n".to_owned()
            } else {
                format!("data: {}\n\n", with_model(data, model))
            }
        })
        .collect()
}

/// OpenAI's error answers.
impl Script {
    /// OpenAI's 429 for requests per minute, with `Retry-After` when given.
    /// The body holds no retry hint of its own.
    pub fn rate_limited(retry_after: Option<&str>) -> Self {
        let script = Self::respond(429, RATE_LIMITED);
        match retry_after {
            Some(value) => script.with_header("retry-after", value),
            None => script,
        }
    }

    /// OpenAI's 429 `insufficient_quota` (no hint: quota comes back at the daily reset).
    pub fn insufficient_quota() -> Self {
        Self::respond(429, INSUFFICIENT_QUOTA)
    }

    /// A 402.
    pub fn payment_required() -> Self {
        Self::respond(402, PAYMENT_REQUIRED)
    }

    /// OpenAI's 401 `invalid_api_key`, echoing the key it was sent.
    pub fn invalid_key() -> Self {
        Self::respond(401, INVALID_KEY)
    }

    /// A server error with this status, echoing the key it was sent.
    pub fn server_error(status: u16) -> Self {
        Self::respond(status, SERVER_ERROR)
    }

    /// OpenAI's 400 (the request's own fault).
    pub fn client_error() -> Self {
        Self::respond(400, INVALID_REQUEST)
    }
}
