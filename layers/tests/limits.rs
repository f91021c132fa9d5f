//! Limits before the 429, on a paused clock: a key's configured `rpm`,
//! `tpm` (reserved from an estimate, reconciled with the usage) and `rpd`
//! windows, and the limits learned from the provider's headers, in the
//! pool's choice and through KeySelect (waits within the deadline, else
//! 429 with `Retry-After`).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use keyrelay_layers::{
    BoxError,
    error::AllKeysCooling,
    extensions::{Deadline, Endpoint, RouteTarget},
    pool::{Choice, InFlight, KeyLease, KeyPool, KeySettings, ProviderOptions, ProviderPool, Secret, Selection},
    provider::ProviderId,
    select::KeySelectLayer,
    usage::Usage,
};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

use support::{NOWHERE, key_id, noon, openai, reply, secs, within_virtual};

fn pool(keys: Vec<(&str, KeySettings)>) -> Arc<KeyPool> {
    let keys = keys.into_iter().map(|(secret, settings)| (Secret::new(secret), settings)).collect();
    KeyPool::builder()
        .wall_clock(noon())
        .provider_keys(openai(NOWHERE), ProviderOptions::new(Selection::RoundRobin), keys)
        .build()
        .unwrap()
}

fn openai_of(pool: &KeyPool) -> &Arc<ProviderPool> {
    pool.provider("openai").unwrap()
}

/// Chooses a key for `gpt-4o` reserving `tokens`: its secret's id, or why not.
fn choose(pool: &KeyPool, tokens: u64) -> Result<(KeyLease, InFlight), keyrelay_layers::pool::Unavailable> {
    match openai_of(pool).choose_reserving("gpt-4o", &[], None, None, tokens) {
        Choice::Leased(lease, in_flight) => Ok((lease, in_flight)),
        Choice::Unavailable(why) => Err(why),
    }
}

fn chosen(pool: &KeyPool) -> Option<String> {
    choose(pool, 0).ok().map(|(lease, _)| lease.key_id().as_str().to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_minute_is_full_is_skipped_until_the_minute_has_passed() {
    let pool = pool(vec![("k1", KeySettings::new().rpm(2)), ("k2", KeySettings::new().rpm(1))]);
    let start = Instant::now();
    let mut seen: Vec<String> = (0..3).filter_map(|_| chosen(&pool)).collect();
    seen.sort();
    let mut expected = vec![key_id("openai", "k1"), key_id("openai", "k1"), key_id("openai", "k2")]
        .into_iter()
        .map(|id| id.as_str().to_owned())
        .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(seen, expected, "three requests, three places");
    let why = choose(&pool, 0).unwrap_err();
    assert_eq!(why.cooling_until, Some(start + secs(60)), "the first minute's end frees both");
    assert!(why.rate_limited, "a limit is a rate limit: 429 if it cannot be waited for");
    advance(secs(59)).await;
    assert!(chosen(&pool).is_none(), "still within the minute");
    advance(secs(1)).await;
    assert!(chosen(&pool).is_some(), "the minute has passed");
    let status = pool.key_status(key_id("openai", "k1").as_str()).unwrap();
    assert_eq!((status.settings.rpm, status.settings.tpm, status.settings.rpd), (Some(2), None, None));
}

#[tokio::test(start_paused = true)]
async fn tokens_are_reserved_from_the_estimate_and_reconciled_with_the_usage() {
    let pool = pool(vec![("k1", KeySettings::new().tpm(1000))]);
    let start = Instant::now();
    let (first, _guard) = choose(&pool, 600).unwrap();
    let why = choose(&pool, 600).unwrap_err();
    assert_eq!(why.cooling_until, Some(start + secs(60)), "600 reserved, 400 left: no room for 600");
    assert!(choose(&pool, 400).is_ok(), "but room for 400");
    advance(secs(5)).await;
    // The first answer used 150 tokens: its reservation gives back 450.
    first.count_usage("gpt-4o", Usage::new(100, 50));
    let status = pool.key_status(key_id("openai", "k1").as_str()).unwrap();
    assert_eq!(status.window.tokens_last_minute, 550);
    assert!(choose(&pool, 450).is_ok(), "room again after the reconciliation");
    assert!(choose(&pool, 1).is_err(), "and now the minute is full");
    // An answer that never reports its usage keeps its reservation until
    // its second leaves the window.
    advance(secs(55)).await;
    assert!(choose(&pool, 551).is_err(), "450 of the fifth second still count");
    assert!(choose(&pool, 550).is_ok(), "the first second's tokens have left");
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_tpm_still_goes_to_an_idle_key() {
    let pool = pool(vec![("k1", KeySettings::new().tpm(100))]);
    assert!(choose(&pool, 5000).is_ok(), "else it could never be sent");
    assert!(choose(&pool, 1).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_day_is_spent_waits_for_the_daily_reset() {
    let pool = pool(vec![("k1", KeySettings::new().rpd(2))]);
    let start = Instant::now();
    assert!(chosen(&pool).is_some() && chosen(&pool).is_some());
    let why = choose(&pool, 0).unwrap_err();
    // The pool stands at noon UTC and resets at midnight.
    assert_eq!(why.cooling_until, Some(start + secs(12 * 3600)));
    assert!(why.rate_limited);
    advance(secs(12 * 3600 - 1)).await;
    assert!(chosen(&pool).is_none(), "hours later, still the same day");
    advance(secs(1)).await;
    assert!(chosen(&pool).is_some(), "a new day");
    let status = pool.key_status(key_id("openai", "k1").as_str()).unwrap();
    assert_eq!(status.window.requests_today, 1);
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
}

#[tokio::test(start_paused = true)]
async fn a_key_the_provider_says_is_spent_is_skipped_for_that_model_until_the_reset() {
    let pool = pool(vec![("k1", KeySettings::new()), ("k2", KeySettings::new())]);
    let k1 = key_id("openai", "k1").as_str().to_owned();
    let spent = headers(&[("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "6s")]);
    openai_of(&pool).learn_limits(0, "gpt-4o", &spent);
    for _ in 0..4 {
        assert_ne!(chosen(&pool).as_deref(), Some(k1.as_str()), "k1 has nothing left for gpt-4o");
    }
    match openai_of(&pool).choose("gpt-4o-mini", &[], Some(&key_id("openai", "k1"))) {
        Choice::Leased(lease, _) => assert_eq!(lease.key_id().as_str(), k1, "other models are not affected"),
        Choice::Unavailable(why) => panic!("{why:?}"),
    }
    let status = pool.key_status(&k1).unwrap();
    let learned = &status.learned[0];
    assert_eq!(
        (learned.model.as_str(), learned.requests_remaining, learned.tokens_remaining),
        ("gpt-4o", Some(0), None)
    );
    assert_eq!(learned.requests_reset_unix_ms, Some((support::NOON_UNIX + 6) * 1000));
    advance(secs(6)).await;
    let picks: Vec<_> = (0..2).filter_map(|_| chosen(&pool)).collect();
    assert!(picks.contains(&k1), "back after the reset: {picks:?}");
    assert!(pool.key_status(&k1).unwrap().learned.is_empty(), "nothing learned holds any more");
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_spend_a_key_until_their_reset_time() {
    let pool = pool(vec![("k1", KeySettings::new())]);
    // The pool stands at 2026-01-01T12:00:00Z.
    let spent = headers(&[
        ("anthropic-ratelimit-requests-remaining", "40"),
        ("anthropic-ratelimit-requests-reset", "2026-01-01T12:00:30Z"),
        ("anthropic-ratelimit-output-tokens-remaining", "0"),
        ("anthropic-ratelimit-output-tokens-reset", "2026-01-01T12:00:20Z"),
    ]);
    let start = Instant::now();
    openai_of(&pool).learn_limits(0, "gpt-4o", &spent);
    let why = choose(&pool, 0).unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(start + secs(20)), true));
    advance(secs(20)).await;
    assert!(chosen(&pool).is_some());
}

// === through KeySelect ===

/// KeySelect over an inner service that answers with the key it was given.
async fn send(pool: &Arc<KeyPool>, req: Request<()>) -> Result<String, BoxError> {
    let svc = KeySelectLayer::new(pool.clone()).layer(service_fn(|req: Request<()>| async move {
        let key = req.extensions().get::<KeyLease>().unwrap().key_id().as_str().to_owned();
        let mut res = Response::new(Empty::<Bytes>::new());
        res.headers_mut().insert("x-key", HeaderValue::from_str(&key).unwrap());
        Ok::<_, BoxError>(res)
    }));
    let res = within_virtual(svc.oneshot(req)).await?;
    Ok(res.headers()["x-key"].to_str().unwrap().to_owned())
}

fn request(deadline_in: u64, tokens: u64) -> Request<()> {
    let mut req = Request::post("/v1/chat/completions").body(()).unwrap();
    let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false)
        .with_estimated_tokens(tokens);
    req.extensions_mut().insert(target);
    req.extensions_mut().insert(Deadline(Instant::now() + secs(deadline_in)));
    req
}

#[tokio::test(start_paused = true)]
async fn with_every_key_at_its_limit_a_request_waits_for_the_first_window_within_its_deadline() {
    let pool = pool(vec![("k1", KeySettings::new().rpm(1)), ("k2", KeySettings::new().tpm(1000))]);
    let start = Instant::now();
    assert_eq!(send(&pool, request(90, 10)).await.unwrap(), key_id("openai", "k1").as_str(), "k1's minute: full");
    assert_eq!(send(&pool, request(90, 1000)).await.unwrap(), key_id("openai", "k2").as_str(), "k2's tokens: spent");
    let key = send(&pool, request(90, 10)).await.unwrap();
    assert_eq!(Instant::now(), start + secs(60), "waited for the minute, not longer");
    assert!([key_id("openai", "k1"), key_id("openai", "k2")].iter().any(|id| id.as_str() == key));
}

#[tokio::test(start_paused = true)]
async fn with_every_key_at_its_limit_past_the_deadline_the_client_hears_429_with_retry_after() {
    let pool = pool(vec![("k1", KeySettings::new().rpm(1)), ("k2", KeySettings::new().rpd(1))]);
    assert_eq!(send(&pool, request(30, 0)).await.unwrap(), key_id("openai", "k1").as_str());
    advance(secs(10)).await;
    assert_eq!(send(&pool, request(30, 0)).await.unwrap(), key_id("openai", "k2").as_str(), "its day is spent");
    let start = Instant::now();
    let err = send(&pool, request(30, 0)).await.unwrap_err();
    assert_eq!(Instant::now(), start, "no wait that cannot end in time");
    assert!(err.downcast_ref::<AllKeysCooling>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!(
        (reply.status, reply.code, reply.retry_after),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", Some(50)),
        "k1's minute ends first: {}",
        reply.message
    );
}

// === the estimate ===

#[test]
fn parse_estimates_a_requests_tokens_from_its_size_and_its_completion_cap() {
    use keyrelay_layers::parse::route_target;
    let pool = pool(vec![("k1", KeySettings::new())]);
    let estimate = |body: &str, endpoint| route_target(body.as_bytes(), endpoint, &pool).unwrap().estimated_tokens();
    let chat =
        r#"{"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 100}"#;
    assert_eq!(estimate(chat, Endpoint::ChatCompletions), chat.len() as u64 / 4 + 100);
    let newer = r#"{"model": "openai/o3", "messages": [], "max_completion_tokens": 4000}"#;
    assert_eq!(estimate(newer, Endpoint::ChatCompletions), newer.len() as u64 / 4 + 4000);
    let responses = r#"{"model": "openai/gpt-4o", "input": "hi", "max_output_tokens": 512}"#;
    assert_eq!(estimate(responses, Endpoint::Responses), responses.len() as u64 / 4 + 512);
    // A strange cap is the provider's to refuse: the estimate is the prompt's.
    let odd = r#"{"model": "openai/gpt-4o", "messages": [], "max_tokens": "lots"}"#;
    assert_eq!(estimate(odd, Endpoint::ChatCompletions), odd.len() as u64 / 4);
}
