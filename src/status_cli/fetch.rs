//! Reading a running keyrelay's `GET /v1/keys` into what the table shows,
//! and failures worded for the operator (the server's own 401 message, a
//! connect error), never with the key in them.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header::AUTHORIZATION};
use http_body_util::{BodyExt, Full, Limited};
use keyrelay_layers::{pool::Counters, upstream::HttpsClient};
use serde::Deserialize;

/// How long one read of `/v1/keys` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A pool's status larger than this is not read.
const MAX_BODY: usize = 16 << 20;

/// `GET /v1/keys`, as far as the table needs it; unknown fields are
/// ignored and missing ones default, so an older or newer server still
/// shows.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PoolView {
    #[serde(default)]
    pub data: Vec<KeyRow>,
    /// `pool` (summed over replicas) or `replica` (this server's own).
    #[serde(default)]
    pub counters: String,
}

/// One key of `/v1/keys`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeyRow {
    pub id: String,
    pub provider: String,
    pub state: String,
    pub in_flight: u64,
    pub cooldowns: Vec<Cooldown>,
    pub today: Counters,
}

/// One model cooling on a key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Cooldown {
    pub model: String,
    pub remaining_secs: u64,
}

/// Where the pool is read and with which key.
#[derive(Clone)]
pub struct Source {
    client: HttpsClient,
    /// The server as the operator wrote it, without a trailing `/`.
    shown: String,
    uri: Uri,
    key: Option<String>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("url", &self.shown).finish_non_exhaustive()
    }
}

impl Source {
    /// `url` is the server's base (`http://127.0.0.1:8000`, a trailing
    /// `/` or `/v1` allowed).
    pub fn new(client: HttpsClient, url: &str, key: Option<String>) -> Result<Self, String> {
        let shown = url.trim().trim_end_matches('/').trim_end_matches("/v1").to_owned();
        let uri: Uri = format!("{shown}/v1/keys")
            .parse()
            .map_err(|_| format!("invalid --url `{shown}`: expected e.g. http://127.0.0.1:8000"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(format!("invalid --url `{shown}`: expected e.g. http://127.0.0.1:8000"));
        }
        Ok(Self { client, shown, uri, key: key.filter(|k| !k.trim().is_empty()) })
    }

    /// The server, for headings.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Reads the pool once.
    pub async fn fetch(&self) -> Result<PoolView, String> {
        let answer = tokio::time::timeout(FETCH_TIMEOUT, self.get()).await;
        let result = match answer {
            Err(_) => Err(format!("{} did not answer within {}s", self.shown, FETCH_TIMEOUT.as_secs())),
            Ok(result) => result,
        };
        result.map_err(|message| match &self.key {
            Some(key) if key.len() >= 4 => message.replace(key.as_str(), "[redacted]"),
            _ => message,
        })
    }

    async fn get(&self) -> Result<PoolView, String> {
        let mut req = Request::get(self.uri.clone());
        if let Some(key) = &self.key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|_| "the key holds characters not allowed in a header")?;
        let res =
            self.client.request(req).await.map_err(|err| format!("cannot reach {}: {}", self.shown, chain(&err)))?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|err| format!("cannot read the answer of {}: {err}", self.shown))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|err| format!("{}/v1/keys answered something else than a key list: {err}", self.shown));
        }
        let message = error_message(&body);
        let hint = match (status.as_u16(), &self.key) {
            (401 | 403, None) => " (pass --key, or set PROXY_API_KEY or ADMIN_API_KEY)",
            (401 | 403, Some(_)) => " (check --key, PROXY_API_KEY or ADMIN_API_KEY)",
            _ => "",
        };
        Err(format!("{}/v1/keys answered {status}: {message}{hint}", self.shown))
    }
}

/// The OpenAI-shaped error's message, else the start of the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned())
}

/// hyper's client error says only `client error (Connect)`: the causes say why.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_keys_answer_and_tolerates_missing_fields() {
        let body = br#"{"object":"list","counters":"replica","data":[
            {"id":"openai:1a2b3c4d","provider":"openai","state":"cooling","in_flight":2,
             "cooldowns":[{"model":"gpt-4o-mini","reason":"rate_limit","until_unix_ms":1,"remaining_secs":42}],
             "today":{"requests":5,"successes":3,"failures_rate_limit":2,"tokens_in":100,"tokens_out":7},
             "settings":{"weight":1}},
            {"id":"openai:5e6f7a8b"}]}"#;
        let view: PoolView = serde_json::from_slice(body).unwrap();
        assert_eq!(view.counters, "replica");
        assert_eq!(view.data[0].cooldowns[0].remaining_secs, 42);
        assert_eq!(view.data[0].today.failures(), 2);
        assert_eq!(view.data[1].state, "");
    }

    #[test]
    fn urls_take_a_trailing_slash_or_v1() {
        let client = keyrelay_layers::upstream::build_client(&Default::default()).unwrap();
        for url in ["http://127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/"] {
            let source = Source::new(client.clone(), url, None).unwrap();
            assert_eq!(source.uri, "http://127.0.0.1:8000/v1/keys");
        }
        assert!(Source::new(client, "127.0.0.1:8000", None).is_err());
    }
}
