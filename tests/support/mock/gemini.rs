//! Google's Gemini API on the wire (what
//! `https://generativelanguage.googleapis.com` serves): answers, streams,
//! embeddings, model list and errors.
//!
//! - `POST /v1beta/models/{model}:generateContent`: a `GenerateContentResponse`;
//! - `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: the same as
//!   `data:` events separated by `\r\n\r\n`, as Google sends them;
//! - `POST /v1beta/models/{model}:batchEmbedContents`: one embedding per
//!   request ([`embedding_values`]), `outputDimensionality` honoured;
//! - `POST /v1beta/models/{model}:countTokens`: `{"totalTokens": 42}`;
//! - `GET /v1beta/models`: Gemini's model list (names with `models/`);
//!
//! checking `x-goog-api-key` (else 403 `PERMISSION_DENIED`, as Google
//! answers unkeyed calls), no key in the URL, `contents` in chat bodies
//! (and none of OpenAI's fields) and each embedding request's `model`
//! (`models/{model}`, as Google requires).

use http::Method;
use serde_json::{Value, json};

use super::{
    Recorded, Script,
    dialect::{Canned, Refusal},
};

/// The default answer's text.
pub const TEXT: &str = "Hello from Gemini.";

/// An error body as Google writes them.
pub fn error(code: u16, status: &str, message: &str, details: Value) -> String {
    let mut error = json!({"code": code, "message": message, "status": status});
    if !details.is_null() {
        error["details"] = details;
    }
    json!({ "error": error }).to_string()
}

fn refuse(code: u16, status: &str, message: &str) -> Refusal {
    Refusal { status: code, body: error(code, status, &format!("mock: {message}"), Value::Null) }
}

/// What a request gets by default, or the refusal the real API would give.
pub(super) fn route(req: &Recorded) -> Result<Canned, Refusal> {
    if req.key.as_deref().is_none_or(str::is_empty) {
        return Err(refuse(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        ));
    }
    let query = req.query.as_deref().unwrap_or_default();
    if query.split('&').any(|pair| pair.starts_with("key=")) {
        return Err(refuse(400, "INVALID_ARGUMENT", "the key belongs in x-goog-api-key, not in the URL"));
    }
    if req.method == Method::GET && req.path == "/v1beta/models" {
        return Ok(Canned::ok(models()));
    }
    let Some((model, method)) = req.path.strip_prefix("/v1beta/models/").and_then(|rest| rest.rsplit_once(':')) else {
        return Err(refuse(404, "NOT_FOUND", &format!("{} {} is not a route", req.method, req.path)));
    };
    if req.method != Method::POST {
        return Err(refuse(405, "INVALID_ARGUMENT", "POST only"));
    }
    if !req.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Err(refuse(400, "INVALID_ARGUMENT", "content-type must be application/json"));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Err(refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received."));
    };
    match method {
        "generateContent" | "streamGenerateContent" => {
            if body.get("contents").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return Err(refuse(
                    400,
                    "INVALID_ARGUMENT",
                    "* GenerateContentRequest.contents: contents is not specified",
                ));
            }
            for field in ["model", "messages", "stream", "max_tokens", "temperature", "tool_choice"] {
                if body.get(field).is_some() {
                    return Err(refuse(
                        400,
                        "INVALID_ARGUMENT",
                        &format!("Invalid JSON payload received. Unknown name \"{field}\": Cannot find field."),
                    ));
                }
            }
            if method == "generateContent" {
                return Ok(Canned::ok(response_text()));
            }
            if !query.split('&').any(|pair| pair == "alt=sse") {
                return Err(refuse(400, "INVALID_ARGUMENT", "this mock streams only with alt=sse"));
            }
            Ok(Canned::Events(text_stream()))
        }
        "countTokens" => Ok(Canned::ok(json!({"totalTokens": COUNTED_TOKENS}).to_string())),
        "batchEmbedContents" => {
            let Some(requests) = body.get("requests").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
                return Err(refuse(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: is required"));
            };
            let mut embeddings = Vec::new();
            for (i, request) in requests.iter().enumerate() {
                if request.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) {
                    return Err(refuse(
                        400,
                        "INVALID_ARGUMENT",
                        &format!("requests[{i}].model must be models/{model}, as in the URL"),
                    ));
                }
                if request.pointer("/content/parts/0/text").and_then(Value::as_str).is_none() {
                    return Err(refuse(400, "INVALID_ARGUMENT", &format!("requests[{i}].content has no text")));
                }
                let dims = request.get("outputDimensionality").and_then(Value::as_u64).unwrap_or(4) as usize;
                embeddings.push(json!({ "values": embedding_values(i, dims) }));
            }
            Ok(Canned::ok(json!({ "embeddings": embeddings }).to_string()))
        }
        other => Err(refuse(404, "NOT_FOUND", &format!("method {other} is not served by this mock"))),
    }
}

/// What `countTokens` answers.
pub const COUNTED_TOKENS: u64 = 42;

/// The values the mock embeds the `i`-th input as, `dims` of them:
/// short decimals, as Google writes its (`f32`) values.
pub fn embedding_values(i: usize, dims: usize) -> Vec<f64> {
    (0..dims)
        .map(|j| match j {
            0 => [0.013168523, -0.008711934, 0.046782676][i % 3],
            1 => -0.5 - i as f64,
            _ => (j as f64) * 0.0625 - 0.125,
        })
        .collect()
}

/// One `alt=sse` event, framed as Google frames it.
pub fn event(data: Value) -> String {
    format!("data: {data}\r\n\r\n")
}

/// The default answer: one text part.
pub fn response_text() -> String {
    json!({
        "candidates": [{"content": {"parts": [{"text": TEXT}], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 5, "totalTokenCount": 16},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-text-1"
    })
    .to_string()
}

/// Text and two function calls (the first signed).
pub fn response_tools() -> String {
    json!({
        "candidates": [{"content": {"parts": [
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
             "thoughtSignature": "c2lnbmF0dXJl"},
            {"functionCall": {"name": "get_time", "args": {}}}
        ], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 40, "totalTokenCount": 160},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-tools-1"
    })
    .to_string()
}

fn chunk(parts: Value, finish: Option<&str>, usage: Value, id: &str) -> String {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = reason.into();
    }
    event(json!({"candidates": [candidate], "usageMetadata": usage,
                 "modelVersion": "gemini-2.5-flash", "responseId": id}))
}

/// A text answer streamed: "Hello" + " from Gemini.", 9 tokens in, 4 out.
/// Event 1 (0-based) is the second text piece.
pub fn text_stream() -> Vec<String> {
    let early = json!({"promptTokenCount": 9, "totalTokenCount": 9});
    vec![
        chunk(json!([{"text": "Hello"}]), None, early.clone(), "resp-stream-1"),
        chunk(json!([{"text": " from Gemini."}]), None, early, "resp-stream-1"),
        chunk(
            json!([{"text": ""}]),
            Some("STOP"),
            json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}),
            "resp-stream-1",
        ),
    ]
}

/// Text, then a function call with the finish.
pub fn tool_stream() -> Vec<String> {
    vec![
        chunk(json!([{"text": "Checking."}]), None, json!({"promptTokenCount": 50}), "resp-stream-tools"),
        chunk(
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}}}]),
            Some("STOP"),
            json!({"promptTokenCount": 50, "candidatesTokenCount": 12, "totalTokenCount": 62}),
            "resp-stream-tools",
        ),
    ]
}

/// Text, then Google's error object as an event.
pub fn broken_stream() -> Vec<String> {
    vec![
        chunk(json!([{"text": "Hel"}]), None, json!({"promptTokenCount": 9}), "resp-stream-broken"),
        event(json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}})),
    ]
}

/// `GET /v1beta/models`: chat, embedding and other models.
pub fn models() -> String {
    json!({"models": [
        {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash",
         "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"]},
        {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro",
         "supportedGenerationMethods": ["generateContent", "countTokens"]},
        {"name": "models/gemini-embedding-001", "displayName": "Gemini Embedding 001",
         "supportedGenerationMethods": ["embedContent", "countTextTokens"]},
        {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]}
    ]})
    .to_string()
}

/// 429 `RESOURCE_EXHAUSTED` (per-minute quota) with `RetryInfo.retryDelay`.
pub fn rate_limited(retry_delay: &str) -> Script {
    let details = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "10"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [
            {"description": "Learn more about Gemini API quotas",
             "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
    ]);
    Script::respond(
        429,
        error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            details,
        ),
    )
}

/// 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`: Google's answer
/// to a bad key.
pub fn invalid_key() -> Script {
    let details = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                          "domain": "googleapis.com",
                          "metadata": {"service": "generativelanguage.googleapis.com"}}]);
    Script::respond(400, error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details))
}

/// 503 `UNAVAILABLE`.
pub fn unavailable() -> Script {
    Script::respond(503, error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", Value::Null))
}

/// 500 `INTERNAL` that names the key it was sent, as Google's
/// consumer messages do (`api_key:...`).
pub fn internal_echoing_key() -> Script {
    Script::respond(
        500,
        error(500, "INTERNAL", "Internal error encountered for consumer 'api_key:{key}'.", Value::Null),
    )
}

/// 400 `INVALID_ARGUMENT`: the request's own fault.
pub fn bad_request(message: &str) -> Script {
    Script::respond(400, error(400, "INVALID_ARGUMENT", message, Value::Null))
}

/// 404 `NOT_FOUND` for an unknown model.
pub fn unknown_model(model: &str) -> Script {
    let message =
        format!("models/{model} is not found for API version v1beta, or is not supported for generateContent.");
    Script::respond(404, error(404, "NOT_FOUND", &message, Value::Null))
}

/// 429 `RESOURCE_EXHAUSTED` for the per-day quota, without a retry hint.
pub fn daily_quota_exhausted() -> Script {
    let details = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "250"}]}
    ]);
    Script::respond(
        429,
        error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            details,
        ),
    )
}
