//! The metrics the layers emit, through the `metrics` facade only: the
//! library never installs a recorder (the binary does, and serves them).
//! Names are constants here, described by [`describe`]. Labels come from
//! sets the proxy controls: provider ids, key ids, classes, status classes;
//! a model is a label only when the operator named it or the provider
//! listed it, otherwise `other` (model names come from clients).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const REQUESTS: &str = "keyrelay_requests_total";
pub const REQUEST_DURATION: &str = "keyrelay_request_duration_seconds";
pub const TIME_TO_FIRST_BYTE: &str = "keyrelay_time_to_first_byte_seconds";
pub const UPSTREAM_ATTEMPTS: &str = "keyrelay_upstream_attempts_total";
pub const RETRIES: &str = "keyrelay_retries_total";
pub const COOLDOWNS: &str = "keyrelay_cooldowns_total";
pub const KEY_STATE: &str = "keyrelay_key_state";
pub const KEY_IN_FLIGHT: &str = "keyrelay_key_in_flight";
pub const TOKENS: &str = "keyrelay_tokens_total";
pub const STREAM_CHUNKS: &str = "keyrelay_stream_chunks_total";
pub const STREAM_BREAKS: &str = "keyrelay_stream_breaks_total";
/// Emitted by the binary's request log queue, not by a layer.
pub const REQUEST_LOG_DROPPED: &str = "keyrelay_request_log_dropped_total";

/// Buckets for LLM-scale latencies: from 50 ms to 10 minutes.
pub const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Registers descriptions with the installed recorder; call once at start.
pub fn describe() {
    describe_counter!(REQUESTS, "Client requests finished, by provider, model, status class and error kind.");
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
