//! Shared harness for keyrelay's end-to-end tests.
//!
//! - [`mock`]: an upstream on `127.0.0.1:0` that speaks OpenAI's,
//!   Anthropic's or Gemini's wire format (chat whole and streamed,
//!   embeddings, model lists, each provider's auth header and error
//!   bodies), records every request it sees and can be scripted per
//!   request or per pool key with the same faults for every dialect
//!   (status + headers + body, 429 with or without `Retry-After`, 5xx,
//!   hang, stall, close, reset, held, slow, gated or broken stream),
//!   counting requests in flight per key.
//! - [`proxy`]: keyrelay itself, in process, on `127.0.0.1:0`, configured
//!   from an explicit environment and an empty temporary working directory
//!   (so a developer's `.env` or `config.toml` is never read).
//! - [`client`]: a small hyper client (HTTP/1.1 or h2c) and readers for
//!   whole bodies, OpenAI error bodies and SSE streams.
//! - [`sdk`]: answers checked the way the OpenAI SDK reads them (chat
//!   completions, streams folded chunk by chunk, embeddings).
//! - [`binary`]: the real keyrelay binary as a child process;
//!   [`replicas`]: several of them sharing one Redis ([`redis`]), each
//!   with its own working and data dir.
//! - [`postgres`]: a real PostgreSQL of its own (initdb in a temporary
//!   directory, a free loopback port), stopped on drop.
//! - [`store`]: keyrelay's database read as an operator would (ledger
//!   rows, the pool's saved state).
//! - [`browser`]: a real headless Chromium driven over the DevTools
//!   protocol (the dashboard's tests).
//!
//! Every wait is bounded by [`WAIT`], so a bug fails a test instead of
//! hanging it. Nothing here reaches the network beyond loopback.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod browser;
pub mod client;
pub mod mock;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod replicas;
pub mod sdk;
pub mod store;

use std::{future::Future, time::Duration};

pub use self::{
    client::{Auth, Reply, SseReader, TestClient, assert_openai_error, chunked, get, post, request},
    mock::{
        Dialect, Gate, INVALID_REQUEST, KEY_PLACEHOLDER, MockUpstream, Recorded, Script, Then, Valve, chat_completion,
        dialect_env, key_id_of, stream_events,
    },
    proxy::{Proxy, openai_env},
};

/// The error type of bodies built here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for any single wait in a test: far above what a healthy run
/// needs, short enough that a hang fails fast.
pub const WAIT: Duration = Duration::from_secs(10);

/// The key clients present to the proxy.
pub const PROXY_KEY: &str = "proxy-SECRET-key";
/// Upstream pool keys; each is distinctive so that a leak is easy to spot.
pub const KEY_ONE: &str = "sk-test-SECRET-one-1111";
pub const KEY_TWO: &str = "sk-test-SECRET-two-2222";
pub const KEY_THREE: &str = "sk-test-SECRET-three-3333";
/// Anthropic pool keys.
pub const ANTHROPIC_KEY_ONE: &str = "sk-ant-api03-SECRET-one-aaaa";
pub const ANTHROPIC_KEY_TWO: &str = "sk-ant-api03-SECRET-two-bbbb";
/// Gemini pool keys.
pub const GEMINI_KEY_ONE: &str = "AIzaSy-SECRET-gemini-one-cccc";
pub const GEMINI_KEY_TWO: &str = "AIzaSy-SECRET-gemini-two-dddd";
/// The key of a custom (`LOCAL_API_BASE`) provider.
pub const LOCAL_KEY: &str = "local-SECRET-key-4444";
/// A key a client might mistakenly send along (its own OpenAI key).
pub const CLIENT_OWN_KEY: &str = "sk-client-own-SECRET-5555";
/// The admin key (`ADMIN_API_KEY`), when a test sets one.
pub const ADMIN_KEY: &str = "admin-SECRET-key-6666";

/// Every secret the tests configure. None of them may ever appear in a
/// response body, a status route or the binary's output; all contain
/// `SECRET`, which no legitimate output does.
pub const SECRETS: &[&str] = &[
    PROXY_KEY,
    KEY_ONE,
    KEY_TWO,
    KEY_THREE,
    ANTHROPIC_KEY_ONE,
    ANTHROPIC_KEY_TWO,
    GEMINI_KEY_ONE,
    GEMINI_KEY_TWO,
    LOCAL_KEY,
    CLIENT_OWN_KEY,
    ADMIN_KEY,
];

/// Fails if `text` shows any configured secret.
#[track_caller]
pub fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows the secret {secret:?}:\n{text}");
    }
    assert!(!text.contains("SECRET"), "{what} shows part of a secret:\n{text}");
}

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A loopback port nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// A chat request body for `model`, formatted like an SDK would send it.
pub fn chat_body(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello"}}],"stream":{stream}}}"#)
}

/// The id the proxy shows for an `openai` pool key: `openai:` plus the
/// first 8 hex digits of the key's SHA-256.
pub fn key_id(secret: &str) -> String {
    key_id_of("openai", secret)
}

/// `GET /v1/keys` with `auth`, checked (200, JSON, no secret), as a map
/// from key id to its status object.
pub async fn keys_by_id(
    client: &TestClient,
    proxy: &Proxy,
    auth: Auth<'_>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let reply = client.fetch(get(&proxy.url("/v1/keys"), auth)).await;
    assert_eq!(reply.status, 200, "GET /v1/keys: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret("GET /v1/keys", reply.text());
    reply.json()["data"]
        .as_array()
        .expect("a key list")
        .iter()
        .map(|k| (k["id"].as_str().expect("an id").to_owned(), k.clone()))
        .collect()
}

/// Polls `check` every few milliseconds until it holds, failing the test
/// after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The daily reset every in-process proxy of this test binary uses: the
/// time of day twelve hours after the binary started, so that no reset (and
/// no cooldown cut short by one) falls inside a test, whatever the hour.
#[allow(dead_code)]
pub fn test_daily_reset() -> Duration {
    static RESET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_secs(*RESET.get_or_init(|| (unix_now() % 86_400 + 43_200) % 86_400))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Seconds from now to the next [`test_daily_reset`].
#[allow(dead_code)]
pub fn secs_to_daily_reset() -> u64 {
    let (reset, time_of_day) = (test_daily_reset().as_secs(), unix_now() % 86_400);
    match (reset + 86_400 - time_of_day) % 86_400 {
        0 => 86_400,
        secs => secs,
    }
}

/// What a rate-limit hint of `secs` leaves as a cooldown: keyrelay ends
/// rate-limit and quota cooldowns at the daily reset.
#[allow(dead_code)]
pub fn capped_at_midnight(secs: u64) -> u64 {
    secs.min(secs_to_daily_reset())
}

/// Whether `got` is within `slack` seconds below the capped `hint`.
#[allow(dead_code)]
pub fn near_capped(got: u64, hint: u64, slack: u64) -> bool {
    let want = capped_at_midnight(hint);
    got <= want && got + slack >= want
}

/// SplitMix64's finaliser: a tiny, good mixer for seeded, reproducible
/// fault plans (the soak and chaos tests).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A random number that is a function of `seed` and `parts` only, so it
/// does not depend on which request wins a race.
pub fn draw(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(seed, |h, &p| mix(h ^ p))
}

/// The seed in the environment variable `var` (to replay a failure), else
/// `default`.
pub fn seed_from(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
