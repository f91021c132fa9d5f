//! Google's error answers in OpenAI's shape.

use bytes::Bytes;
use serde_json::{Value, json};

use super::to_bytes;

/// The longest message kept from a non-JSON error body, in characters.
const MAX_ERROR_TEXT: usize = 500;

/// An OpenAI-shaped error from Google's, keeping `status` and `details`
/// (`ErrorInfo.reason`, `QuotaFailure` violations, `RetryInfo.retryDelay`)
/// for [`crate::classify`].
pub fn error_body(status: u16, body: &[u8]) -> Bytes {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    // Gemini's error is an object, or (from a non-SSE stream) an array of one.
    let error = parsed
        .as_ref()
        .and_then(|v| match v {
            Value::Array(items) => items.first(),
            other => Some(other),
        })
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object());
    let out = match error {
        Some(error) => {
            let google_status = error.get("status").and_then(Value::as_str);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
                .map_or_else(|| format!("Gemini answered HTTP {status}"), str::to_owned);
            json!({ "error": {
                "message": message,
                "type": google_status.map_or_else(|| "upstream_error".to_owned(), str::to_ascii_lowercase),
                "param": null,
                "code": google_status.map_or_else(|| error.get("code").cloned().unwrap_or(Value::Null), Value::from),
                "status": google_status,
                "details": error.get("details").cloned().unwrap_or(Value::Null),
            }})
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("Gemini answered HTTP {status}")
            } else {
                text.chars().take(MAX_ERROR_TEXT).collect()
            };
            json!({ "error": {
                "message": message,
                "type": "upstream_error",
                "param": null,
                "code": null,
                "status": null,
                "details": null,
            }})
        }
    };
    to_bytes(&out)
}

/// `error.message` of a Google error object, or what there is of it.
pub(super) fn error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => format!("Gemini error {error}").chars().take(MAX_ERROR_TEXT).collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn error_bodies_of_every_shape() {
        let out = |status: u16, body: &str| -> Value {
            serde_json::from_slice(&error_body(status, body.as_bytes())).unwrap()
        };
        let array = out(429, r#"[{"error":{"code":429,"message":"slow","status":"RESOURCE_EXHAUSTED"}}]"#);
        assert_eq!(array["error"]["message"], "slow");
        assert_eq!(array["error"]["type"], "resource_exhausted");
        assert_eq!(array["error"]["details"], Value::Null);
        let bare = out(500, r#"{"error":{"code":500}}"#);
        assert_eq!(bare["error"]["message"], "Gemini answered HTTP 500");
        assert_eq!(bare["error"]["type"], "upstream_error");
        assert_eq!(bare["error"]["code"], 500);
        let other = out(404, r#"{"message":"not here"}"#);
        assert_eq!(other["error"]["message"], r#"{"message":"not here"}"#);
    }
}
