//! Errors in the shape each inbound dialect's clients read: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` (chat completions and
//! the Responses API), Anthropic's `{"type": "error", "error": {"type",
//! "message"}}`, Google's `{"error": {"code", "message", "status"}}`. The
//! status is the same whatever the shape; only the body differs.
//!
//! ```
//! use http::StatusCode;
//! use keyrelay_layers::{error::{ErrorReply, shape}, extensions::Inbound};
//!
//! let reply = ErrorReply::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded", "wait");
//! let anthropic: serde_json::Value = serde_json::from_slice(&reply.to_json_for(Inbound::Anthropic)).unwrap();
//! assert_eq!(anthropic["error"]["type"], "rate_limit_error");
//! let google: serde_json::Value = serde_json::from_slice(&reply.to_json_for(Inbound::Gemini)).unwrap();
//! assert_eq!(google["error"]["status"], "RESOURCE_EXHAUSTED");
//!
//! // An OpenAI-shaped error from a translated provider, as a Claude Code client reads it.
//! let upstream = br#"{"error": {"message": "context too long", "type": "invalid_request_error"}}"#;
//! let reshaped: serde_json::Value = serde_json::from_slice(&shape::reshape(Inbound::Anthropic, 400, upstream)).unwrap();
//! assert_eq!(reshaped["error"]["message"], "context too long");
//! ```

use bytes::Bytes;
use serde_json::{Value, json};

use super::ErrorReply;
use crate::extensions::Inbound;

impl ErrorReply {
    /// The response body in `inbound`'s shape ([`to_json`](Self::to_json)
    /// for OpenAI's dialects).
    pub fn to_json_for(&self, inbound: Inbound) -> Vec<u8> {
        match inbound {
            Inbound::Anthropic => anthropic(self.status.as_u16(), &self.message),
            Inbound::Gemini => google(self.status.as_u16(), &self.message),
            _ => self.to_json(),
        }
    }
}

/// An error body the proxy holds in OpenAI's shape (its own, or a
/// translated provider's) in `inbound`'s, keeping the message; a body
/// without one keeps its text as the message.
pub fn reshape(inbound: Inbound, status: u16, openai: &[u8]) -> Bytes {
    if matches!(inbound, Inbound::OpenAi | Inbound::Responses) {
        return Bytes::copy_from_slice(openai);
    }
    let parsed: Option<Value> = serde_json::from_slice(openai).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(openai).chars().take(1000).collect());
    match inbound {
        Inbound::Anthropic => anthropic(status, &message).into(),
        _ => google(status, &message).into(),
    }
}

/// The last event of a stream that broke after its `200`, as `inbound`'s
/// clients read one.
pub fn stream_error_event(inbound: Inbound, message: &str, code: &str) -> Bytes {
    match inbound {
        Inbound::Anthropic => {
            let data = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            format!("event: error\ndata: {data}\n\n").into()
        }
        Inbound::Gemini => {
            let data = json!({"error": {"code": 502, "message": message, "status": "UNAVAILABLE"}});
            format!("data: {data}\n\n").into()
        }
        Inbound::Responses => {
            // The Responses API's `error` event; the OpenAI SDKs raise on
            // an `error` event only when its data holds an `error` object.
            let data = json!({
                "type": "error", "code": code, "message": message, "param": null,
                "error": {"type": "upstream_error", "code": code, "message": message},
            });
            format!("event: error\ndata: {data}\n\n").into()
        }
        _ => {
            let data = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": code}});
            format!("data: {data}\n\n").into()
        }
    }
}

/// Anthropic's error `type` for a status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Google's canonical error `status` for an HTTP status.
pub fn google_status(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 | 501 => "UNIMPLEMENTED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

fn anthropic(status: u16, message: &str) -> Vec<u8> {
    let body = json!({"type": "error", "error": {"type": anthropic_type(status), "message": message}});
    serde_json::to_vec(&body).expect("a JSON object of strings always serializes")
}

fn google(status: u16, message: &str) -> Vec<u8> {
    let body = json!({"error": {"code": status, "message": message, "status": google_status(status)}});
    serde_json::to_vec(&body).expect("a JSON object of strings always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_of_the_table_has_its_type_in_each_shape() {
        let cases = [
            (400, "invalid_request_error", "INVALID_ARGUMENT"),
            (401, "authentication_error", "UNAUTHENTICATED"),
            (403, "permission_error", "PERMISSION_DENIED"),
            (404, "not_found_error", "NOT_FOUND"),
            (405, "invalid_request_error", "UNIMPLEMENTED"),
            (409, "invalid_request_error", "ABORTED"),
            (413, "request_too_large", "INVALID_ARGUMENT"),
            (429, "rate_limit_error", "RESOURCE_EXHAUSTED"),
            (500, "api_error", "INTERNAL"),
            (502, "api_error", "UNAVAILABLE"),
            (503, "overloaded_error", "UNAVAILABLE"),
            (504, "timeout_error", "DEADLINE_EXCEEDED"),
            (529, "overloaded_error", "INTERNAL"),
        ];
        for (status, anthropic_kind, google) in cases {
            assert_eq!((anthropic_type(status), google_status(status)), (anthropic_kind, google), "{status}");
        }
    }

    #[test]
    fn reshaping_keeps_the_message_and_passes_openai_shapes() {
        let openai =
            br#"{"error":{"message":"no such model","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(&reshape(Inbound::Responses, 404, openai)[..], openai);
        let google: Value = serde_json::from_slice(&reshape(Inbound::Gemini, 404, openai)).unwrap();
        assert_eq!(google, json!({"error": {"code": 404, "message": "no such model", "status": "NOT_FOUND"}}));
        let anthropic: Value = serde_json::from_slice(&reshape(Inbound::Anthropic, 502, b"Bad Gateway")).unwrap();
        assert_eq!(anthropic, json!({"type": "error", "error": {"type": "api_error", "message": "Bad Gateway"}}));
    }

    #[test]
    fn stream_errors_are_each_dialects_own_event() {
        let event = |inbound| String::from_utf8(stream_error_event(inbound, "cut", "stream_broken").to_vec()).unwrap();
        assert!(event(Inbound::Anthropic).starts_with("event: error\ndata: {"));
        assert!(event(Inbound::Anthropic).contains(r#""type":"api_error""#));
        assert!(event(Inbound::Gemini).contains(r#""status":"UNAVAILABLE""#));
        assert!(event(Inbound::Responses).contains(r#""type":"error""#));
        assert!(event(Inbound::OpenAi).starts_with("data: {\"error\""));
        for inbound in [Inbound::OpenAi, Inbound::Anthropic, Inbound::Responses, Inbound::Gemini] {
            assert!(event(inbound).ends_with("\n\n"));
        }
    }
}
