//! One request as the mock saw it, recorded before it is answered.

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use serde_json::Value;
use tokio::time::Instant;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// The path, without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The pool key it carried, in the dialect's key header
    /// ([`super::Dialect::key_header`]).
    pub key: Option<String>,
    /// When it arrived (its body read).
    pub at: Instant,
    /// What it was answered: [`super::Script::label`], or `refused` when
    /// the mock refused it as the real provider would.
    pub answer: String,
}

impl Recorded {
    /// The bearer token of `Authorization` (an OpenAI pool key).
    pub fn bearer(&self) -> Option<&str> {
        self.header(header::AUTHORIZATION.as_str())?.strip_prefix("Bearer ")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("request body is UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("request body is not JSON ({err}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body's top-level `field`, when the body is JSON and has it.
    fn field(&self, field: &str) -> Option<Value> {
        serde_json::from_slice::<Value>(&self.body).ok()?.get_mut(field).map(Value::take)
    }

    /// The body's `model`, when it is JSON and has one.
    pub fn model(&self) -> Option<String> {
        self.field("model")?.as_str().map(str::to_owned)
    }

    /// Whether the body asks for a stream.
    pub fn wants_stream(&self) -> bool {
        self.field("stream").and_then(|stream| stream.as_bool()).unwrap_or(false)
    }

    /// The body's `user` field (tests tag requests with it).
    pub fn user(&self) -> Option<String> {
        self.field("user")?.as_str().map(str::to_owned)
    }

    /// Every header value, joined, for leak checks.
    pub fn all_header_values(&self) -> String {
        self.headers
            .iter()
            .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
            .collect()
    }
}
