//! The metrics the layers emit, through the `metrics` facade only: the
//! library never installs a recorder (the binary does, and serves them).
//! Names are constants here, described by [`describe`]. Labels come from
//! sets the proxy controls: provider ids, key ids, classes, status classes;
//! a model is a label only when the operator named it or the provider
//! listed it, otherwise `other` (model names come from clients).
//!
//! Any recorder works; this one only collects the names [`describe`] gives it:
//!
//! ```
//! use std::sync::Mutex;
//! use keyrelay_layers::metrics::{self as names, describe, status_class};
//! use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
//!
//! #[derive(Default)]
//! struct Described(Mutex<Vec<String>>);
//! impl Described {
//!     fn push(&self, key: KeyName) {
//!         self.0.lock().unwrap().push(key.as_str().to_owned());
//!     }
//! }
//! impl Recorder for Described {
//!     fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) { self.push(key) }
//!     fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) { self.push(key) }
//!     fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) { self.push(key) }
//!     fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter { Counter::noop() }
//!     fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge { Gauge::noop() }
//!     fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram { Histogram::noop() }
//! }
//!
//! let recorder = Described::default();
//! metrics::with_local_recorder(&recorder, describe);
//! let described = recorder.0.into_inner().unwrap();
//! assert!(described.iter().any(|name| name == names::REQUESTS));
//! assert!(described.iter().any(|name| name == "keyrelay_upstream_attempts_total"));
//! assert!(described.iter().all(|name| name.starts_with("keyrelay_")));
//! assert_eq!(status_class(429), "4xx");
//! ```

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter: client requests finished; labels `provider`, `model`,
/// `status_class` ([`status_class`], or `cancelled`), `error_kind`,
/// `inbound` and `client` (a client key's name, `default` for the proxy key,
/// `none` when refused before the key was known).
pub const REQUESTS: &str = "keyrelay_requests_total";
/// Histogram (seconds): arrival to the end of the response body; labels
/// `provider`, `status_class`.
pub const REQUEST_DURATION: &str = "keyrelay_request_duration_seconds";
/// Histogram (seconds): arrival to the response headers; label `provider`.
pub const TIME_TO_FIRST_BYTE: &str = "keyrelay_time_to_first_byte_seconds";
/// Counter: upstream attempts; labels `provider`, `key` (its id) and `outcome`.
pub const UPSTREAM_ATTEMPTS: &str = "keyrelay_upstream_attempts_total";
/// Counter: further attempts of a request; labels `provider`, `kind`
/// (`same_key` or `rotate`).
pub const RETRIES: &str = "keyrelay_retries_total";
/// Counter: cooldowns and invalid marks started; labels `provider`, `key`, `class`.
pub const COOLDOWNS: &str = "keyrelay_cooldowns_total";
/// Gauge: 1 for each key's current state, else 0 (set by the binary at scrape).
pub const KEY_STATE: &str = "keyrelay_key_state";
/// Gauge: requests in flight per key (set by the binary at scrape).
pub const KEY_IN_FLIGHT: &str = "keyrelay_key_in_flight";
/// Gauge: a key's configured limit; labels `provider`, `key`, `kind`
/// (`rpm`, `tpm`, `rpd`), only for limits that are set (set at scrape).
pub const KEY_LIMIT: &str = "keyrelay_key_limit";
/// Gauge: a key's use of its windows; labels `provider`, `key`, `kind`
/// (`rpm`: requests in the last minute, `tpm`: tokens in the last minute,
/// `rpd`: requests today) (set at scrape).
pub const KEY_WINDOW_USED: &str = "keyrelay_key_window_used";
/// Gauge: what the provider's headers last said a (key, model) has left;
/// labels `provider`, `key`, `model`, `kind` (`requests`, `tokens`), while
/// before its reset (set at scrape).
pub const KEY_LEARNED_REMAINING: &str = "keyrelay_key_learned_remaining";
/// Counter: requests a model alias moved to its next target; labels
/// `from`, `to` (providers).
pub const FALLBACKS: &str = "keyrelay_fallbacks_total";
/// Counter: tokens; labels `provider`, `model`, `kind` (`prompt` or `completion`).
pub const TOKENS: &str = "keyrelay_tokens_total";
/// Counter: frames of streamed answers passed to clients; label `provider`.
pub const STREAM_CHUNKS: &str = "keyrelay_stream_chunks_total";
/// Counter: streams that broke after their headers; labels `provider`, `key`.
pub const STREAM_BREAKS: &str = "keyrelay_stream_breaks_total";
/// Emitted by the binary's request log queue, not by a layer.
pub const REQUEST_LOG_DROPPED: &str = "keyrelay_request_log_dropped_total";
/// Counter: USD spent, from the price table; labels `client`, `provider`,
/// `model`. Fractions: kept by [`crate::price::CostTotals`], not the facade.
pub const COST: &str = "keyrelay_cost_usd_total";
/// Counter: tokens by client; labels `client`, `provider`, `model`, `kind`
/// (`prompt`, `completion`, `cached`).
pub const CLIENT_TOKENS: &str = "keyrelay_client_tokens_total";
/// Counter: answers whose usage had no price; labels `provider`, `model`.
pub const UNPRICED: &str = "keyrelay_unpriced_requests_total";
/// Gauge: USD left of a client's budget in its period; label `client`.
pub const CLIENT_BUDGET_REMAINING: &str = "keyrelay_client_budget_remaining_usd";
/// Gauge: USD left of a key's budget in its period; labels `provider`, `key`.
pub const KEY_BUDGET_REMAINING: &str = "keyrelay_key_budget_remaining_usd";
/// Gauge: 1 while the replica shares its keys' state on Redis, 0 while it
/// runs on its own (emitted by the binary).
pub const SHARED_STATE_UP: &str = "keyrelay_shared_state_up";
/// Counter: key events not sent to Redis because the queue was full.
pub const SHARED_EVENTS_DROPPED: &str = "keyrelay_shared_events_dropped_total";
/// Counter: ledger rows written (emitted by the binary's ledger writer).
pub const LEDGER_ROWS: &str = "keyrelay_ledger_rows_total";
/// Counter: ledger rows dropped because the writer's queue was full or the
/// database failed (emitted by the binary's ledger writer).
pub const LEDGER_DROPPED: &str = "keyrelay_ledger_rows_dropped_total";

/// Buckets for LLM-scale latencies: from 50 ms to 10 minutes.
pub const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Registers descriptions with the installed recorder; call once at start.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Client requests finished, by provider, model, status class, error kind, inbound dialect and client."
    );
    describe_counter!(CLIENT_TOKENS, "Tokens by client, provider, model and kind (prompt, completion, cached).");
    describe_counter!(UNPRICED, "Answers with usage but no price for their model, by provider and model.");
    describe_gauge!(CLIENT_BUDGET_REMAINING, "USD left of each client's budget in its current period.");
    describe_gauge!(KEY_BUDGET_REMAINING, "USD left of each key's budget in its current period.");
    describe_counter!(LEDGER_ROWS, "Usage ledger rows written to the database.");
    describe_gauge!(SHARED_STATE_UP, "1 while keys' cooldowns and marks are shared on Redis, 0 while local only.");
    describe_counter!(SHARED_EVENTS_DROPPED, "Key events not sent to Redis because the queue was full.");
    describe_counter!(
        LEDGER_DROPPED,
        "Usage ledger rows dropped (the writer's queue was full, or the database refused them)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to the end of its response body."
    );
    describe_histogram!(TIME_TO_FIRST_BYTE, Unit::Seconds, "Time from a request's arrival to its response headers.");
    describe_counter!(UPSTREAM_ATTEMPTS, "Upstream attempts by provider, key id and outcome class.");
    describe_counter!(RETRIES, "Further attempts made for a request, by provider and kind (same_key or rotate).");
    describe_counter!(COOLDOWNS, "Cooldowns and invalid marks started, by provider, key id and class.");
    describe_gauge!(KEY_STATE, "1 for the state each key is in (ok, cooling, exhausted, invalid, disabled), else 0.");
    describe_gauge!(KEY_IN_FLIGHT, "Requests in flight per key.");
    describe_counter!(FALLBACKS, "Requests a model alias moved from one provider's pool to its next target's.");
    describe_gauge!(KEY_LIMIT, "Per-key limits as configured: rpm, tpm, rpd.");
    describe_gauge!(
        KEY_WINDOW_USED,
        "Per-key window use: requests (rpm) and tokens (tpm) in the last minute, requests today (rpd)."
    );
    describe_gauge!(
        KEY_LEARNED_REMAINING,
        "Requests or tokens a (key, model) has left, as the provider's headers last said, until their reset."
    );
    describe_counter!(TOKENS, "Tokens by provider, model and kind (prompt or completion).");
    describe_counter!(STREAM_CHUNKS, "Frames of streamed answers passed to clients, by provider.");
    describe_counter!(STREAM_BREAKS, "Streams that broke after their headers, by provider and key id.");
    describe_counter!(
        REQUEST_LOG_DROPPED,
        "Request log entries dropped because the writer's queue was full (--enable-request-logging)."
    );
}

/// `2xx`, `4xx`... from a status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Metric handles, resolved once per label set.
///
/// Resolving a handle builds a `metrics::Key`: every label value becomes an
/// owned string and the whole key is hashed into the recorder's registry.
/// Per request that cost more than the rest of the metrics together, so each
/// owner of a bounded label set (a provider's keys and models, the request
/// log's statuses) keeps the handles it resolved. A handle stays bound to the
/// recorder that was current when it was first resolved.
pub(crate) struct HandleCache<K, H> {
    handles: std::sync::Mutex<std::collections::HashMap<K, H, foldhash::fast::RandomState>>,
}

impl<K, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self { handles: Default::default() }
    }
}

impl<K: std::hash::Hash + Eq, H: Clone> HandleCache<K, H> {
    /// The handle for `key`, resolved by `resolve` the first time.
    pub(crate) fn get(&self, key: K, resolve: impl FnOnce(&K) -> H) -> H {
        let mut handles = self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handle) = handles.get(&key) {
            return handle.clone();
        }
        let handle = resolve(&key);
        handles.insert(key, handle.clone());
        handle
    }
}

impl<K, H> std::fmt::Debug for HandleCache<K, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleCache").finish_non_exhaustive()
    }
}
