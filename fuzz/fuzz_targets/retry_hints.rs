//! An upstream failure as RetryRotate classifies it: `classify::classify_at`
//! (status + headers + error-body peek -> failure class + retry hint), and
//! the hint parsers it uses.
//!
//! Input, shaped like an HTTP response head so that seeds stay readable:
//!
//! ```text
//! 429 1750000000            <- status, then optionally "now" in Unix seconds
//! retry-after: 7            <- header lines (invalid names or values are skipped)
//! x-ratelimit-reset-tokens: 6m0s
//!                           <- a blank line
//! {"error": {...}}          <- the body, any bytes
//! ```
//!
//! Asserts: no panic; a hint is at most `MAX_HINT` (24 h), as the module
//! documents; only 4xx/5xx are failures; client and credential failures
//! carry no hint; `parse_duration` caps at `MAX_HINT` too.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keyrelay_layers::classify::{FailureClass, MAX_HINT, classify_at, parse_duration, parse_retry_after};
use libfuzzer_sys::fuzz_target;

/// Used when the first line names no "now".
const DEFAULT_NOW: u64 = 1_750_000_000;

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, mut rest) = split_line(data);
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_ascii_whitespace();
    let Some(status) = words.next().and_then(|s| s.parse::<u16>().ok()) else { return };
    let Ok(status) = StatusCode::from_u16(status) else { return };
    let now_secs = words.next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(DEFAULT_NOW);
    // Any time the system clock can show (up to the year ~36812).
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs % (1 << 40));

    let mut headers = HeaderMap::new();
    let mut values = Vec::new();
    loop {
        let (line, after) = split_line(rest);
        rest = after;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else { continue };
        if let Ok(text) = value.to_str() {
            values.push(text.to_owned());
        }
        headers.append(name, value);
    }
    let body = rest;

    let failure = classify_at(status, &headers, body, now);
    let is_failure = status.is_client_error() || status.is_server_error();
    assert_eq!(failure.is_some(), is_failure, "{status}");
    if let Some(failure) = failure {
        if let Some(wait) = failure.retry_after {
            assert!(wait <= MAX_HINT, "{status}: a hint of {wait:?}");
        }
        if matches!(failure.class, FailureClass::Client | FailureClass::Credential) {
            assert_eq!(failure.retry_after, None, "{status} {:?}", failure.class);
        }
        // Pure: the same answer twice.
        assert_eq!(classify_at(status, &headers, body, now), Some(failure));
    }

    // The parsers alone, on every header value and on the body as text.
    let body_text = String::from_utf8_lossy(body);
    for value in values.iter().map(String::as_str).chain([body_text.as_ref()]) {
        if let Some(wait) = parse_duration(value) {
            assert!(wait <= MAX_HINT, "parse_duration({value:?}) = {wait:?}");
        }
        if let Some(wait) = parse_retry_after(value, now) {
            // Delay seconds are capped; an HTTP date is taken as it is.
            assert!(
                wait <= MAX_HINT || httpdate::parse_http_date(value).is_ok(),
                "parse_retry_after({value:?}) = {wait:?}"
            );
        }
    }
});
