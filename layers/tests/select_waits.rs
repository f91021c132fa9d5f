//! KeySelectLayer's waits, on a paused clock: for a cooldown that ends before
//! the request's deadline, for a free concurrency slot, for a key an operator
//! brings back; and its refusals: 429 when every key cools past the
//! deadline, 503 when none is usable, KeysExhausted when the request tried
//! them all. Also PinnedKey.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use keyrelay_layers::{
    BoxError, ProxyBody,
    classify::{Failure, FailureClass},
    concurrency::KeyConcurrencyLayer,
    error::{AllKeysCooling, KeysExhausted},
    extensions::{Deadline, Endpoint, ExcludedKeys, PinnedKey, RouteTarget},
    pool::{KeyId, KeyLease, KeyPool, ProviderOptions, ProviderPool, Selection},
    provider::ProviderId,
    select::KeySelectLayer,
    timeout::DeadlineLayer,
};
use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, ServiceExt, service_fn, util::BoxCloneService};

use support::{NOWHERE, key_id, ms, noon, openai, reply, routed, secrets, secs, within_virtual};

type Req = Request<()>;
type Svc = BoxCloneService<Req, Response<ProxyBody>, BoxError>;

/// The keys the inner service was called with, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<KeyId>>>);

impl Seen {
    fn keys(&self) -> Vec<KeyId> {
        self.0.lock().unwrap().clone()
    }
}

/// KeySelect -> KeyConcurrency -> an inner that answers 200 at once. The
/// response holds the key (and its slot, when capped) until dropped.
fn stack(pool: &Arc<KeyPool>) -> (Svc, Seen) {
    let seen = Seen::default();
    let inner = service_fn({
        let seen = seen.clone();
        move |req: Req| {
            let lease = req.extensions().get::<KeyLease>().expect("KeySelect leased a key").clone();
            seen.0.lock().unwrap().push(lease.key_id().clone());
            async move { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) }
        }
    });
    let svc = KeySelectLayer::new(pool.clone())
        .layer(KeyConcurrencyLayer::new().layer(inner))
        .map_response(|res| res.map(|body| body.map_err(BoxError::from).boxed_unsync()));
    (BoxCloneService::new(svc), seen)
}

fn build(options: ProviderOptions, keys: &[&str]) -> Arc<KeyPool> {
    KeyPool::builder().wall_clock(noon()).provider_with(openai(NOWHERE), options, secrets(keys)).build().unwrap()
}

fn plain(keys: &[&str]) -> Arc<KeyPool> {
    build(ProviderOptions::new(Selection::LeastUsed), keys)
}

fn capped(cap: usize, keys: &[&str]) -> Arc<KeyPool> {
    build(ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(cap), keys)
}

fn openai_of(pool: &KeyPool) -> &Arc<ProviderPool> {
    pool.provider("openai").unwrap()
}

/// `routed(())` (model `gpt-4o`) with a deadline this far from now.
fn request(deadline_in: Option<Duration>) -> Req {
    let mut req = routed(());
    if let Some(after) = deadline_in {
        req.extensions_mut().insert(Deadline(Instant::now() + after));
    }
    req
}

/// Rate-limits key `index` for `gpt-4o` for `hint` seconds.
fn cool(pool: &KeyPool, index: usize, hint: u64) -> Instant {
    let failure = Failure { class: FailureClass::RateLimit, retry_after: Some(secs(hint)) };
    openai_of(pool).record(index, "gpt-4o", Err(failure)).unwrap()
}

fn id(secret: &str) -> KeyId {
    key_id("openai", secret)
}

// === cooldowns and the deadline ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_for_a_cooldown_that_ends_before_the_deadline_then_leases() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 0, 40);
    cool(&pool, 1, 20);
    let mut fut = task::spawn(svc.oneshot(request(Some(secs(60)))));
    assert_pending!(fut.poll());
    advance(secs(20) - ms(1)).await;
    assert_pending!(fut.poll());
    assert!(seen.keys().is_empty(), "nothing sent while every key cools");
    advance(ms(1)).await;
    assert!(fut.is_woken(), "woken when the first cooldown ends");
    let _res = assert_ready_ok!(fut.poll());
    assert_eq!(seen.keys(), [id("k2")], "the key whose cooldown ended");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fails_at_once_with_429_when_every_cooldown_outlasts_the_deadline() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 0, 120);
    cool(&pool, 1, 90);
    let start = Instant::now();
    let err = within_virtual(svc.oneshot(request(Some(secs(60))))).await.unwrap_err();
    assert_eq!(Instant::now(), start, "no waiting for a key that cannot come in time");
    let cooling = err.downcast_ref::<AllKeysCooling>().expect("AllKeysCooling");
    assert_eq!(cooling.retry_after(), secs(90), "when the first key frees");
    let reply = reply(&err);
    assert_eq!(
        (reply.status, reply.code, reply.retry_after),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", Some(90))
    );
    assert!(reply.message.contains("gpt-4o"), "{}", reply.message);
    assert!(seen.keys().is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_limit_past_midnight_is_waited_for_until_the_daily_reset_only() {
    // 23:59 UTC; the provider says one hour, the daily reset comes first.
    let pool = KeyPool::builder()
        .wall_clock(noon() + secs(12 * 3600 - 60))
        .provider(openai(NOWHERE), Selection::LeastUsed, secrets(&["k1"]))
        .build()
        .unwrap();
    let (svc, seen) = stack(&pool);
    cool(&pool, 0, 3600);
    let start = Instant::now();
    let _res = within_virtual(svc.oneshot(request(Some(secs(120))))).await.unwrap();
    assert_eq!(Instant::now() - start, secs(60), "back at midnight");
    assert_eq!(seen.keys(), [id("k1")]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_a_deadline_it_waits_for_the_earliest_cooldown() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 0, 600);
    cool(&pool, 1, 300);
    let start = Instant::now();
    let _res = within_virtual(svc.oneshot(request(None))).await.unwrap();
    assert_eq!(Instant::now() - start, secs(300));
    assert_eq!(seen.keys(), [id("k2")]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn excluded_keys_do_not_count_as_coming_back() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 1, 30);
    let mut req = request(Some(secs(60)));
    req.extensions_mut().insert(ExcludedKeys(vec![id("k1")]));
    let start = Instant::now();
    let _res = within_virtual(svc.oneshot(req)).await.unwrap();
    assert_eq!((Instant::now() - start, seen.keys()), (secs(30), vec![id("k2")]), "k1 was free but excluded");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_request_takes_a_key_the_operator_brings_back() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 0, 50);
    assert!(pool.set_disabled(id("k2").as_str(), true));
    let mut fut = task::spawn(svc.clone().oneshot(request(Some(secs(60)))));
    assert_pending!(fut.poll());
    advance(secs(5)).await;
    assert_pending!(fut.poll());
    assert!(pool.set_disabled(id("k2").as_str(), false));
    assert!(fut.is_woken());
    let _res = assert_ready_ok!(fut.poll());
    assert_eq!(seen.keys(), [id("k2")]);

    cool(&pool, 1, 50);
    let mut fut = task::spawn(svc.oneshot(request(Some(secs(60)))));
    assert_pending!(fut.poll());
    assert!(pool.reset(id("k1").as_str()));
    assert!(fut.is_woken(), "a reset frees a key as well");
    let _res = assert_ready_ok!(fut.poll());
    assert_eq!(seen.keys(), [id("k2"), id("k1")]);
}

// === concurrency slots ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_for_a_free_slot_and_proceeds_when_a_permit_is_released() {
    let pool = capped(1, &["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    let first = within_virtual(svc.clone().oneshot(request(Some(secs(60))))).await.unwrap();
    let second = within_virtual(svc.clone().oneshot(request(Some(secs(60))))).await.unwrap();
    assert_eq!(seen.keys(), [id("k1"), id("k2")]);

    let mut third = task::spawn(svc.clone().oneshot(request(Some(secs(60)))));
    assert_pending!(third.poll());
    advance(secs(30)).await;
    assert_pending!(third.poll());
    assert_eq!(seen.keys().len(), 2, "no slot, no call");
    drop(second);
    assert!(third.is_woken(), "the released permit wakes the waiter");
    let third = assert_ready_ok!(third.poll());
    assert_eq!(seen.keys()[2], id("k2"));

    // A slot freed by a body that ends (not dropped) wakes waiters too.
    let mut fourth = task::spawn(svc.oneshot(request(Some(secs(60)))));
    assert_pending!(fourth.poll());
    let mut body = first.into_body();
    assert!(within_virtual(body.frame()).await.is_none());
    assert!(fourth.is_woken());
    let _fourth = assert_ready_ok!(fourth.poll());
    assert_eq!(seen.keys()[3], id("k1"));
    drop(third);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_cap_is_per_key_and_model() {
    let pool = capped(1, &["k1"]);
    let (svc, seen) = stack(&pool);
    let _held = within_virtual(svc.clone().oneshot(request(None))).await.unwrap();
    let mut other = routed(());
    other.extensions_mut().insert(RouteTarget::new(
        ProviderId::new("openai"),
        "gpt-4o-mini",
        Endpoint::ChatCompletions,
        false,
    ));
    let _also = within_virtual(svc.oneshot(other)).await.unwrap();
    assert_eq!(seen.keys(), [id("k1"), id("k1")], "one key serves two models at once");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slot_wait_ends_with_the_deadline_layer_outside() {
    let pool = capped(1, &["k1"]);
    let (svc, _seen) = stack(&pool);
    let _held = within_virtual(svc.clone().oneshot(request(None))).await.unwrap();
    let start = Instant::now();
    let err = within_virtual(DeadlineLayer::new(secs(10)).layer(svc).oneshot(request(None))).await.unwrap_err();
    assert_eq!(Instant::now() - start, secs(10));
    let reply = reply(&err);
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
}

/// KeySelect used without a DeadlineLayer, but with a Deadline (as a
/// library user may): past the deadline, a request still waiting for a slot
/// must neither spin nor wait forever.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn past_its_deadline_a_slot_wait_does_not_spin() {
    let pool = capped(1, &["k1"]);
    let (svc, _seen) = stack(&pool);
    let held = within_virtual(svc.clone().oneshot(request(None))).await.unwrap();
    let mut fut = task::spawn(svc.oneshot(request(Some(secs(10)))));
    assert_pending!(fut.poll());
    advance(secs(15)).await;
    let mut spins = 0;
    while fut.poll().is_pending() {
        // Lets the runtime turn its timer driver, as it does between polls.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        if !fut.is_woken() {
            break;
        }
        spins += 1;
        assert!(spins < 100, "polled {spins} times past its deadline, woken again each time: a busy loop");
    }
    drop(held);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_for_whichever_comes_first_a_free_slot_or_the_end_of_a_cooldown() {
    let pool = capped(1, &["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    let held = within_virtual(svc.clone().oneshot(request(None))).await.unwrap();
    cool(&pool, 1, 20);
    let mut fut = task::spawn(svc.clone().oneshot(request(Some(secs(60)))));
    assert_pending!(fut.poll());
    advance(secs(5)).await;
    assert_pending!(fut.poll());
    drop(held);
    assert!(fut.is_woken());
    let held = assert_ready_ok!(fut.poll());
    assert_eq!(seen.keys(), [id("k1"), id("k1")], "the slot came first");

    let mut fut = task::spawn(svc.oneshot(request(Some(secs(60)))));
    assert_pending!(fut.poll());
    advance(secs(15)).await;
    assert!(fut.is_woken());
    let _res = assert_ready_ok!(fut.poll());
    assert_eq!(seen.keys()[2], id("k2"), "then the cooldown");
    drop(held);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_provider_pause_is_waited_out_within_the_deadline() {
    let pool = plain(&["k1", "k2", "k3", "k4"]);
    let (svc, seen) = stack(&pool);
    for i in 0..3 {
        cool(&pool, i, 600);
    }
    let start = Instant::now();
    let _res = within_virtual(svc.clone().oneshot(request(Some(secs(60))))).await.unwrap();
    assert_eq!((Instant::now() - start, seen.keys()), (secs(10), vec![id("k4")]), "k4 after the 10 s pause");

    for i in [0, 1, 3] {
        openai_of(&pool).record(i, "gpt-4o-mini", Err(Failure::new(FailureClass::RateLimit)));
    }
    let err = within_virtual(svc.oneshot(request(Some(secs(5))))).await.unwrap_err();
    let answer = reply(&err);
    assert_eq!((answer.status, answer.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(10)), "{}", answer.message);
}

// === refusals ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_key_invalid_or_disabled_is_503_no_usable_key() {
    let pool = plain(&["k1", "k2"]);
    let (svc, seen) = stack(&pool);
    let refused = Failure::new(FailureClass::Credential);
    openai_of(&pool).record(0, "gpt-4o", Err(refused));
    assert!(pool.set_disabled(id("k2").as_str(), true));
    let err = within_virtual(svc.clone().oneshot(request(Some(secs(600))))).await.unwrap_err();
    let answer = reply(&err);
    assert_eq!((answer.status, answer.code), (StatusCode::SERVICE_UNAVAILABLE, "no_usable_key"));
    assert_eq!(answer.retry_after, Some(300), "when the invalid key may be probed");

    openai_of(&pool).record(0, "gpt-4o", Ok(()));
    assert!(pool.set_disabled(id("k1").as_str(), true));
    let err = within_virtual(svc.oneshot(request(Some(secs(600))))).await.unwrap_err();
    let answer = reply(&err);
    assert_eq!(
        (answer.status, answer.code, answer.retry_after),
        (StatusCode::SERVICE_UNAVAILABLE, "no_usable_key", None)
    );
    assert!(seen.keys().is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_remaining_key_excluded_is_keys_exhausted() {
    let pool = plain(&["k1", "k2", "k3"]);
    let (svc, seen) = stack(&pool);
    assert!(pool.set_disabled(id("k3").as_str(), true));
    let mut req = request(Some(secs(60)));
    req.extensions_mut().insert(ExcludedKeys(vec![id("k1"), id("k2")]));
    let err = within_virtual(svc.oneshot(req)).await.unwrap_err();
    assert!(err.downcast_ref::<KeysExhausted>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::BAD_GATEWAY, "upstream_failed"));
    assert!(seen.keys().is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keys_excluded_and_the_rest_cooling_past_the_deadline_is_keys_exhausted_not_429() {
    // The request failed (transiently) on every key it could use; the other
    // key cools for hours. A 429 would send the client away for those hours
    // although the failed keys may answer the next request.
    let pool = plain(&["k1", "k2", "k3"]);
    let (svc, seen) = stack(&pool);
    cool(&pool, 2, 3 * 3600);
    let mut req = request(Some(secs(60)));
    req.extensions_mut().insert(ExcludedKeys(vec![id("k1"), id("k2")]));
    let start = Instant::now();
    let err = within_virtual(svc.oneshot(req)).await.unwrap_err();
    assert_eq!(Instant::now(), start, "no waiting for a key that cannot come in time");
    assert!(err.downcast_ref::<KeysExhausted>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code, reply.retry_after), (StatusCode::BAD_GATEWAY, "upstream_failed", None));
    assert!(seen.keys().is_empty());
}

// === PinnedKey ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pinned_key_is_used_when_available_and_skipped_when_not() {
    let pool = plain(&["k1", "k2", "k3"]);
    let (svc, seen) = stack(&pool);
    let pinned = |secret: &str| {
        let mut req = request(Some(secs(60)));
        req.extensions_mut().insert(PinnedKey(id(secret)));
        req
    };
    for _ in 0..3 {
        let _res = within_virtual(svc.clone().oneshot(pinned("k3"))).await.unwrap();
    }
    assert_eq!(seen.keys(), [id("k3"), id("k3"), id("k3")], "least used would have spread them");

    cool(&pool, 2, 30);
    let start = Instant::now();
    let _res = within_virtual(svc.oneshot(pinned("k3"))).await.unwrap();
    assert_eq!(Instant::now(), start, "no waiting for a cooling pinned key");
    assert_ne!(seen.keys()[3], id("k3"));
}
