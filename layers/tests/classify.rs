//! Classification against the error answers real providers send (OpenAI,
//! Anthropic, Gemini, Groq, OpenRouter, Mistral, DeepSeek): class and retry
//! hint, per DESIGN's table. The inline tests in `classify.rs` cover the
//! parsers; these cover whole answers, and text a client controls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use keyrelay_layers::classify::{Failure, FailureClass, MAX_HINT, classify_at};

use FailureClass::*;

/// 2026-01-01 12:00:00 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_268_800)
}

fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Failure {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, value.parse().unwrap());
    }
    classify_at(StatusCode::from_u16(status).unwrap(), &map, body.as_bytes(), now()).expect("a failure")
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

struct Row {
    who: &'static str,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    class: FailureClass,
    hint: Option<Duration>,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            who: "openai tokens per minute",
            status: 429,
            headers: &[("x-ratelimit-reset-requests", "120ms"), ("x-ratelimit-reset-tokens", "4.2s")],
            body: r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 28000, Requested 4000. Please try again in 4.2s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
            class: RateLimit,
            hint: ms(4200),
        },
        Row {
            who: "openai insufficient quota",
            status: 429,
            headers: &[],
            body: r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            class: Quota,
            hint: None,
        },
        Row {
            who: "openai bad key",
            status: 401,
            headers: &[],
            body: r#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            class: Credential,
            hint: None,
        },
        Row {
            who: "openai unknown model",
            status: 404,
            headers: &[],
            body: r#"{"error":{"message":"The model `gpt-5-turbo` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
            class: Client,
            hint: None,
        },
        Row {
            who: "openai context too long",
            status: 400,
            headers: &[],
            body: r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            class: Client,
            hint: None,
        },
        Row {
            who: "openai server error",
            status: 500,
            headers: &[],
            body: r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
            class: Transient,
            hint: None,
        },
        Row {
            who: "openai overloaded",
            status: 503,
            headers: &[],
            body: r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error"}}"#,
            class: Transient,
            hint: None,
        },
        Row {
            who: "anthropic rate limit",
            status: 429,
            headers: &[("retry-after", "30")],
            body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50,000 input tokens per minute."}}"#,
            class: RateLimit,
            hint: ms(30_000),
        },
        Row {
            who: "anthropic overloaded",
            status: 529,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            class: Transient,
            hint: None,
        },
        Row {
            who: "anthropic bad key",
            status: 401,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            class: Credential,
            hint: None,
        },
        Row {
            who: "anthropic no credit",
            status: 400,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
            class: Quota,
            hint: None,
        },
        Row {
            who: "anthropic prompt too long",
            status: 400,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
            class: Client,
            hint: None,
        },
        Row {
            who: "anthropic request too large",
            status: 413,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#,
            class: Client,
            hint: None,
        },
        Row {
            who: "anthropic permission",
            status: 403,
            headers: &[],
            body: r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
            class: Credential,
            hint: None,
        },
        Row {
            who: "gemini bad key",
            status: 400,
            headers: &[],
            body: r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
            class: Credential,
            hint: None,
        },
        Row {
            who: "gemini per-day quota",
            status: 429,
            headers: &[],
            body: r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Generate Content API requests per day' and limit 'GenerateContent request limit per day' of service 'generativelanguage.googleapis.com'.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3600s"}]}}"#,
            class: Quota,
            hint: ms(3_600_000),
        },
        Row {
            who: "gemini overloaded",
            status: 503,
            headers: &[],
            body: r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
            class: Transient,
            hint: None,
        },
        Row {
            who: "gemini bad request",
            status: 400,
            headers: &[],
            body: r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"foo\": Cannot find field.","status":"INVALID_ARGUMENT"}}"#,
            class: Client,
            hint: None,
        },
        Row {
            who: "gemini api disabled",
            status: 403,
            headers: &[],
            body: r#"{"error":{"code":403,"message":"Generative Language API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED"}}"#,
            class: Credential,
            hint: None,
        },
        Row {
            who: "groq tokens per minute, header over body",
            status: 429,
            headers: &[("retry-after", "7")],
            body: r#"{"error":{"message":"Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01` service tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 5000, Requested 2000. Please try again in 6.5s.","type":"tokens","code":"rate_limit_exceeded"}}"#,
            class: RateLimit,
            hint: ms(7000),
        },
        Row {
            who: "groq requests per day",
            status: 429,
            headers: &[],
            body: r#"{"error":{"message":"Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01` on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in 1h2m3s.","type":"requests","code":"rate_limit_exceeded"}}"#,
            class: Quota,
            hint: ms(3_723_000),
        },
        Row {
            who: "openrouter no credits",
            status: 402,
            headers: &[],
            body: r#"{"error":{"message":"Insufficient credits. Add more using https://openrouter.ai/credits","code":402}}"#,
            class: Quota,
            hint: None,
        },
        Row {
            who: "openrouter upstream rate limit",
            status: 429,
            headers: &[],
            body: r#"{"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"google/gemma-3-27b-it:free is temporarily rate-limited upstream. Please retry shortly.","provider_name":"Google AI Studio"}}}"#,
            class: RateLimit,
            hint: None,
        },
        Row {
            who: "mistral",
            status: 429,
            headers: &[],
            body: r#"{"message":"Requests rate limit exceeded"}"#,
            class: RateLimit,
            hint: None,
        },
        Row {
            who: "deepseek no balance",
            status: 402,
            headers: &[],
            body: r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
            class: Quota,
            hint: None,
        },
        Row {
            who: "a proxy in front that answers 400 rate limited",
            status: 400,
            headers: &[],
            body: "Too Many Requests",
            class: RateLimit,
            hint: None,
        },
        Row {
            who: "request timeout",
            status: 408,
            headers: &[("retry-after", "2")],
            body: "",
            class: Transient,
            hint: ms(2000),
        },
    ]
}

#[test]
fn real_provider_answers_get_their_class_and_hint() {
    let mut wrong = Vec::new();
    for row in rows() {
        let failure = answer(row.status, row.headers, row.body);
        if (failure.class, failure.retry_after) != (row.class, row.hint) {
            wrong.push(format!("{}: got {failure:?}, want {:?} {:?}", row.who, row.class, row.hint));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_gemini_per_minute_limit_keeps_its_retry_delay() {
    // Gemini says "exceeded your current quota" for per-minute limits too;
    // whatever the class, the key must be back when Google says.
    let body = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
    let failure = answer(429, &[], body);
    assert!(matches!(failure.class, RateLimit | Quota), "{failure:?}");
    assert_eq!(failure.retry_after, ms(37_000));
}

#[test]
fn successes_and_redirects_are_not_failures() {
    for status in [200, 201, 204, 301, 304] {
        let got = classify_at(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), b"rate limit", now());
        assert_eq!(got, None, "{status}");
    }
}

#[test]
fn hints_are_capped_and_an_http_date_counts_from_now() {
    let date = httpdate::fmt_http_date(now() + Duration::from_secs(95));
    assert_eq!(answer(429, &[("retry-after", &date)], "").retry_after, ms(95_000));
    assert_eq!(answer(429, &[("retry-after", "999999999")], "").retry_after, Some(MAX_HINT));
    assert_eq!(answer(503, &[("retry-after", "garbage")], "").retry_after, None);
}

/// Some providers (OpenRouter among them) send `X-RateLimit-Reset` as the
/// instant the window resets, in Unix milliseconds or seconds, not as a
/// delay. Read as a delay it becomes the 24 h cap, and a per-minute limit
/// benches the key until the daily reset.
#[test]
fn a_reset_header_holding_a_unix_timestamp_counts_from_now() {
    let in_30s_ms = (1_767_268_800u64 + 30) * 1000;
    let failure = answer(429, &[("x-ratelimit-reset", &in_30s_ms.to_string())], "");
    assert_eq!(failure.retry_after, ms(30_000), "Unix milliseconds");
    let failure = answer(429, &[("x-ratelimit-reset", &(1_767_268_800u64 + 30).to_string())], "");
    assert_eq!(failure.retry_after, ms(30_000), "Unix seconds");
}

/// A 4xx that echoes what the client sent (OpenAI's `model_not_found`
/// quotes the model name) must not be read as a verdict on the key: a
/// client asking for a model named `invalid_api_key` would otherwise get
/// every key of the provider marked invalid for everyone (rotation walks the
/// whole pool), and one named `rate_limit` would pause the provider.
#[test]
fn text_the_client_controls_does_not_classify_a_client_error() {
    for model in ["invalid_api_key", "api key not valid", "authentication_error", "insufficient_quota", "rate_limit"] {
        let body = serde_json::json!({"error": {
            "message": format!("The model `{model}` does not exist or you do not have access to it."),
            "type": "invalid_request_error", "param": null, "code": "model_not_found"
        }})
        .to_string();
        assert_eq!(answer(404, &[], &body).class, Client, "{model}");
        let vllm = format!(
            r#"{{"object":"error","message":"The model `{model}` does not exist.","type":"NotFoundError","code":404}}"#
        );
        assert_eq!(answer(404, &[], &vllm).class, Client, "{model} (vLLM)");
    }
}

/// Found by fuzzing (fuzz/fuzz_targets/retry_hints.rs): a reset "moment"
/// too far out for a `Duration` or the clock panicked in
/// `Duration::from_secs_f64` / `SystemTime + Duration`; it is the longest
/// hint instead.
#[test]
fn a_reset_moment_beyond_the_clock_is_the_longest_hint_not_a_panic() {
    for value in ["175000006000050000060001", "1e300", "1.7976931348623157e308", "18446744073709551616"] {
        assert_eq!(answer(429, &[("x-ratelimit-reset", value)], "").retry_after, Some(MAX_HINT), "{value}");
    }
}

/// Found while writing the `retry_hints` fuzz target (its assertion covers
/// it; a seed keeps it in the corpus): "try again in NaN seconds" parsed
/// `NaN` as a number, and `Duration::from_secs_f64(NaN)` panicked. Not a
/// number is no hint.
#[test]
fn a_prose_hint_that_is_not_a_number_is_no_hint_not_a_panic() {
    for body in ["Please try again in NaN seconds.", "retry after nan minutes", "retry in -inf hours"] {
        let failure = answer(429, &[], body);
        assert!(failure.retry_after.is_none_or(|d| d <= MAX_HINT), "{body}: {failure:?}");
    }
    assert_eq!(answer(429, &[], "retry in nan seconds").retry_after, None);
}
