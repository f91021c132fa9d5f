//! Session stickiness without a network: Parse finds the session, KeySelect
//! keeps it on one key while that key can take it, and moves it (for good)
//! when it cannot.

mod support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use keyrelay_layers::{
    BoxError,
    body::LeasedBody,
    classify::{Failure, FailureClass},
    extensions::{Endpoint, PinnedKey, RouteTarget},
    parse::ParseLayer,
    pool::{Affinity, KeyId, KeyLease, KeyPool, KeySettings, ProviderOptions, Secret, Selection},
    provider::ProviderId,
    select::KeySelectLayer,
};
use tower::{Layer, ServiceExt, service_fn};

use support::{NOWHERE, in_flight, key_id, openai, pool, secrets, secs, within};

const MODEL: &str = "gpt-4o";

type Held = Response<LeasedBody<Empty<Bytes>>>;

fn request(session: Option<&str>) -> Request<()> {
    let mut target = RouteTarget::new(ProviderId::new("openai"), MODEL, Endpoint::ChatCompletions, false);
    if let Some(session) = session {
        target = target.with_session(session.into());
    }
    let mut req = Request::new(());
    req.extensions_mut().insert(target);
    req
}

/// Sends `req` through KeySelect; the key it got, and the response that
/// keeps it in flight until dropped.
async fn send(pool: &Arc<KeyPool>, req: Request<()>) -> (KeyId, Held) {
    let inner = service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) });
    let res = within(KeySelectLayer::new(pool.clone()).layer(inner).oneshot(req)).await.unwrap();
    let key = res.extensions().get::<KeyLease>().expect("the answer names its key").key_id().clone();
    (key, res)
}

/// The key one request of `session` gets (the response dropped at once).
async fn key_of(pool: &Arc<KeyPool>, session: Option<&str>) -> KeyId {
    send(pool, request(session)).await.0
}

fn index_of(pool: &KeyPool, key: &KeyId) -> usize {
    pool.key(key.as_str()).expect("a key of the pool").1
}

fn rate_limit(pool: &KeyPool, key: &KeyId) {
    let provider = pool.provider("openai").unwrap();
    provider.record(index_of(pool, key), MODEL, Err(Failure::new(FailureClass::RateLimit)));
}

fn pool_with(options: ProviderOptions, keys: &[&str]) -> Arc<KeyPool> {
    KeyPool::builder().provider_with(openai(NOWHERE), options, secrets(keys)).build().unwrap()
}

#[tokio::test]
async fn a_session_stays_on_its_key_while_the_others_are_idle() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(send(&pool, request(Some("chat-1"))).await);
    }
    let first = held[0].0.clone();
    assert!(held.iter().all(|(key, _)| *key == first), "every turn on one key");
    let mut counts = in_flight(&pool, "openai");
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 5], "least_used alone would have spread them");
    // Another session, and an unsigned request, go where the load says.
    let (other, _held) = send(&pool, request(Some("chat-2"))).await;
    assert_ne!(other, first);
    assert_ne!(key_of(&pool, None).await, first);
}

#[tokio::test]
async fn requests_without_a_signal_are_balanced_as_before() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(send(&pool, request(None)).await);
    }
    assert_eq!(in_flight(&pool, "openai"), [2, 2, 2]);
    assert!(pool.provider("openai").unwrap().sessions().is_empty(), "nothing remembered");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_key_loses_its_session_and_the_session_stays_moved() {
    let pool = pool(Selection::RoundRobin, &["k1", "k2", "k3"]);
    let first = key_of(&pool, Some("chat-1")).await;
    rate_limit(&pool, &first);
    let moved = key_of(&pool, Some("chat-1")).await;
    assert_ne!(moved, first, "its key is cooling");
    for _ in 0..3 {
        assert_eq!(key_of(&pool, Some("chat-1")).await, moved);
    }
    // The cooldown ends: the session stays where its cache now is.
    tokio::time::advance(secs(301)).await;
    assert_eq!(pool.provider("openai").unwrap().earliest_cooldown(MODEL), None);
    for _ in 0..3 {
        assert_eq!(key_of(&pool, Some("chat-1")).await, moved);
    }
}

#[tokio::test]
async fn a_disabled_key_loses_its_session_for_good() {
    let pool = pool(Selection::RoundRobin, &["k1", "k2"]);
    let first = key_of(&pool, Some("chat-1")).await;
    assert!(pool.set_disabled(first.as_str(), true));
    let moved = key_of(&pool, Some("chat-1")).await;
    assert_ne!(moved, first);
    assert!(pool.set_disabled(first.as_str(), false));
    for _ in 0..3 {
        assert_eq!(key_of(&pool, Some("chat-1")).await, moved);
    }
}

#[tokio::test]
async fn a_full_key_passes_its_session_on() {
    let pool = pool_with(ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(1), &["k1", "k2"]);
    let first = key_of(&pool, Some("chat-1")).await;
    // KeyConcurrency holds the slot in the stack; here, the test does.
    let slots = pool.provider("openai").unwrap().slots(index_of(&pool, &first), MODEL).unwrap();
    let permit = slots.try_acquire_owned().unwrap();
    let moved = key_of(&pool, Some("chat-1")).await;
    assert_ne!(moved, first);
    drop(permit);
    assert_eq!(key_of(&pool, Some("chat-1")).await, moved);
}

#[tokio::test(start_paused = true)]
async fn priority_tiers_come_before_the_session() {
    let keys = vec![(Secret::new("free"), KeySettings::new()), (Secret::new("paid"), KeySettings::new().priority(1))];
    let pool = KeyPool::builder().provider_keys(openai(NOWHERE), ProviderOptions::default(), keys).build().unwrap();
    let (free, paid) = (key_id("openai", "free"), key_id("openai", "paid"));
    assert_eq!(key_of(&pool, Some("chat-1")).await, free);
    rate_limit(&pool, &free);
    assert_eq!(key_of(&pool, Some("chat-1")).await, paid, "spilled into the paid tier");
    assert_eq!(key_of(&pool, Some("chat-1")).await, paid);
    tokio::time::advance(secs(11)).await;
    assert_eq!(key_of(&pool, Some("chat-1")).await, free, "back to the free tier once it can serve");
}

#[tokio::test]
async fn a_same_key_retry_pin_still_wins_and_rebinds_the_session() {
    let pool = pool(Selection::RoundRobin, &["k1", "k2"]);
    let first = key_of(&pool, Some("chat-1")).await;
    let other = if first == key_id("openai", "k1") { key_id("openai", "k2") } else { key_id("openai", "k1") };
    let mut pinned = request(Some("chat-1"));
    pinned.extensions_mut().insert(PinnedKey(other.clone()));
    assert_eq!(send(&pool, pinned).await.0, other);
    assert_eq!(key_of(&pool, Some("chat-1")).await, other);
}

#[tokio::test(start_paused = true)]
async fn a_silent_session_is_forgotten_after_its_ttl() {
    let options = ProviderOptions::new(Selection::LeastUsed).affinity_ttl(secs(60));
    let pool = pool_with(options, &["k1", "k2"]);
    let first = key_of(&pool, Some("chat-1")).await;
    tokio::time::advance(secs(59)).await;
    assert_eq!(key_of(&pool, Some("chat-1")).await, first, "refreshed");
    tokio::time::advance(secs(61)).await;
    // Forgotten: least_used sends it to the key with fewer requests.
    assert_ne!(key_of(&pool, Some("chat-1")).await, first);
}

#[tokio::test]
async fn affinity_none_balances_sessions_too() {
    let pool = pool_with(ProviderOptions::new(Selection::RoundRobin).affinity(Affinity::None), &["k1", "k2"]);
    let a = key_of(&pool, Some("chat-1")).await;
    let b = key_of(&pool, Some("chat-1")).await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn sessions_keep_their_keys_over_a_reload() {
    let old = pool(Selection::RoundRobin, &["k1", "k2"]);
    let first = key_of(&old, Some("chat-1")).await;
    let new = KeyPool::builder()
        .carry_over(old.clone())
        .provider(openai(NOWHERE), Selection::RoundRobin, secrets(&["k0", "k1", "k2"]))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(key_of(&new, Some("chat-1")).await, first);
    }
}

/// The session Parse finds for a request with these headers and body.
async fn parsed_session(path: &str, headers: &[(&str, &str)], body: &str) -> Option<String> {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let svc = ParseLayer::new(pool, 1 << 20).layer(service_fn(|req: Request<Bytes>| async move {
        let target = req.extensions().get::<RouteTarget>().unwrap();
        Ok::<_, BoxError>(target.session().map(str::to_owned))
    }));
    let mut req = Request::post(path);
    for &(name, value) in headers {
        req = req.header(name, value);
    }
    within(svc.oneshot(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())).await.unwrap()
}

#[tokio::test]
async fn parse_takes_the_session_header_first_then_the_agents_then_the_body() {
    let chat = r#"{"model": "openai/gpt-4o", "prompt_cache_key": "cache-key", "messages": []}"#;
    let path = "/v1/chat/completions";
    assert_eq!(parsed_session(path, &[], chat).await.as_deref(), Some("cache-key"));
    assert_eq!(parsed_session(path, &[("session_id", "codex")], chat).await.as_deref(), Some("codex"));
    let both = [("session_id", "codex"), ("x-session-id", "own")];
    assert_eq!(parsed_session(path, &both, chat).await.as_deref(), Some("own"));
    let plain = r#"{"model": "openai/gpt-4o", "messages": [], "metadata": {"user_id": "u"}}"#;
    assert_eq!(parsed_session(path, &[], plain).await, None, "metadata counts on Anthropic's routes only");

    let responses = r#"{"model": "gpt-4o", "input": "hi", "prompt_cache_key": "019a-conversation"}"#;
    assert_eq!(parsed_session("/v1/responses", &[], responses).await.as_deref(), Some("019a-conversation"));

    let user_id = "user_5dd07c33_account_9f2e_session_d2e70091-3007-41a3-a916-cb8b0d3098de";
    let claude = format!(
        r#"{{"model": "openai/gpt-4o", "max_tokens": 8, "messages": [], "metadata": {{"user_id": "{user_id}"}}}}"#
    );
    let session = Some("d2e70091-3007-41a3-a916-cb8b0d3098de");
    assert_eq!(parsed_session("/v1/messages", &[], &claude).await.as_deref(), session);
    let header = [("x-claude-code-session-id", "d2e70091-3007-41a3-a916-cb8b0d3098de")];
    assert_eq!(parsed_session("/v1/messages", &header, &claude).await.as_deref(), session, "the same session");
    // A signal that is not text is no signal, and no error.
    let odd = r#"{"model": "openai/gpt-4o", "messages": [], "prompt_cache_key": 7}"#;
    assert_eq!(parsed_session(path, &[], odd).await, None);
}

#[test]
fn affinity_defaults_to_session_for_an_hour() {
    let options = ProviderOptions::default();
    assert_eq!((options.affinity, options.affinity_ttl), (Affinity::Session, Duration::from_secs(3600)));
}
