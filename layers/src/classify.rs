//! What an upstream failure means for the key that met it: pure functions
//! over status, headers and a capped peek at the error body.
//!
//! | class | scope | examples |
//! |---|---|---|
//! | [`FailureClass::Client`] | the request | 400, 404, 409, 413, 415, 422 |
//! | [`FailureClass::RateLimit`] | key x model | 429, "rate limit" bodies |
//! | [`FailureClass::Quota`] | key x model | 402, `insufficient_quota`, "quota exceeded", "credit balance" |
//! | [`FailureClass::Credential`] | key | 401, 403, `invalid_api_key`, "API key not valid" |
//! | [`FailureClass::Transient`] | the attempt | 408, 5xx, 529, connect errors |
//!
//! Retry hints come from `Retry-After` (seconds or an HTTP date),
//! `x-ratelimit-reset-requests` / `-tokens` (`1m30s`, `20ms`), and hints in
//! error bodies (`"retryDelay": "30s"`, "try again in 20s"); every hint is
//! capped at [`MAX_HINT`].
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use keyrelay_layers::classify::{classify, FailureClass};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "7".parse().unwrap());
//! let failure = classify(StatusCode::TOO_MANY_REQUESTS, &headers, b"{}").unwrap();
//! assert_eq!(failure.class, FailureClass::RateLimit);
//! assert_eq!(failure.retry_after.unwrap().as_secs(), 7);
//! ```

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, StatusCode};

/// How much of an error body is read to classify it.
pub const PEEK_LIMIT: usize = 8 * 1024;
/// No hint keeps a key away longer than this.
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// The scope of a failure (see the table in the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The request's own fault: returned as is, nobody penalised.
    Client,
    /// Too many requests for this key and model: cool down, rotate.
    RateLimit,
    /// Out of quota or credit: cool until the reset, rotate.
    Quota,
    /// The key itself is refused: mark it invalid, rotate.
    Credential,
    /// A failure of this attempt only: retry, then rotate.
    Transient,
}

impl FailureClass {
    /// Every class, in declaration order.
    pub const ALL: [Self; 5] = [Self::Client, Self::RateLimit, Self::Quota, Self::Credential, Self::Transient];

    /// The class's name in logs, metrics and the state file (`rate_limit`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::RateLimit => "rate_limit",
            Self::Quota => "quota",
            Self::Credential => "credential",
            Self::Transient => "transient",
        }
    }

    /// The class [`as_str`](Self::as_str) names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified upstream failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What the failure means for the key.
    pub class: FailureClass,
    /// When the provider says to come back, capped at [`MAX_HINT`].
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `class` with no retry hint.
    pub fn new(class: FailureClass) -> Self {
        Self { class, retry_after: None }
    }
}

/// Classifies a response: `None` for a success (2xx, or a 1xx/3xx that is
/// passed on as it is).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Failure> {
    classify_at(status, headers, body, SystemTime::now())
}

/// [`classify`] against a given wall clock, for HTTP-date hints.
pub fn classify_at(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Option<Failure> {
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let body = &body[..body.len().min(PEEK_LIMIT)];
    let class = class_of(status, body);
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    let retry_after = match class {
        FailureClass::RateLimit | FailureClass::Quota | FailureClass::Transient => {
            header_hint(headers, now).or_else(|| body_hint(&text))
        }
        FailureClass::Client | FailureClass::Credential => None,
    };
    Some(Failure { class, retry_after: retry_after.map(|d| d.min(MAX_HINT)) })
}

/// The machine-readable fields of an error body: `error.code`, `error.type`,
/// `error.status`, a top-level `type`, Google's `details[].reason` and
/// `details[].violations[].quotaId`, lower-cased. Unlike messages, which
/// may echo what the client sent (a model name), the client cannot choose
/// these.
fn structured_tokens(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut tokens = Vec::new();
    let mut push = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => tokens.push(s.to_ascii_lowercase()),
        Some(serde_json::Value::Number(n)) => tokens.push(n.to_string()),
        _ => {}
    };
    push(value.get("type"));
    let error = value.get("error").unwrap_or(&value);
    for field in ["code", "type", "status"] {
        push(error.get(field));
    }
    for detail in error.get("details").and_then(|d| d.as_array()).into_iter().flatten() {
        push(detail.get("reason"));
        for violation in detail.get("violations").and_then(|v| v.as_array()).into_iter().flatten() {
            push(violation.get("quotaId"));
        }
    }
    tokens
}

fn class_of(status: StatusCode, body: &[u8]) -> FailureClass {
    const CREDENTIAL: &[&str] =
        &["invalid_api_key", "authentication_error", "permission_error", "api_key_invalid", "invalid_x_api_key"];
    const QUOTA: &[&str] = &["insufficient_quota", "insufficient_credits", "billing_hard_limit_reached"];
    const RATE_LIMIT: &[&str] = &["rate_limit_exceeded", "rate_limit_error", "too_many_requests", "resource_exhausted"];
    let tokens = structured_tokens(body);
    let has = |set: &[&str]| tokens.iter().any(|t| set.contains(&t.as_str()));
    let per_day = tokens.iter().any(|t| t.contains("perday"));
    // Fixed provider phrases; on a 429 a client-chosen model name that
    // mimics one can only change how long that made-up model cools.
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    let says = |phrases: &[&str]| phrases.iter().any(|p| text.contains(p));
    match status.as_u16() {
        401 | 403 => FailureClass::Credential,
        402 => FailureClass::Quota,
        408 => FailureClass::Transient,
        // What the client asked for does not exist or cannot be taken: its
        // own fault, whatever the message repeats.
        404 | 409 | 413 | 415 | 422 => FailureClass::Client,
        429 if has(QUOTA) || per_day => FailureClass::Quota,
        429 if says(&["credit balance", "insufficient credits", "per day", "perday", "daily limit"]) => {
            FailureClass::Quota
        }
        429 => FailureClass::RateLimit,
        // Some providers answer a bad key (Gemini) or no credit (Anthropic) with 400.
        400..=499 if has(CREDENTIAL) => FailureClass::Credential,
        400..=499 if has(QUOTA) || per_day => FailureClass::Quota,
        400..=499 if has(RATE_LIMIT) => FailureClass::RateLimit,
        // A bare plain-text answer (a proxy in front), all of it the phrase.
        400..=499 if matches!(text.trim(), "too many requests" | "rate limit exceeded") => FailureClass::RateLimit,
        400..=499 if error_message(body).is_some_and(|m| m.starts_with("your credit balance is too low")) => {
            FailureClass::Quota
        }
        400..=499 => FailureClass::Client,
        _ => FailureClass::Transient,
    }
}

/// `error.message`, lower-cased.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("error")?.get("message")?.as_str()?.to_ascii_lowercase())
}

fn header_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(hint) = value("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(hint);
    }
    // OpenAI-style: the longer of the request and token windows. Some
    // providers (OpenRouter) send the reset moment as a Unix timestamp.
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"]
        .into_iter()
        .filter_map(|name| value(name).and_then(|v| parse_reset(v, now)))
        .max()
}

/// A reset header: a duration, or a Unix time in seconds or milliseconds.
fn parse_reset(value: &str, now: SystemTime) -> Option<Duration> {
    const SECONDS_EPOCH_FLOOR: f64 = 1e9; // 2001: no delay is this long
    const MILLIS_EPOCH_FLOOR: f64 = 1e12;
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= SECONDS_EPOCH_FLOOR => {
            let unix_secs = if n >= MILLIS_EPOCH_FLOOR { n / 1000.0 } else { n };
            // A moment past what a Duration or the clock can hold is as far
            // as a hint goes (a `from_secs_f64` or `+` there would panic).
            let at = Duration::try_from_secs_f64(unix_secs).ok().and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d));
            Some(at.map_or(MAX_HINT, |at| at.duration_since(now).unwrap_or(Duration::ZERO)))
        }
        _ => parse_duration(value),
    }
}

/// `Retry-After` as delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_HINT.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Go-style durations as rate-limit headers write them: `1m30s`, `20ms`,
/// `6m0.5s`, `1h`, or bare seconds (`2`, `0.5`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_HINT.as_secs_f64())));
    }
    let mut total = 0.0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    total.is_finite().then(|| Duration::from_secs_f64(total.min(MAX_HINT.as_secs_f64())))
}

/// Hints in error bodies: Google's `"retryDelay": "30s"` and
/// `quotaResetDelay`, and "try again in 20s" / "retry after 1m30s" prose.
fn body_hint(body: &str) -> Option<Duration> {
    for key in ["\"retrydelay\"", "\"quotaresetdelay\""] {
        if let Some(at) = body.find(key) {
            let rest = &body[at + key.len()..];
            let rest = rest.trim_start_matches(|c: char| c == ':' || c.is_whitespace() || c == '"');
            let end = rest.find('"').unwrap_or(rest.len());
            if let Some(d) = parse_duration(&rest[..end]) {
                return Some(d);
            }
        }
    }
    for phrase in ["try again in ", "retry after ", "retry in "] {
        if let Some(at) = body.find(phrase) {
            let rest = &body[at + phrase.len()..];
            let token: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect::<String>();
            let token = token.trim_end_matches('.');
            if let Some(d) = parse_duration(token) {
                return Some(d);
            }
            // "try again in 20 seconds"
            let words: Vec<&str> = rest.split_whitespace().take(2).collect();
            if let [n, unit] = words[..] {
                // `parse` takes "nan" and "inf" too: not a number of seconds.
                let n: f64 = n.parse().ok().filter(|n: &f64| n.is_finite())?;
                let scale = match unit.trim_end_matches(['.', ',']) {
                    u if u.starts_with("second") => 1.0,
                    u if u.starts_with("minute") => 60.0,
                    u if u.starts_with("hour") => 3600.0,
                    u if u.starts_with("millisecond") => 0.001,
                    _ => return None,
                };
                return Some(Duration::from_secs_f64((n * scale).clamp(0.0, MAX_HINT.as_secs_f64())));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    fn class(status: u16, body: &str) -> Option<FailureClass> {
        classify(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body.as_bytes()).map(|f| f.class)
    }

    #[test]
    fn classes_follow_the_design_table() {
        use FailureClass::*;
        let table: &[(u16, &str, Option<FailureClass>)] = &[
            (200, "", None),
            (204, "", None),
            (304, "", None),
            (400, r#"{"error":{"message":"context too long","code":"context_length_exceeded"}}"#, Some(Client)),
            (404, r#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#, Some(Client)),
            (409, "", Some(Client)),
            (413, "", Some(Client)),
            (415, "", Some(Client)),
            (422, "", Some(Client)),
            (429, r#"{"error":{"type":"requests","code":"rate_limit_exceeded"}}"#, Some(RateLimit)),
            (
                429,
                r#"{"error":{"message":"Rate limit reached for gpt-4o on tokens per min (TPM). Please try again in 2s. You can increase your rate limit by adding a payment method at https://platform.openai.com/account/billing.","code":"rate_limit_exceeded"}}"#,
                Some(RateLimit),
            ),
            (429, r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#, Some(Quota)),
            (
                429,
                r#"{"error":{"status":"RESOURCE_EXHAUSTED","message":"Quota exceeded for metric ... PerDay"}}"#,
                Some(Quota),
            ),
            (402, "", Some(Quota)),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
                Some(Quota),
            ),
            (401, r#"{"error":{"code":"invalid_api_key"}}"#, Some(Credential)),
            (403, "", Some(Credential)),
            (
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#,
                Some(Credential),
            ),
            (408, "", Some(Transient)),
            (500, "", Some(Transient)),
            (502, "", Some(Transient)),
            (503, "", Some(Transient)),
            (529, r#"{"type":"error","error":{"type":"overloaded_error"}}"#, Some(Transient)),
        ];
        for (status, body, expected) in table {
            assert_eq!(class(*status, body), *expected, "{status} {body}");
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0.5", now), Some(Duration::from_millis(500)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999999", now), Some(MAX_HINT));
    }

    #[test]
    fn go_style_durations() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("1m30s", Some(ms(90_000))),
            ("20ms", Some(ms(20))),
            ("6m0.5s", Some(ms(360_500))),
            ("1h", Some(ms(3_600_000))),
            ("2", Some(ms(2000))),
            ("0.25s", Some(ms(250))),
            ("", None),
            ("s", None),
            ("5 parsecs", None),
            ("1x", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text}");
        }
        assert_eq!(parse_duration("99999h"), Some(MAX_HINT));
    }

    #[test]
    fn hints_from_headers_prefer_retry_after_then_the_longest_reset() {
        let f = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s")]),
            b"",
        )
        .unwrap();
        assert_eq!(f.retry_after, Some(Duration::from_secs(360)));
        let f = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "3"), ("x-ratelimit-reset-tokens", "6m0s")]),
            b"",
        )
        .unwrap();
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn hints_from_bodies() {
        let hint = |body: &str| {
            classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body.as_bytes()).unwrap().retry_after
        };
        assert_eq!(
            hint(r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34s"}]}}"#),
            Some(Duration::from_secs(34))
        );
        assert_eq!(
            hint(r#"{"error":{"message":"Rate limit reached for gpt-4o. Please try again in 1.5s. Visit ..."}}"#),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(hint("Please try again in 20 seconds."), Some(Duration::from_secs(20)));
        assert_eq!(hint("slow down"), None);
    }

    #[test]
    fn credential_failures_carry_no_hint_and_the_peek_is_capped() {
        let f = classify(StatusCode::UNAUTHORIZED, &headers(&[("retry-after", "5")]), b"").unwrap();
        assert_eq!(f.retry_after, None);
        let mut long = vec![b' '; PEEK_LIMIT];
        long.extend_from_slice(b"insufficient_quota");
        assert_eq!(class(429, std::str::from_utf8(&long).unwrap()), Some(FailureClass::RateLimit));
    }
}
