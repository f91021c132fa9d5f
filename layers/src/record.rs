//! [`RequestRecord`]: what one request learned on its way through the
//! stack, for the completion log line, the metrics and the request log.
//!
//! RequestLog puts one record in each request's extensions and reads it when
//! the request ends. Each field has one writer, named by its method:
//!
//! | field | written by | through |
//! |---|---|---|
//! | the client's name | Auth | [`RequestRecord::set_client`] |
//! | provider, model and model label | Parse | [`RequestRecord::set_route`] |
//! | the same, when a model alias falls back to its next target | FallbackLayer | [`RequestRecord::set_fallback_route`] |
//! | model label, once the provider accepted the model | RetryRotate | [`RequestRecord::set_model_label`] |
//! | each upstream attempt (key, outcome, status, time) | RetryRotate | [`RequestRecord::push_attempt`] |
//! | token usage | the usage meter on the answer's body | [`RequestRecord::set_usage`] |
//! | a stream that broke after its headers | the usage meter | [`RequestRecord::mark_broken`] |
//! | the provider's own bytes (request log only, redacted) | the upstream's capture | [`RequestRecord::set_upstream`] |
//!
//! The record holds identities and numbers only: no secret, no lease, no
//! guard. Captured upstream bytes are redacted before they are stored, by
//! the body that saw them with the key it sent.
//!
//! ```
//! use keyrelay_layers::{provider::ProviderId, record::{AttemptRecord, RequestRecord}, usage::Usage};
//!
//! let record = RequestRecord::default();
//! let seen_by_log = record.clone(); // every clone is the same record
//! record.set_route(ProviderId::new("openai"), "gpt-4o".into(), "gpt-4o".into());
//! record.push_attempt(AttemptRecord::new("openai:1a2b3c4d", "rate_limit", Some(429), 120));
//! record.push_attempt(AttemptRecord::new("openai:5e6f7a8b", "success", Some(200), 310));
//! record.set_usage(Usage::new(9, 2));
//!
//! assert_eq!(seen_by_log.model_label().as_deref(), Some("gpt-4o"));
//! let keys: Vec<_> = seen_by_log.attempts().into_iter().map(|a| a.key).collect();
//! assert_eq!(keys, ["openai:1a2b3c4d", "openai:5e6f7a8b"]);
//! assert_eq!(seen_by_log.usage().unwrap().completion_tokens, 2);
//! assert!(!seen_by_log.broken());
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use bytes::Bytes;

use crate::{provider::ProviderId, usage::Usage};

/// One request's record; clones share it. See the [module docs](self).
#[derive(Clone, Default)]
pub struct RequestRecord(Arc<Inner>);

#[derive(Default)]
struct Inner {
    client: OnceLock<Arc<str>>,
    route: OnceLock<RouteInfo>,
    /// Whether a request log wants the provider's own bytes.
    capture_upstream: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    model_label: Option<Arc<str>>,
    /// Where a model alias's fallback sent the request instead.
    rerouted: Option<RouteInfo>,
    attempts: Vec<AttemptRecord>,
    usage: Option<Usage>,
    broken: bool,
    upstream: Option<(Bytes, bool)>,
}

/// Where a request went, as Parse learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteInfo {
    /// The provider named by the model's prefix.
    pub provider: ProviderId,
    /// The model as the upstream knows it (the client's words, for logs).
    pub model: Arc<str>,
}

/// One upstream attempt of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// The key's id (a fingerprint, never the secret).
    pub key: String,
    /// `success` or the failure class (`rate_limit`, `transient`...).
    pub outcome: &'static str,
    /// The upstream's status; `None` when it could not be reached.
    pub status: Option<u16>,
    /// From the moment the key was leased to the answer's headers: a wait
    /// for a key is not part of any attempt.
    pub ms: u64,
}

impl AttemptRecord {
    /// One attempt with `key` (its id), ending in `outcome` after `ms`.
    pub fn new(key: &str, outcome: &'static str, status: Option<u16>, ms: u64) -> Self {
        Self { key: key.to_owned(), outcome, status, ms }
    }
}

impl RequestRecord {
    /// A record whose request log also wants the provider's own bytes.
    pub fn capturing_upstream() -> Self {
        Self(Arc::new(Inner { capture_upstream: true, ..Inner::default() }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Auth: the name of the client whose key the request carries; the
    /// first call wins.
    pub fn set_client(&self, name: Arc<str>) {
        let _ = self.0.client.set(name);
    }
    /// The client's name, once Auth knew it.
    pub fn client(&self) -> Option<Arc<str>> {
        self.0.client.get().cloned()
    }

    /// Parse: the request's provider, model and model label; the first
    /// call wins.
    pub fn set_route(&self, provider: ProviderId, model: Arc<str>, model_label: Arc<str>) {
        if self.0.route.set(RouteInfo { provider, model }).is_ok() {
            self.state().model_label = Some(model_label);
        }
    }
    /// FallbackLayer: a model alias's next target took the request over
    /// (its provider and model, and the model's label).
    pub fn set_fallback_route(&self, provider: ProviderId, model: Arc<str>, model_label: Arc<str>) {
        let mut state = self.state();
        state.rerouted = Some(RouteInfo { provider, model });
        state.model_label = Some(model_label);
    }

    /// Where the request went: the target that served it last (a model
    /// alias's fallback), else where Parse sent it.
    pub fn route(&self) -> Option<RouteInfo> {
        self.state().rerouted.clone().or_else(|| self.0.route.get().cloned())
    }

    /// RetryRotate, on success: the model's label again, now that the
    /// provider accepted the model (which may make it a label).
    pub fn set_model_label(&self, model_label: Arc<str>) {
        self.state().model_label = Some(model_label);
    }
    /// The model's metrics label: the model when it is known to be real
    /// (configured, listed, or answered with success), else `other`.
    pub fn model_label(&self) -> Option<Arc<str>> {
        self.state().model_label.clone()
    }

    /// RetryRotate: one more upstream attempt.
    pub fn push_attempt(&self, attempt: AttemptRecord) {
        self.state().attempts.push(attempt);
    }
    /// The attempts so far, in order.
    pub fn attempts(&self) -> Vec<AttemptRecord> {
        self.state().attempts.clone()
    }
    /// Calls `f` with the attempts so far, without copying them. The
    /// record is locked meanwhile: `f` must not call the record again.
    pub fn with_attempts<R>(&self, f: impl FnOnce(&[AttemptRecord]) -> R) -> R {
        f(&self.state().attempts)
    }

    /// The usage meter: the answer's tokens; the first report wins.
    pub fn set_usage(&self, usage: Usage) {
        self.state().usage.get_or_insert(usage);
    }
    /// The answer's tokens, once counted.
    pub fn usage(&self) -> Option<Usage> {
        self.state().usage
    }

    /// The usage meter: the answer broke after its headers went out (the
    /// client got an error event, or a cut body).
    pub fn mark_broken(&self) {
        self.state().broken = true;
    }
    /// Whether the answer broke after its headers.
    pub fn broken(&self) -> bool {
        self.state().broken
    }

    /// Whether a request log wants the provider's own bytes.
    pub fn captures_upstream(&self) -> bool {
        self.0.capture_upstream
    }
    /// The upstream's capture: the latest attempt's answer, already
    /// redacted, and whether it was cut.
    pub fn set_upstream(&self, redacted: Bytes, truncated: bool) {
        self.state().upstream = Some((redacted, truncated));
    }
    /// The provider's own answer bytes (redacted) and whether they were cut.
    pub fn upstream(&self) -> Option<(Bytes, bool)> {
        self.state().upstream.clone()
    }
}

impl fmt::Debug for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("RequestRecord")
            .field("route", &self.0.route.get())
            .field("attempts", &state.attempts)
            .field("usage", &state.usage)
            .field("broken", &state.broken)
            .finish_non_exhaustive()
    }
}
