//! The failures the layers report, and how each one answers the client.
//!
//! Every condition is a tiny struct with a lowercase `Display` saying what
//! happened and what to fix, generated from one table (`error/table.rs`)
//! that also gives its status, OpenAI `type` and `code` and `Retry-After`,
//! so no failure can miss its reply. Layers return them boxed as
//! [`BoxError`](crate::BoxError); only
//! [`crate::respond::ErrorResponseLayer`] turns them into responses, through
//! [`ErrorReply::from_error`]. Errors carry key ids, never secrets.
//!
//! [`ErrorReply::from_error`] walks the error's source chain, so a known
//! failure is found behind wrappers such as [`LeasedError`]; anything else is
//! a 500 whose message says nothing about its cause.
//!
//! ```
//! use std::time::Duration;
//! use keyrelay_layers::{error::{AllKeysCooling, ErrorReply}, BoxError};
//!
//! let err: BoxError = AllKeysCooling::new("openai", "gpt-4o", Duration::from_millis(1500)).into();
//! let reply = ErrorReply::from_error(&*err);
//! assert_eq!(reply.status, 429);
//! assert_eq!((reply.kind, reply.code), ("rate_limit_error", "rate_limit_exceeded"));
//! assert_eq!(reply.retry_after, Some(2), "whole seconds, rounded up");
//!
//! let body: serde_json::Value = serde_json::from_slice(&reply.to_json()).unwrap();
//! assert_eq!(body["error"]["type"], "rate_limit_error");
//! assert!(body["error"]["param"].is_null());
//!
//! let unknown = ErrorReply::from_error(&*BoxError::from("some library's error"));
//! assert_eq!((unknown.status.as_u16(), unknown.code), (500, "internal_error"));
//! assert!(!unknown.message.contains("some library"));
//! ```

mod define;
mod leased;
pub mod shape;
mod table;

use std::{error::Error, time::Duration};

use http::StatusCode;

pub use self::{leased::LeasedError, table::*};

/// What the client is told about a failure: the HTTP status each error
/// struct's docs name, in OpenAI's error shape.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorReply {
    /// The response status.
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    /// OpenAI's `error.code`; also the few-valued label logs and metrics use.
    pub code: &'static str,
    /// OpenAI's `error.message`: what happened and what to fix.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Methods for an `Allow` header (405).
    pub allow: Option<&'static str>,
}

impl ErrorReply {
    /// A reply for a failure of your own, answered in the same shape as
    /// keyrelay's (see [`respond::reply_response`](crate::respond::reply_response)).
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, code, message: message.into(), retry_after: None, allow: None }
    }

    /// Adds a `Retry-After` of `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds an `Allow` header listing `methods` (for a 405).
    pub fn with_allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    /// Walks the error's source chain for a failure this crate knows; anything
    /// else is an internal error (500), which no client input should reach.
    pub fn from_error(err: &(dyn Error + 'static)) -> Self {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if let Some(reply) = table::reply_to_known(err) {
                return reply;
            }
            cause = err.source();
        }
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "internal error in the proxy; see its logs".to_owned(),
        )
    }

    /// The response body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        }))
        .expect("a JSON object of strings always serializes")
    }
}

/// Removes a secret, and anything shaped like a provider key, from text
/// that came from upstream (some providers echo part of the key).
///
/// ```
/// use keyrelay_layers::error::redact;
///
/// let text = "bad key my-secret-value; did you mean sk-proj-0123456789.";
/// assert_eq!(redact(text, "my-secret-value"), "bad key [redacted]; did you mean [redacted].");
/// ```
pub fn redact(text: &str, secret: &str) -> String {
    let text = if secret.len() >= 4 { text.replace(secret, "[redacted]") } else { text.to_owned() };
    text.split_inclusive(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')'))
        .map(|word| {
            let token =
                word.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')' | '.'));
            let looks_like_key = ["sk-", "gsk_", "AIza", "xai-", "nvapi-", "fw_", "csk-"]
                .iter()
                .any(|prefix| token.starts_with(prefix) && token.len() >= prefix.len() + 8);
            if looks_like_key { word.replacen(token, "[redacted]", 1) } else { word.to_owned() }
        })
        .collect()
}

/// Client-supplied strings are echoed in messages only this long.
const ECHO_LIMIT: usize = 120;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;
    use crate::BoxError;

    fn reply(err: impl Into<BoxError>) -> ErrorReply {
        ErrorReply::from_error(&*err.into())
    }

    #[test]
    fn statuses_follow_the_design_table() {
        let table: Vec<(BoxError, u16, &str)> = vec![
            (Unauthorized::missing().into(), 401, "invalid_api_key"),
            (Unauthorized::invalid().into(), 401, "invalid_api_key"),
            (BodyTooLarge::new(10).into(), 413, "request_too_large"),
            (InvalidBody::new("eof").into(), 400, "invalid_json"),
            (MissingModel::new().into(), 400, "missing_model"),
            (InvalidModel::new("gpt-4o").into(), 400, "invalid_model"),
            (UnknownProvider::new("x", ["openai"]).into(), 400, "unknown_provider"),
            (ModelBlocked::new("openai", "o1", "*").into(), 403, "model_not_allowed"),
            (UnsupportedRequest::new("anthropic", "no embeddings").into(), 400, "unsupported_request"),
            (RouteNotFound::new("/nope").into(), 404, "unknown_url"),
            (MethodNotAllowed::new("POST").into(), 405, "method_not_allowed"),
            (NoKeyConfigured::new("groq").into(), 503, "no_usable_key"),
            (AllKeysCooling::new("openai", "m", Duration::from_secs(1)).into(), 429, "rate_limit_exceeded"),
            (KeysRecovering::new("openai", "m", Duration::from_secs(1)).into(), 503, "upstream_unavailable"),
            (Overloaded::new().into(), 503, "overloaded"),
            (NoUsableKey::new("openai", None).into(), 503, "no_usable_key"),
            (KeysExhausted::new("openai").into(), 502, "upstream_failed"),
            (KeyBusy::new("openai:0123abcd").into(), 503, "key_busy"),
            (UpstreamFailed::new("openai", 2, "boom".to_owned()).into(), 502, "upstream_failed"),
            (Forbidden::new().into(), 403, "admin_key_required"),
            (UnknownKey::new("openai:nope").into(), 404, "key_not_found"),
            (DeadlineExceeded::new(Duration::from_secs(1)).into(), 504, "deadline_exceeded"),
            (UpstreamUnreachable::new("openai", "connection refused").into(), 502, "upstream_unreachable"),
            (MissingExtension::new("RouteTarget").into(), 500, "internal_error"),
            ("something else".into(), 500, "internal_error"),
        ];
        for (err, status, code) in table {
            let r = reply(err);
            assert_eq!((r.status.as_u16(), r.code), (status, code), "{}", r.message);
        }
    }

    #[test]
    fn table_is_consistent() {
        // One OpenAI `type` per status class, as the table's docs promise.
        for &(name, status, kind, code) in table::ROWS {
            let expected = match status {
                429 => "rate_limit_error",
                400..=499 => "invalid_request_error",
                500 => "server_error",
                502 => "upstream_error",
                503 => "service_unavailable",
                504 => "timeout_error",
                _ => panic!("{name}: status {status} has no type rule"),
            };
            assert_eq!(kind, expected, "{name}");
            assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}: {code}");
        }
        let names: std::collections::HashSet<_> = table::ROWS.iter().map(|row| row.0).collect();
        assert_eq!(names.len(), table::ROWS.len(), "a name twice");
    }

    #[test]
    fn keys_recovering_is_not_a_rate_limit_and_says_when_to_retry() {
        let r = reply(KeysRecovering::new("openai", "gpt-4o", Duration::from_millis(9_200)));
        assert_eq!(
            (r.status, r.kind, r.code),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "upstream_unavailable")
        );
        assert_eq!(r.retry_after, Some(10), "whole seconds, rounded up");
        assert!(r.message.contains("not a rate limit") && r.message.contains("retry in 10 s"), "{}", r.message);
        assert!(r.message.contains("`openai`") && r.message.contains("`gpt-4o`"), "{}", r.message);
        let soon = reply(KeysRecovering::new("openai", "gpt-4o", Duration::ZERO));
        assert_eq!(soon.retry_after, Some(1), "never Retry-After: 0");
    }

    #[test]
    fn a_known_error_is_found_behind_a_wrapper() {
        #[derive(Debug)]
        struct Wrapper(BoxError);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&*self.0)
            }
        }
        let r = reply(Wrapper(Box::new(BodyTooLarge::new(5))));
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn messages_name_the_fix_and_echo_input_bounded() {
        let long = "x".repeat(10_000);
        let r = reply(InvalidModel::new(&long));
        assert!(r.message.len() < 400, "{}", r.message.len());
        assert!(reply(NoKeyConfigured::new("nvidia_nim")).message.contains("NVIDIA_NIM_API_KEY"));
        let allow = reply(MethodNotAllowed::new("GET")).allow;
        assert_eq!(allow, Some("GET"));
        let cooling = reply(AllKeysCooling::new("openai", "gpt-4o", Duration::from_millis(1500)));
        assert_eq!(cooling.retry_after, Some(2), "rounded up");
    }

    #[test]
    fn redaction_removes_the_secret_and_key_shaped_tokens() {
        let text = "Incorrect API key provided: sk-abcdefgh1234****wxyz. You passed my-own-secret-value (gsk_0123456789abcdef).";
        let out = redact(text, "my-own-secret-value");
        assert!(
            !out.contains("my-own-secret-value") && !out.contains("sk-abcdefgh") && !out.contains("gsk_0123"),
            "{out}"
        );
        assert!(out.starts_with("Incorrect API key provided: [redacted]"), "{out}");
    }

    #[test]
    fn json_is_openai_shaped() {
        let body: serde_json::Value = serde_json::from_slice(&reply(MissingModel::new()).to_json()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "missing_model");
        assert!(body["error"]["message"].as_str().unwrap().contains("provider/model"));
    }
}
