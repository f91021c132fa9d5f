//! The failures the layers report, and how each one answers the client.
//!
//! Every condition is a tiny struct with a lowercase `Display` saying what
//! happened and what to fix. Layers return them boxed as [`BoxError`]; only
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

use std::{error::Error, fmt, time::Duration};

use http::StatusCode;

use crate::BoxError;

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
            macro_rules! reply_if {
                ($($ty:ty),* $(,)?) => {$(
                    if let Some(known) = err.downcast_ref::<$ty>() {
                        return known.reply();
                    }
                )*};
            }
            reply_if!(
                Unauthorized,
                BodyTooLarge,
                InvalidBody,
                MissingModel,
                InvalidModel,
                UnknownProvider,
                ModelBlocked,
                UnsupportedRequest,
                RouteNotFound,
                MethodNotAllowed,
                NoKeyConfigured,
                AllKeysCooling,
                NoUsableKey,
                KeysExhausted,
                KeyBusy,
                UpstreamFailed,
                Forbidden,
                UnknownKey,
                DeadlineExceeded,
                UpstreamUnreachable,
                Overloaded,
                MissingExtension,
            );
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

trait Reply {
    fn reply(&self) -> ErrorReply;
}

/// Client-supplied strings are echoed in messages only this long.
const ECHO_LIMIT: usize = 120;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

macro_rules! impl_error {
    ($ty:ty) => {
        impl Error for $ty {}
    };
}

/// The client sent no proxy key, or the wrong one (401).
#[derive(Debug)]
pub struct Unauthorized {
    missing: bool,
    key_name: &'static str,
}

impl Unauthorized {
    /// No key was sent.
    pub fn missing() -> Self {
        Self { missing: true, key_name: "PROXY_API_KEY" }
    }
    /// A key was sent but it is not the configured one.
    pub fn invalid() -> Self {
        Self { missing: false, key_name: "PROXY_API_KEY" }
    }
    /// Names the key the client should send, e.g. `ADMIN_API_KEY`.
    pub fn for_key(mut self, key_name: &'static str) -> Self {
        self.key_name = key_name;
        self
    }
}

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key_name;
        let which = if key == "ADMIN_API_KEY" { "admin" } else { "proxy" };
        if self.missing {
            write!(f, "missing {which} API key: send `Authorization: Bearer <{key}>` or `x-api-key: <{key}>`")
        } else {
            write!(f, "invalid {which} API key: the key sent does not match {key}")
        }
    }
}
impl_error!(Unauthorized);
impl Reply for Unauthorized {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key", self.to_string())
    }
}

/// The request body is over the configured limit (413).
#[derive(Debug)]
pub struct BodyTooLarge {
    limit: u64,
}

impl BodyTooLarge {
    /// `limit` is the configured maximum, in bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit }
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body is larger than the proxy's limit of {} bytes (server.max_body_bytes)", self.limit)
    }
}
impl_error!(BodyTooLarge);
impl Reply for BodyTooLarge {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_too_large", self.to_string())
    }
}

/// The body is not a JSON object, or could not be read (400).
#[derive(Debug)]
pub struct InvalidBody {
    reason: String,
}

impl InvalidBody {
    /// `reason` says what is wrong (usually the JSON parser's message).
    pub fn new(reason: impl fmt::Display) -> Self {
        Self { reason: reason.to_string() }
    }
}

impl fmt::Display for InvalidBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body must be a JSON object: {}", self.reason)
    }
}
impl_error!(InvalidBody);
impl Reply for InvalidBody {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", self.to_string())
    }
}

/// The body has no `model` (400).
#[derive(Debug, Default)]
pub struct MissingModel {
    _private: (),
}

impl MissingModel {
    /// The error.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Display for MissingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body has no `model`: name one as `provider/model`, e.g. `openai/gpt-4o-mini`")
    }
}
impl_error!(MissingModel);
impl Reply for MissingModel {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "missing_model", self.to_string())
    }
}

/// `model` is not a `provider/model` string (400).
#[derive(Debug)]
pub struct InvalidModel {
    model: Option<String>,
}

impl InvalidModel {
    /// `model` was a string but not of the form `provider/model`.
    pub fn new(model: &str) -> Self {
        Self { model: Some(echo(model)) }
    }
    /// `model` was not a string at all.
    pub fn not_a_string() -> Self {
        Self { model: None }
    }
}

impl fmt::Display for InvalidModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(model) => write!(
                f,
                "model `{model}` is not of the form `provider/model`: prefix it with a configured provider, e.g. `openai/gpt-4o-mini`"
            ),
            None => f.write_str("`model` must be a string of the form `provider/model`"),
        }
    }
}
impl_error!(InvalidModel);
impl Reply for InvalidModel {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_model", self.to_string())
    }
}

/// The `provider/` prefix of `model` names no configured provider (400).
#[derive(Debug)]
pub struct UnknownProvider {
    provider: String,
    known: String,
}

impl UnknownProvider {
    /// `provider` is the prefix the client sent (echoed, bounded); `known`
    /// the configured provider ids, listed in the message.
    pub fn new<'a>(provider: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        let known = known.into_iter().collect::<Vec<_>>().join(", ");
        Self { provider: echo(provider), known }
    }
}

impl fmt::Display for UnknownProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown provider `{}`; known providers: {}", self.provider, self.known)
    }
}
impl_error!(UnknownProvider);
impl Reply for UnknownProvider {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "unknown_provider", self.to_string())
    }
}

/// The model is blocked by the provider's ignore list (403).
#[derive(Debug)]
pub struct ModelBlocked {
    provider: String,
    model: String,
    pattern: String,
}

impl ModelBlocked {
    /// `pattern` is the ignore glob that matched `model`.
    pub fn new(provider: &str, model: &str, pattern: &str) -> Self {
        Self { provider: provider.to_owned(), model: echo(model), pattern: pattern.to_owned() }
    }
}

impl fmt::Display for ModelBlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model `{}` of provider `{}` is blocked by the ignore pattern `{}` (IGNORE_MODELS_{} / providers.{}.ignore_models); add it to the whitelist to allow it",
            self.model,
            self.provider,
            self.pattern,
            self.provider.to_ascii_uppercase(),
            self.provider
        )
    }
}
impl_error!(ModelBlocked);
impl Reply for ModelBlocked {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::FORBIDDEN, "invalid_request_error", "model_not_allowed", self.to_string())
    }
}

/// The request cannot be expressed in the provider's API (400).
#[derive(Debug)]
pub struct UnsupportedRequest {
    provider: String,
    reason: String,
}

impl UnsupportedRequest {
    /// `reason` says what the provider's API cannot express.
    pub fn new(provider: &str, reason: &str) -> Self {
        Self { provider: provider.to_owned(), reason: echo(reason) }
    }
}

impl fmt::Display for UnsupportedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "this request cannot be sent to provider `{}`: {}", self.provider, self.reason)
    }
}
impl_error!(UnsupportedRequest);
impl Reply for UnsupportedRequest {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "unsupported_request", self.to_string())
    }
}

/// No route has this path (404).
#[derive(Debug)]
pub struct RouteNotFound {
    path: String,
}

impl RouteNotFound {
    /// `path` is the request's path (echoed, bounded).
    pub fn new(path: &str) -> Self {
        Self { path: echo(path) }
    }
}

impl fmt::Display for RouteNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no route for `{}`; see GET /v1/models and POST /v1/chat/completions", self.path)
    }
}
impl_error!(RouteNotFound);
impl Reply for RouteNotFound {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", self.to_string())
    }
}

/// The route exists but not for this method (405).
#[derive(Debug)]
pub struct MethodNotAllowed {
    allow: &'static str,
}

impl MethodNotAllowed {
    /// `allow` is the value of the `Allow` header, e.g. `"POST"`.
    pub fn new(allow: &'static str) -> Self {
        Self { allow }
    }
}

impl fmt::Display for MethodNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "method not allowed on this route; use {}", self.allow)
    }
}
impl_error!(MethodNotAllowed);
impl Reply for MethodNotAllowed {
    fn reply(&self) -> ErrorReply {
        let mut reply = ErrorReply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            self.to_string(),
        );
        reply.allow = Some(self.allow);
        reply
    }
}

/// The provider is known but holds no key (503).
#[derive(Debug)]
pub struct NoKeyConfigured {
    provider: String,
}

impl NoKeyConfigured {
    /// The message names the environment variable to set for `provider`.
    pub fn new(provider: &str) -> Self {
        Self { provider: provider.to_owned() }
    }
}

impl fmt::Display for NoKeyConfigured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = self.provider.to_ascii_uppercase();
        write!(f, "no API key configured for provider `{}`: set {env}_API_KEY (or {env}_API_KEY_1, ...)", self.provider)
    }
}
impl_error!(NoKeyConfigured);
impl Reply for NoKeyConfigured {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no_usable_key", self.to_string())
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Every key of the provider is cooling for this model (rate limit or
/// quota) past the request's deadline (429 with `Retry-After`).
#[derive(Debug)]
pub struct AllKeysCooling {
    provider: String,
    model: String,
    retry_after: Duration,
}

impl AllKeysCooling {
    /// `retry_after`: when the first key is usable again.
    pub fn new(provider: &str, model: &str, retry_after: Duration) -> Self {
        Self { provider: provider.to_owned(), model: echo(model), retry_after }
    }
    /// When the first key is usable again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for AllKeysCooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every key of provider `{}` is cooling down for model `{}` (rate limits, quota or repeated failures; see GET /v1/keys); the first is usable again in {} s",
            self.provider,
            self.model,
            ceil_secs(self.retry_after)
        )
    }
}
impl_error!(AllKeysCooling);
impl Reply for AllKeysCooling {
    fn reply(&self) -> ErrorReply {
        let mut reply =
            ErrorReply::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded", self.to_string());
        reply.retry_after = Some(ceil_secs(self.retry_after).max(1));
        reply
    }
}

/// The proxy is at its cap of requests in flight (503, `Retry-After: 1`).
#[derive(Debug, Default)]
pub struct Overloaded {
    _private: (),
}

impl Overloaded {
    /// The error [`LoadShedLayer`](crate::shed::LoadShedLayer) answers with.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the proxy is at its limit of requests in flight; retry shortly")
    }
}
impl_error!(Overloaded);
impl Reply for Overloaded {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "overloaded", self.to_string())
            .with_retry_after(1)
    }
}

/// Every key of the provider is invalid or disabled (503).
#[derive(Debug)]
pub struct NoUsableKey {
    provider: String,
    retry_after: Option<Duration>,
}

impl NoUsableKey {
    /// `retry_after`: when the first invalid key may be probed again.
    pub fn new(provider: &str, retry_after: Option<Duration>) -> Self {
        Self { provider: provider.to_owned(), retry_after }
    }
}

impl fmt::Display for NoUsableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no usable key for provider `{}`: every key is invalid or disabled (see GET /v1/keys)", self.provider)
    }
}
impl_error!(NoUsableKey);
impl Reply for NoUsableKey {
    fn reply(&self) -> ErrorReply {
        let mut reply =
            ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no_usable_key", self.to_string());
        reply.retry_after = self.retry_after.map(|d| ceil_secs(d).max(1));
        reply
    }
}

/// Every key the request could use was tried and failed (502): what
/// [`crate::retry`] turns into [`UpstreamFailed`] with the last error.
#[derive(Debug)]
pub struct KeysExhausted {
    provider: String,
}

impl KeysExhausted {
    /// Every usable key of `provider` has been tried.
    pub fn new(provider: &str) -> Self {
        Self { provider: provider.to_owned() }
    }
}

impl fmt::Display for KeysExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every usable key of provider `{}` was tried for this request and failed", self.provider)
    }
}
impl_error!(KeysExhausted);
impl Reply for KeysExhausted {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_failed", self.to_string())
    }
}

/// The chosen key had no free concurrency slot after all (a race with
/// another request): rotate without penalty (503 if it surfaces).
#[derive(Debug)]
pub struct KeyBusy {
    key: String,
}

impl KeyBusy {
    /// `key` is the key's id, never its secret.
    pub fn new(key: &str) -> Self {
        Self { key: key.to_owned() }
    }
}

impl fmt::Display for KeyBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} has no free concurrency slot", self.key)
    }
}
impl_error!(KeyBusy);
impl Reply for KeyBusy {
    fn reply(&self) -> ErrorReply {
        let mut reply =
            ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "key_busy", self.to_string());
        reply.retry_after = Some(1);
        reply
    }
}

/// Every attempt failed; carries the last upstream error, redacted (502).
#[derive(Debug)]
pub struct UpstreamFailed {
    provider: String,
    attempts: u32,
    last: String,
}

impl UpstreamFailed {
    /// `last` must already be free of secrets.
    pub fn new(provider: &str, attempts: u32, last: String) -> Self {
        Self { provider: provider.to_owned(), attempts, last }
    }
}

impl fmt::Display for UpstreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream `{}` failed on every attempt ({} in all); last error: {}",
            self.provider, self.attempts, self.last
        )
    }
}
impl_error!(UpstreamFailed);
impl Reply for UpstreamFailed {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_failed", self.to_string())
    }
}

/// The key is valid but not allowed here: the admin routes want the admin
/// key (403).
#[derive(Debug, Default)]
pub struct Forbidden {
    _private: (),
}

impl Forbidden {
    /// The error.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this route needs the admin key (ADMIN_API_KEY), not the proxy key")
    }
}
impl_error!(Forbidden);
impl Reply for Forbidden {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::FORBIDDEN, "invalid_request_error", "admin_key_required", self.to_string())
    }
}

/// No key has this id (404 on the admin routes).
#[derive(Debug)]
pub struct UnknownKey {
    id: String,
}

impl UnknownKey {
    /// `id` is the key id the client asked for (echoed, bounded).
    pub fn new(id: &str) -> Self {
        Self { id: echo(id) }
    }
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no key with id `{}`; GET /v1/keys lists them", self.id)
    }
}
impl_error!(UnknownKey);
impl Reply for UnknownKey {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::NOT_FOUND, "invalid_request_error", "key_not_found", self.to_string())
    }
}

/// An error of an attempt made with a known key, so that retries can blame
/// it. Displays as its cause; the status is its cause's.
#[derive(Debug)]
pub struct LeasedError {
    lease: crate::pool::KeyLease,
    source: BoxError,
}

impl LeasedError {
    /// `source` happened on an attempt made with `lease`'s key.
    pub fn new(lease: crate::pool::KeyLease, source: BoxError) -> Self {
        Self { lease, source }
    }
    /// The key the attempt used.
    pub fn lease(&self) -> &crate::pool::KeyLease {
        &self.lease
    }
    /// The attempt's own error.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for LeasedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl Error for LeasedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// The request's deadline passed before the upstream answered (504).
#[derive(Debug)]
pub struct DeadlineExceeded {
    after: Duration,
}

impl DeadlineExceeded {
    /// `after` is the deadline's length, named in the message.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request did not get an answer within the proxy's deadline of {:.1} s (proxy.global_timeout_secs / GLOBAL_TIMEOUT)",
            self.after.as_secs_f64()
        )
    }
}
impl_error!(DeadlineExceeded);
impl Reply for DeadlineExceeded {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", "deadline_exceeded", self.to_string())
    }
}

/// The upstream could not be reached, or broke before answering (502).
#[derive(Debug)]
pub struct UpstreamUnreachable {
    provider: String,
    source: BoxError,
}

impl UpstreamUnreachable {
    /// `source` is the client's error (connect refused, reset, TLS...).
    pub fn new(provider: &str, source: impl Into<BoxError>) -> Self {
        Self { provider: provider.to_owned(), source: source.into() }
    }
}

impl fmt::Display for UpstreamUnreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream `{}` failed before answering", self.provider)?;
        // The chain of a hyper client error names the cause (connect refused,
        // reset, TLS); it never holds headers, so no secret can appear here.
        let mut cause: Option<&(dyn Error + 'static)> = Some(&*self.source);
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}
impl_error!(UpstreamUnreachable);
impl Reply for UpstreamUnreachable {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unreachable", self.to_string())
    }
}

/// A layer ran without the extension an outer layer should have inserted: a
/// mis-assembled stack, not a client error (500).
#[derive(Debug)]
pub struct MissingExtension(&'static str);

impl MissingExtension {
    /// `type_name` names the missing extension, e.g. `"RouteTarget"`.
    pub fn new(type_name: &'static str) -> Self {
        Self(type_name)
    }
}

impl fmt::Display for MissingExtension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request extension `{}` is missing: a layer is out of order in the stack", self.0)
    }
}
impl_error!(MissingExtension);
impl Reply for MissingExtension {
    fn reply(&self) -> ErrorReply {
        ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
