//! Upstream keys' budgets, on a paused clock at 2026-01-01 12:00 UTC: a key
//! that spent its budget is skipped and shows `exhausted`/`budget` until
//! its period ends; requests in flight reserve their maximum cost and free
//! it when they end; a reload keeps what a key spent; through KeySelect, a
//! request whose every key is over budget is answered at once (429 with
//! `Retry-After` at the period's end), never made to wait.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use keyrelay_layers::{
    BoxError,
    budget::{Budget, BudgetPeriod},
    error::{AllKeysCooling, NoUsableKey},
    extensions::{Deadline, Endpoint, RouteTarget},
    pool::{
        Choice, InFlight, KeyLease, KeyPool, KeySettings, KeyState, ProviderOptions, Secret, Selection, Unavailable,
    },
    price::{Price, PriceTable},
    provider::ProviderId,
    select::KeySelectLayer,
    usage::Usage,
};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

use support::{NOON_UNIX, NOWHERE, key_id, noon, openai, reply, secs, within_virtual};

/// $1 per million prompt tokens, $2 per million completion tokens.
fn prices() -> Arc<PriceTable> {
    let mut prices = PriceTable::default();
    prices.insert("openai/gpt-4o", Price::new(1.0, 2.0));
    Arc::new(prices)
}

/// `usd` worth of gpt-4o completion tokens.
fn usage_costing(usd: f64) -> Usage {
    Usage::new(0, (usd * 500_000.0).round() as u64)
}

fn day(usd: f64) -> KeySettings {
    KeySettings::new().budget(Budget::new(usd, BudgetPeriod::Day))
}

fn builder(keys: Vec<(&str, KeySettings)>) -> keyrelay_layers::pool::KeyPoolBuilder {
    let keys = keys.into_iter().map(|(secret, settings)| (Secret::new(secret), settings)).collect();
    KeyPool::builder().wall_clock(noon()).prices(prices()).provider_keys(
        openai(NOWHERE),
        ProviderOptions::new(Selection::RoundRobin),
        keys,
    )
}

fn pool(keys: Vec<(&str, KeySettings)>) -> Arc<KeyPool> {
    builder(keys).build().unwrap()
}

/// A key for gpt-4o reserving `max_cost` USD, or why not.
fn choose(pool: &KeyPool, max_cost: f64) -> Result<(KeyLease, InFlight), Unavailable> {
    match pool.provider("openai").unwrap().choose_reserving_cost("gpt-4o", &[], None, None, 0, max_cost) {
        Choice::Leased(lease, in_flight) => Ok((lease, in_flight)),
        Choice::Unavailable(why) => Err(why),
    }
}

fn chosen(pool: &KeyPool) -> String {
    let (lease, _in_flight) = choose(pool, 0.0).expect("a key");
    lease.key_id().as_str().to_owned()
}

fn id(secret: &str) -> String {
    key_id("openai", secret).as_str().to_owned()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// 2026-01-02 00:00 UTC: when the day of the tests ends.
const MIDNIGHT_MS: u64 = (NOON_UNIX + 12 * 3600) * 1000;

#[tokio::test(start_paused = true)]
async fn a_key_that_spent_its_budget_is_skipped_and_shows_exhausted_until_its_period_ends() {
    let pool = pool(vec![("k1", day(0.01).priority(0)), ("k2", KeySettings::new().priority(1))]);
    let start = Instant::now();
    let (lease, in_flight) = choose(&pool, 0.005).unwrap();
    assert_eq!(lease.key_id().as_str(), id("k1"), "the first tier");
    lease.count_usage("gpt-4o", usage_costing(0.012));
    drop(in_flight);

    assert_eq!(chosen(&pool), id("k2"), "k1 spent its day: the next tier serves");
    let status = pool.key_status(&id("k1")).unwrap();
    assert_eq!((status.state, status.reason), (KeyState::Exhausted, Some("budget")));
    let budget = status.budget.unwrap();
    assert_eq!((budget.limit_usd, budget.period), (0.01, "day"));
    assert!(near(budget.spent_usd, 0.012) && budget.remaining_usd == 0.0, "{budget:?}");
    assert_eq!(budget.resets_at_unix_ms, Some(MIDNIGHT_MS));
    let other = pool.key_status(&id("k2")).unwrap();
    assert_eq!((other.state, other.reason, other.budget.is_none()), (KeyState::Ok, None, true));

    advance(secs(12 * 3600 - 1)).await;
    assert_eq!(chosen(&pool), id("k2"), "still the same day");
    advance(secs(1)).await;
    assert_eq!(chosen(&pool), id("k1"), "a new day: k1 is back, first tier first");
    let status = pool.key_status(&id("k1")).unwrap();
    assert_eq!((status.state, status.reason), (KeyState::Ok, None));
    assert_eq!(status.budget.unwrap().spent_usd, 0.0);
    assert_eq!(Instant::now(), start + secs(12 * 3600));
}

#[tokio::test(start_paused = true)]
async fn with_every_key_over_budget_the_pool_says_when_the_first_period_ends() {
    let week = KeySettings::new().budget(Budget::new(1.0, BudgetPeriod::Week));
    let pool = pool(vec![("k1", day(0.01)), ("k2", week)]);
    let start = Instant::now();
    for _ in 0..2 {
        let (lease, _in_flight) = choose(&pool, 0.0).unwrap();
        lease.count_usage("gpt-4o", usage_costing(2.0));
    }
    let why = choose(&pool, 0.0).unwrap_err();
    assert!(why.over_budget && !why.full && why.cooling_until.is_none(), "{why:?}");
    assert_eq!(why.budget_until, Some(start + secs(12 * 3600)), "k1's day ends before k2's week");
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_reserve_their_maximum_cost_until_they_end() {
    let pool = pool(vec![("k1", KeySettings::new().budget(Budget::new(1.0, BudgetPeriod::Total)))]);
    let (first, first_in_flight) = choose(&pool, 0.6).unwrap();
    let (_second, second_in_flight) = choose(&pool, 0.6).expect("0.4 was left: admitted");
    let why = choose(&pool, 0.01).unwrap_err();
    assert!(why.full && !why.over_budget, "reserved, not spent: full until a request ends: {why:?}");
    let status = pool.key_status(&id("k1")).unwrap();
    assert_eq!(status.state, KeyState::Ok, "nothing is spent yet");
    let budget = status.budget.unwrap();
    assert!(near(budget.reserved_usd, 1.2) && budget.remaining_usd == 0.0, "{budget:?}");

    drop(second_in_flight);
    let (_third, _third_in_flight) = choose(&pool, 0.3).expect("the second request failed: its reservation freed");

    first.count_usage("gpt-4o", usage_costing(0.1));
    drop(first_in_flight);
    let budget = pool.key_status(&id("k1")).unwrap().budget.unwrap();
    assert!(near(budget.spent_usd, 0.1), "the real cost, not the reservation: {budget:?}");
    assert!(near(budget.reserved_usd, 0.3) && near(budget.remaining_usd, 0.6), "{budget:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unpriced_model_reserves_and_costs_nothing() {
    let pool = pool(vec![("k1", day(0.01))]);
    let provider = pool.provider("openai").unwrap();
    let Choice::Leased(lease, _in_flight) = provider.choose_reserving_cost("llama-3", &[], None, None, 0, 0.0) else {
        panic!("a key")
    };
    lease.count_usage("llama-3", Usage::new(1_000_000, 1_000_000));
    let budget = pool.key_status(&id("k1")).unwrap().budget.unwrap();
    assert_eq!((budget.spent_usd, budget.reserved_usd), (0.0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_what_a_key_spent_and_takes_its_new_budget() {
    let old = pool(vec![("k1", day(0.01))]);
    let (lease, in_flight) = choose(&old, 0.5).unwrap();
    lease.count_usage("gpt-4o", usage_costing(0.02));
    let new = builder(vec![("k1", day(0.05))]).carry_over(old.clone()).build().unwrap();
    let budget = new.key_status(&id("k1")).unwrap().budget.unwrap();
    assert_eq!(budget.limit_usd, 0.05, "the new settings' budget");
    assert!(near(budget.spent_usd, 0.02) && near(budget.reserved_usd, 0.5), "spend and holds carried: {budget:?}");
    drop(in_flight);
    assert_eq!(chosen(&new), id("k1"), "under the new budget there is room");

    // A restart has only the ledger: what it restores counts in its period.
    let restarted = pool(vec![("k1", day(0.05))]);
    let today = MIDNIGHT_MS - 24 * 3600 * 1000;
    assert_eq!(restarted.key_budget(&id("k1")), Some(Budget::new(0.05, BudgetPeriod::Day)));
    assert!(restarted.restore_key_spend(&id("k1"), today - 24 * 3600 * 1000, 9.0), "yesterday's");
    assert!(restarted.restore_key_spend(&id("k1"), today, 0.05));
    assert!(choose(&restarted, 0.0).unwrap_err().over_budget, "today's spend restored, yesterday's ignored");
    assert!(!restarted.restore_key_spend("openai:00000000", today, 1.0), "no such key");
}

// === through KeySelect ===

/// Sends `req` through KeySelect over a service that answers with the key
/// it was given and checks what the budget reserved for it meanwhile.
async fn send(pool: &Arc<KeyPool>, req: Request<()>, reserved: f64) -> Result<String, BoxError> {
    let status_pool = pool.clone();
    let svc = KeySelectLayer::new(pool.clone()).layer(service_fn(move |req: Request<()>| {
        let pool = status_pool.clone();
        async move {
            let key = req.extensions().get::<KeyLease>().unwrap().key_id().as_str().to_owned();
            let held = pool.key_status(&key).unwrap().budget.map_or(0.0, |b| b.reserved_usd);
            assert!(near(held, reserved), "reserved {held}, expected {reserved}");
            let mut res = Response::new(Empty::<Bytes>::new());
            res.headers_mut().insert("x-key", HeaderValue::from_str(&key).unwrap());
            Ok::<_, BoxError>(res)
        }
    }));
    let res = within_virtual(svc.oneshot(req)).await?;
    Ok(res.headers()["x-key"].to_str().unwrap().to_owned())
}

/// A chat request of 1000 tokens, 500 of them the completion cap: at most
/// 500 × $1 + 500 × $2 per million, $0.0015.
fn request() -> Request<()> {
    let mut req = Request::post("/v1/chat/completions").body(()).unwrap();
    let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false)
        .with_estimated_tokens(1000)
        .with_max_output(Some(500));
    req.extensions_mut().insert(target);
    req.extensions_mut().insert(Deadline(Instant::now() + secs(24 * 3600)));
    req
}

#[tokio::test(start_paused = true)]
async fn key_select_reserves_the_maximum_cost_and_answers_429_at_once_when_every_key_is_spent() {
    let pool = pool(vec![("k1", day(0.01)), ("k2", day(0.02))]);
    let first = send(&pool, request(), 0.0015).await.unwrap();
    let (spent, other) = if first == id("k1") { ("k1", "k2") } else { ("k2", "k1") };
    assert_eq!(pool.key_status(&first).unwrap().budget.unwrap().reserved_usd, 0.0, "freed with the response");
    let spend = |secret: &str| {
        let (lease, _in_flight) = choose(&pool, 0.0).unwrap();
        assert_eq!(lease.key_id().as_str(), id(secret));
        lease.count_usage("gpt-4o", usage_costing(1.0));
    };
    // Round robin turns to the other key next: spend it, then the first.
    spend(other);
    assert_eq!(send(&pool, request(), 0.0015).await.unwrap(), id(spent), "the key with budget left serves");
    spend(spent);

    let start = Instant::now();
    let err = send(&pool, request(), 0.0).await.unwrap_err();
    assert_eq!(Instant::now(), start, "a budget is not waited for, whatever the deadline");
    assert!(err.downcast_ref::<AllKeysCooling>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!(
        (reply.status, reply.code, reply.retry_after),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", Some(12 * 3600)),
        "back at midnight UTC: {}",
        reply.message
    );
}

#[tokio::test(start_paused = true)]
async fn keys_whose_total_budget_is_spent_never_come_back() {
    let pool = pool(vec![("k1", KeySettings::new().budget(Budget::new(0.01, BudgetPeriod::Total)))]);
    let (lease, in_flight) = choose(&pool, 0.0).unwrap();
    lease.count_usage("gpt-4o", usage_costing(0.01));
    drop(in_flight);
    let err = send(&pool, request(), 0.0).await.unwrap_err();
    assert!(err.downcast_ref::<NoUsableKey>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!((reply.status, reply.retry_after), (StatusCode::SERVICE_UNAVAILABLE, None));
}
