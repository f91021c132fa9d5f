//! Anthropic's Messages API on the wire (what `https://api.anthropic.com`
//! serves): answers, streams, model list and errors.
//!
//! - `POST /v1/messages`: a Messages API `message`, or with `"stream": true`
//!   a `text/event-stream` of named events (`event: message_start` ...
//!   `event: message_stop`);
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": 42}`;
//! - `GET /v1/models`: Anthropic's model list;
//!
//! checking every request the way the real API does: `x-api-key` present
//! (else 401 `authentication_error`), an `anthropic-version` date no
//! earlier than 2023-06-01 (else 400: the official SDKs send newer ones),
//! and for messages a JSON body with `model`, an integer `max_tokens`
//! and a non-empty `messages` array (else 400 `invalid_request_error`), and
//! none of OpenAI's own fields.

use http::Method;
use serde_json::{Value, json};

use super::{
    Recorded, Script,
    dialect::{Canned, Refusal},
};

/// The version keyrelay must send.
pub const VERSION: &str = "2023-06-01";

/// What `count_tokens` answers.
pub const COUNTED_TOKENS: u64 = 42;

/// The default answer's text.
pub const TEXT: &str = "Hello from Claude.";

/// An error body as Anthropic writes them.
pub fn error(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

fn refuse(status: u16, kind: &str, message: &str) -> Refusal {
    Refusal { status, body: error(kind, &format!("mock: {message}")) }
}

/// Whether `version` is an API version date (`YYYY-MM-DD`) the API
/// knows: 2023-06-01, what keyrelay sends, or a later one.
fn known_version(version: &str) -> bool {
    let shaped = version.len() == 10
        && version.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    shaped && version >= VERSION
}

/// What a request gets by default, or the refusal the real API would give.
pub(super) fn route(req: &Recorded) -> Result<Canned, Refusal> {
    if req.key.as_deref().is_none_or(str::is_empty) {
        return Err(refuse(401, "authentication_error", "x-api-key header is required"));
    }
    if !req.header("anthropic-version").is_some_and(known_version) {
        return Err(refuse(400, "invalid_request_error", "anthropic-version: header is required (2023-06-01)"));
    }
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/v1/models") => Ok(Canned::ok(models())),
        (&Method::POST, "/v1/messages/count_tokens") => {
            let body = serde_json::from_slice::<Value>(&req.body).unwrap_or_default();
            if body.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return Err(refuse(400, "invalid_request_error", "messages: at least one message is required"));
            }
            Ok(Canned::ok(json!({"input_tokens": COUNTED_TOKENS}).to_string()))
        }
        (&Method::POST, "/v1/messages") => {
            if !req.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
                return Err(refuse(400, "invalid_request_error", "content-type must be application/json"));
            }
            let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                return Err(refuse(400, "invalid_request_error", "the body is not JSON"));
            };
            if !body.get("model").is_some_and(Value::is_string) {
                return Err(refuse(400, "invalid_request_error", "model: Field required"));
            }
            if !body.get("max_tokens").is_some_and(Value::is_u64) {
                return Err(refuse(400, "invalid_request_error", "max_tokens: Field required"));
            }
            if body.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return Err(refuse(400, "invalid_request_error", "messages: at least one message is required"));
            }
            for field in ["stream_options", "n", "user", "max_completion_tokens", "tool_calls"] {
                if body.get(field).is_some() {
                    let message = format!("{field}: Extra inputs are not permitted");
                    return Err(refuse(400, "invalid_request_error", &message));
                }
            }
            let tools = body.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            if tools.iter().any(|t| !t.get("name").is_some_and(Value::is_string) || t.get("function").is_some()) {
                return Err(refuse(400, "invalid_request_error", "tools: each tool needs a name and input_schema"));
            }
            if body.get("stream").and_then(Value::as_bool) == Some(true) {
                Ok(Canned::Events(text_stream()))
            } else {
                Ok(Canned::ok(message_text()))
            }
        }
        _ => Err(refuse(404, "not_found_error", &format!("{} {} is not a route", req.method, req.path))),
    }
}

/// One named event, framed as Anthropic frames it.
pub fn event(data: Value) -> String {
    let name = data["type"].as_str().expect("an Anthropic event has a type").to_owned();
    format!("event: {name}\ndata: {data}\n\n")
}

/// The default answer: one text block.
pub fn message_text() -> String {
    json!({
        "id": "msg_01TextAnswer",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 21, "output_tokens": 7}
    })
    .to_string()
}

/// Text and two tool calls, with cache reads in the usage.
pub fn message_tools() -> String {
    json!({
        "id": "msg_01ToolAnswer",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "Let me look that up."},
            {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}},
            {"type": "tool_use", "id": "toolu_02Time", "name": "get_time", "input": {}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 310, "output_tokens": 54, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 0}
    })
    .to_string()
}

fn start(id: &str, input_tokens: u64) -> String {
    event(json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}))
}

fn text_delta(index: u64, text: &str) -> String {
    event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}))
}

fn block_stop(index: u64) -> String {
    event(json!({"type": "content_block_stop", "index": index}))
}

fn end(stop_reason: &str, output_tokens: u64) -> Vec<String> {
    vec![
        event(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                     "usage": {"output_tokens": output_tokens}})),
        event(json!({"type": "message_stop"})),
    ]
}

/// A text answer streamed: "Hello" + " from Claude.", 25 tokens in, 6 out.
/// Event 3 (0-based) is the first text delta.
pub fn text_stream() -> Vec<String> {
    let mut events = vec![
        start("msg_01StreamText", 25),
        event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        event(json!({"type": "ping"})),
        text_delta(0, "Hello"),
        text_delta(0, " from Claude."),
        block_stop(0),
    ];
    events.extend(end("end_turn", 6));
    events
}

/// Text, then a `get_weather` tool call whose input arrives in pieces.
pub fn tool_stream() -> Vec<String> {
    let json_delta = |partial: &str| {
        event(json!({"type": "content_block_delta", "index": 1,
                     "delta": {"type": "input_json_delta", "partial_json": partial}}))
    };
    let mut events = vec![
        start("msg_01StreamTools", 40),
        event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        text_delta(0, "Checking."),
        block_stop(0),
        event(json!({"type": "content_block_start", "index": 1, "content_block":
                     {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather", "input": {}}})),
        json_delta(""),
        json_delta("{\"city\": "),
        event(json!({"type": "ping"})),
        json_delta("\"Paris\", \"unit\": \"celsius\"}"),
        block_stop(1),
    ];
    events.extend(end("tool_use", 30));
    events
}

/// Text, then Anthropic's mid-stream `error` event (overloaded).
pub fn broken_stream() -> Vec<String> {
    vec![
        start("msg_01StreamBroken", 25),
        event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        text_delta(0, "Hel"),
        event(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
    ]
}

/// `GET /v1/models`.
pub fn models() -> String {
    json!({
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
             "created_at": "2025-09-29T00:00:00Z"},
            {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5",
             "created_at": "2025-10-01T00:00:00Z"}
        ],
        "has_more": false,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-haiku-4-5-20251001"
    })
    .to_string()
}

/// 429 `rate_limit_error`, with `retry-after` when given.
pub fn rate_limited(retry_after: Option<&str>) -> Script {
    let script = Script::respond(
        429,
        error(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. \
             For details, refer to: https://docs.claude.com/en/api/rate-limits.",
        ),
    )
    .with_header("anthropic-ratelimit-requests-remaining", "0");
    match retry_after {
        Some(secs) => script.with_header("retry-after", secs),
        None => script,
    }
}

/// 401 `authentication_error`.
pub fn invalid_key() -> Script {
    Script::respond(401, error("authentication_error", "invalid x-api-key"))
}

/// 529 `overloaded_error`.
pub fn overloaded() -> Script {
    Script::respond(529, error("overloaded_error", "Overloaded"))
}

/// 500 `api_error` that echoes the key it was sent, as a careless
/// provider might.
pub fn server_error_echoing_key() -> Script {
    Script::respond(500, error("api_error", "Internal server error (request made with key {key})"))
}

/// 400 `invalid_request_error`: the request's own fault.
pub fn bad_request(message: &str) -> Script {
    Script::respond(400, error("invalid_request_error", message))
}

/// 404 `not_found_error` for an unknown model.
pub fn unknown_model(model: &str) -> Script {
    Script::respond(404, error("not_found_error", &format!("model: {model}")))
}

/// Anthropic's answer to an account out of credit: a 400.
pub fn credit_balance_too_low() -> Script {
    Script::respond(
        400,
        error(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. \
             Please go to Plans & Billing to upgrade or purchase credits.",
        ),
    )
}
