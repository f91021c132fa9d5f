//! Anthropic's error answers in OpenAI's shape.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize)]
struct ErrorObject {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<()>,
    code: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// Anthropic's error type for a status, when the body does not say.
fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// At most this many characters of a body that is not Anthropic's JSON.
const MAX_TEXT: usize = 500;

fn clip(text: &str) -> String {
    text.trim().chars().take(MAX_TEXT).collect()
}

/// An OpenAI-shaped error for an Anthropic error answer: Anthropic's
/// `error.type` becomes both `type` and `code` (so [`crate::classify`]
/// reads it as before), the message is kept word for word.
pub fn error_body(status: u16, body: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let (message, kind, code, details) = match (error, &parsed) {
        (Some(Value::Object(error)), _) => {
            let string = |field: &str| error.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
            let kind = string("type").unwrap_or_else(|| type_for_status(status)).to_owned();
            let code = match error.get("code") {
                Some(code @ (Value::String(_) | Value::Number(_))) => code.clone(),
                _ => Value::String(kind.clone()),
            };
            let message = string("message").map_or_else(|| clip(&text), str::to_owned);
            (message, kind, code, error.get("details").filter(|d| !d.is_null()).cloned())
        }
        (Some(Value::String(message)), _) => (clip(message), type_for_status(status).to_owned(), Value::Null, None),
        (_, Some(value)) if value.get("message").is_some_and(Value::is_string) => {
            let message = value.get("message").and_then(Value::as_str).unwrap_or_default();
            (clip(message), type_for_status(status).to_owned(), Value::Null, None)
        }
        _ => {
            let trimmed = text.trim();
            // A bare "Too Many Requests" from a proxy in front still reads as a rate limit.
            let kind = if matches!(trimmed.to_ascii_lowercase().as_str(), "too many requests" | "rate limit exceeded") {
                "rate_limit_error"
            } else {
                type_for_status(status)
            };
            (clip(trimmed), kind.to_owned(), Value::Null, None)
        }
    };
    let message = if message.is_empty() { format!("Anthropic answered HTTP {status}") } else { message };
    let code = if code.is_null() { Value::String(kind.clone()) } else { code };
    let body = ErrorBody { error: ErrorObject { message, kind, param: None, code, details } };
    // Strings and JSON values only: encoding cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn error_bodies_keep_anthropics_fields() {
        let out = |status, body: &str| serde_json::from_slice::<Value>(&error_body(status, body.as_bytes())).unwrap();
        assert_eq!(
            out(
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Spend limit reached","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#
            ),
            json!({"error": {"message": "Spend limit reached", "type": "rate_limit_error", "param": null,
                "code": "rate_limit_error", "details": {"error_code": "enforced_spend_limit_reached"}}})
        );
        // A proxy in front answering in OpenAI's shape keeps its code.
        assert_eq!(
            out(429, r#"{"error":{"message":"quota","type":"requests","code":"insufficient_quota"}}"#)["error"]["code"],
            "insufficient_quota"
        );
        assert_eq!(out(400, r#"{"error":"bad thing"}"#)["error"]["message"], "bad thing");
        assert_eq!(out(400, r#"{"message":"top-level"}"#)["error"]["message"], "top-level");
        assert_eq!(
            out(500, r#"{"type":"error","error":{"type":"api_error"}}"#)["error"]["message"],
            r#"{"type":"error","error":{"type":"api_error"}}"#
        );
        assert_eq!(out(418, "  \n")["error"]["message"], "Anthropic answered HTTP 418");
        assert_eq!(out(418, "")["error"]["type"], "invalid_request_error");
    }
}
