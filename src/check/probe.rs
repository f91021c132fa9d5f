//! One key against its provider: the cheapest authenticated call each
//! dialect offers (its model list), sent as the proxy would send it (the
//! pool's auth header, the provider's extra headers, the shared upstream
//! client), and what the answer says about the key.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header::ACCEPT};
use http_body_util::{BodyExt, Full, Limited};
use keyrelay_layers::{
    BoxError,
    classify::{FailureClass, PEEK_LIMIT, classify},
    error::redact,
    pool::KeyEntry,
    provider::{Dialect, Provider},
    upstream::HttpsClient,
};
use serde::Serialize;
use tokio::time::Instant;

/// A provider's message is shown this long at most.
const MESSAGE_CHARS: usize = 80;

/// What a check found out about one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The provider took the key.
    Ok,
    /// Refused as a credential (401, 403, or a provider's bad-key answer).
    Invalid,
    /// Out of quota, credit or billing.
    NoQuota,
    /// Rate limited right now (a 429 that is not about quota).
    RateLimited,
    /// No answer: connect error, timeout, or a server error (5xx).
    Unreachable,
    /// The provider answered with a client error this check cannot read
    /// (e.g. a 404: no model list there), so the key is not known usable.
    Unknown,
}

impl Verdict {
    /// The verdict as the table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::NoQuota => "no quota",
            Self::RateLimited => "rate limited",
            Self::Unreachable => "unreachable",
            Self::Unknown => "unknown",
        }
    }

    fn of(class: FailureClass) -> Self {
        match class {
            FailureClass::Credential => Self::Invalid,
            FailureClass::Quota => Self::NoQuota,
            FailureClass::RateLimit => Self::RateLimited,
            FailureClass::Transient => Self::Unreachable,
            FailureClass::Client => Self::Unknown,
        }
    }
}

/// One row of the report: never the secret, only its id.
#[derive(Clone, Debug, Serialize)]
pub struct KeyCheck {
    pub id: String,
    pub provider: String,
    pub verdict: Verdict,
    /// The HTTP status the provider answered, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The provider's own words (redacted, cut to ~80 characters); empty
    /// for a key that works.
    pub message: String,
}

/// The path below the provider's base of its cheapest keyed call. Anthropic
/// and Gemini bases are host only; their lists are paged, one entry is
/// enough. OpenRouter's model list is public (it would pass any key): its
/// key route says whether the key is good.
fn probe_path(provider: &Provider) -> &'static str {
    match provider.dialect() {
        Dialect::Anthropic => "v1/models?limit=1",
        Dialect::Gemini => "v1beta/models?pageSize=1",
        _ if provider.id().as_str() == "openrouter" => "key",
        _ => "models",
    }
}

/// A one-token chat completion for a server with no model list (its
/// `/models` answered 404 or 405): the cheapest call left. `None` when the
/// provider names no model to ask for.
fn minimal_request(provider: &Provider) -> Option<Bytes> {
    let model = provider.models().first()?;
    let body = serde_json::json!({
        "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}],
    });
    Some(Bytes::from(body.to_string()))
}

/// Checks `key` of `provider`, giving up after `timeout`.
pub async fn probe(client: &HttpsClient, provider: &Provider, key: &KeyEntry, timeout: Duration) -> KeyCheck {
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, send(client, provider, key, None)).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (verdict, status, message) = match answer {
        Err(_) => (Verdict::Unreachable, None, format!("no answer within {}s", timeout.as_secs())),
        Ok(Err(err)) => (Verdict::Unreachable, None, error_chain(&*err)),
        Ok(Ok((status, headers, body))) => {
            let no_list = matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
                && provider.dialect() == Dialect::OpenAi;
            match (no_list, minimal_request(provider)) {
                (true, Some(chat)) => {
                    let answer = tokio::time::timeout(timeout, send(client, provider, key, Some(chat))).await;
                    match answer {
                        Err(_) => (Verdict::Unreachable, None, format!("no answer within {}s", timeout.as_secs())),
                        Ok(Err(err)) => (Verdict::Unreachable, None, error_chain(&*err)),
                        Ok(Ok((status, headers, body))) => verdict(status, &headers, &body),
                    }
                }
                (true, None) => (
                    Verdict::Unknown,
                    Some(status.as_u16()),
                    format!(
                        "no model list here; name a model in providers.{}.models to check with a one-token request",
                        provider.id()
                    ),
                ),
                (false, _) => verdict(status, &headers, &body),
            }
        }
    };
    KeyCheck {
        id: key.id().as_str().to_owned(),
        provider: provider.id().as_str().to_owned(),
        verdict,
        status,
        latency_ms,
        message: shown(&message, key.secret().expose()),
    }
}

/// What a classified answer says of the key.
fn verdict(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> (Verdict, Option<u16>, String) {
    match classify(status, headers, body) {
        None => (Verdict::Ok, Some(status.as_u16()), String::new()),
        Some(failure) => (Verdict::of(failure.class), Some(status.as_u16()), provider_message(status, body)),
    }
}

/// The probe's call, or the one-token `chat` when given.
async fn send(
    client: &HttpsClient,
    provider: &Provider,
    key: &KeyEntry,
    chat: Option<Bytes>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), BoxError> {
    let (name, value) = key.auth_header();
    let builder = match chat {
        None => Request::get(provider.api_base().join(probe_path(provider))),
        Some(_) => Request::post(provider.api_base().join("chat/completions"))
            .header(http::header::CONTENT_TYPE, "application/json"),
    };
    let mut req =
        builder.header(name, value).header(ACCEPT, "application/json").body(Full::new(chat.unwrap_or_default()))?;
    for (name, value) in provider.extra_headers() {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let res = client.request(req).await?;
    let (parts, body) = res.into_parts();
    // Only the start of an error body is read to classify it; a model list
    // that is longer than that is still a success.
    let body = match Limited::new(body, PEEK_LIMIT.max(64 * 1024)).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) if parts.status.is_success() => Bytes::new(),
        Err(err) => return Err(err),
    };
    Ok((parts.status, parts.headers, body))
}

/// `error.message` (OpenAI, Anthropic, Gemini), a bare `error` string or a
/// top-level `message`; else the start of the body; else the status.
fn provider_message(status: StatusCode, body: &[u8]) -> String {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let from_json = json.as_ref().and_then(|v| {
        let error = v.get("error");
        error
            .and_then(|e| e.get("message"))
            .or(error.filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    match from_json {
        Some(message) => message,
        None if json.is_none() && !body.is_empty() => {
            String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned()
        }
        None => status.to_string(),
    }
}

/// A connect error's whole chain: hyper's own says only `client error (Connect)`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Redacted (the key, and anything shaped like a key: providers echo
/// them), on one line, cut to [`MESSAGE_CHARS`].
fn shown(message: &str, secret: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let redacted = redact(&one_line, secret);
    match redacted.char_indices().nth(MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", redacted[..cut].trim_end()),
        None => redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_each_dialects_error_shape() {
        let openai = br#"{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}"#;
        assert_eq!(provider_message(StatusCode::UNAUTHORIZED, openai), "Incorrect API key provided");
        let bare = br#"{"error":"quota exceeded"}"#;
        assert_eq!(provider_message(StatusCode::TOO_MANY_REQUESTS, bare), "quota exceeded");
        assert_eq!(provider_message(StatusCode::BAD_GATEWAY, b"upstream down"), "upstream down");
        assert_eq!(provider_message(StatusCode::BAD_GATEWAY, b""), "502 Bad Gateway");
    }

    #[test]
    fn shown_messages_hide_keys_and_stay_short() {
        let secret = "my-own-secret-key-1234";
        let echoed = format!("Incorrect API key provided: {secret}.\n  See sk-proj-abcdefgh1234 too");
        let out = shown(&echoed, secret);
        assert!(!out.contains(secret) && !out.contains("sk-proj"), "{out}");
        assert!(out.starts_with("Incorrect API key provided: [redacted]. See [redacted]"), "{out}");
        let long = "word ".repeat(40);
        assert!(shown(&long, secret).chars().count() <= MESSAGE_CHARS + 3);
    }
}
