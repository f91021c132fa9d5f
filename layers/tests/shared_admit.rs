//! SharedAdmitLayer alone, against a fake shared store that records what it
//! is asked and answers as scripted, on a paused clock at 2026-01-01 12:00
//! UTC: a key with no limit the replicas share costs no round trip; an
//! admitted attempt holds its ticket until the body ends (or is dropped)
//! and its usage settles it; a refused one is `KeyBusy`, counted nowhere,
//! and its key is full, cooling or over budget here until the store's
//! time; a store that does not answer lets the request through. The waits
//! of KeySelect on keys full elsewhere are in `shared_admit_select.rs`.

mod support;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError,
    body::GuardedBody,
    budget::{Budget, BudgetPeriod},
    error::KeyBusy,
    pool::{Choice, InFlight, KeyLease, KeyPool, KeySettings, KeyState, Refusal, RefusalReason, TicketRelease},
    shared_admit::SharedAdmitLayer,
    usage::Usage,
};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

#[path = "support/shared_store.rs"]
mod shared_store;

use shared_store::{Answer, FakeStore, MIDNIGHT_MS, id, pool, pool_without_store};
use support::{BodyTx, MockBody, ms, routed, secs, within_virtual};

type Req = Request<()>;
type Answered = Result<Response<GuardedBody<MockBody, TicketRelease>>, BoxError>;

/// A lease for gpt-4o estimating `tokens` and reserving `max_cost` USD.
fn choose(pool: &Arc<KeyPool>, tokens: u64, max_cost: f64) -> (KeyLease, InFlight) {
    match pool.provider("openai").unwrap().choose_reserving_cost("gpt-4o", &[], None, None, tokens, max_cost) {
        Choice::Leased(lease, in_flight) => (lease, in_flight),
        Choice::Unavailable(why) => panic!("no key: {why:?}"),
    }
}

fn chosen(pool: &Arc<KeyPool>) -> Option<String> {
    match pool.provider("openai").unwrap().choose("gpt-4o", &[], None) {
        Choice::Leased(lease, _) => Some(lease.key_id().as_str().to_owned()),
        Choice::Unavailable(_) => None,
    }
}

/// One request with `lease` through SharedAdmit, whose inner answers with
/// a scripted body; the body's sender, the answer, and how often the inner
/// service was called.
async fn call(lease: &KeyLease) -> (BodyTx, Answered, usize) {
    let (tx, body) = MockBody::channel();
    let body = Arc::new(Mutex::new(Some(body)));
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let calls = calls.clone();
        move |req: Req| {
            assert!(req.extensions().get::<KeyLease>().is_some(), "the lease goes on");
            calls.fetch_add(1, SeqCst);
            let body = body.lock().unwrap().take().expect("one call");
            async move { Ok::<_, BoxError>(Response::new(body)) }
        }
    });
    let mut req = routed(());
    req.extensions_mut().insert(lease.clone());
    let answer = within_virtual(SharedAdmitLayer::new().layer(inner).oneshot(req)).await;
    (tx, answer, calls.load(SeqCst))
}

fn capped(cap: usize) -> KeySettings {
    KeySettings::new().max_concurrent(cap)
}

fn day_budget(usd: f64) -> KeySettings {
    KeySettings::new().budget(Budget::new(usd, BudgetPeriod::Day))
}

/// The wall time `after` from now, as the store names times.
fn unix_ms_in(pool: &KeyPool, after: std::time::Duration) -> u64 {
    pool.clock().unix_ms(Instant::now() + after)
}

#[tokio::test(start_paused = true)]
async fn a_key_without_shared_limits_costs_no_round_trip_and_no_store_asks_nothing() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", KeySettings::new())]);
    let (lease, _in_flight) = choose(&pool, 100, 0.0);
    assert!(lease.admission("gpt-4o").is_none());
    let (_tx, answer, calls) = call(&lease).await;
    assert!(answer.is_ok() && calls == 1);
    assert!(store.asks().is_empty(), "a key with no cap, window or budget is never asked about");

    // Without a store, even a capped key with every limit goes straight through.
    let limited = capped(1).rpm(5).tpm(1000).rpd(10).budget(Budget::new(1.0, BudgetPeriod::Day));
    let pool = pool_without_store(vec![("k1", limited)]);
    let (lease, _in_flight) = choose(&pool, 100, 0.001);
    assert!(lease.admission("gpt-4o").is_none());
    let (_tx, answer, calls) = call(&lease).await;
    assert!(answer.is_ok() && calls == 1);
}

#[tokio::test(start_paused = true)]
async fn the_ask_carries_the_keys_limits_the_attempts_tokens_and_its_budget() {
    let store = FakeStore::new();
    let settings = capped(2).rpm(10).tpm(5000).rpd(100).budget(Budget::new(5.0, BudgetPeriod::Day));
    let pool = pool(&store, vec![("k1", settings), ("k2", day_budget(1.0).priority(1))]);
    store.answer(Answer::Admit(None));
    let (lease, in_flight) = choose(&pool, 300, 0.01);
    let (tx, answer, _) = call(&lease).await;
    // $1 per million prompt tokens, $2 per million completion tokens: $0.002.
    lease.count_usage("gpt-4o", Usage::new(1000, 500));
    drop((tx, answer, in_flight));

    let ask = store.asks().remove(0);
    assert_eq!((ask.key.as_str(), &*ask.model), (id("k1").as_str(), "gpt-4o"));
    assert_eq!((ask.max_concurrent, ask.rpm, ask.tpm, ask.rpd), (Some(2), Some(10), Some(5000), Some(100)));
    assert_eq!(ask.tokens, 300);
    assert_eq!((ask.day, ask.day_ends_unix_ms), (pool.clock().day(Instant::now()), MIDNIGHT_MS));
    let budget = ask.budget.expect("the key has a budget");
    assert_eq!(budget.limit_nanos, 5_000_000_000);
    assert_eq!((budget.period_start_unix_ms, budget.period_end_unix_ms), (MIDNIGHT_MS - 86_400_000, Some(MIDNIGHT_MS)));
    assert_eq!((budget.reserve_nanos, budget.spent_nanos), (10_000_000, 0));

    // The next ask says what this replica knows the key spent.
    store.answer(Answer::Admit(None));
    let (lease, _in_flight) = choose(&pool, 0, 0.01);
    let _ = call(&lease).await;
    let ask = store.asks().remove(1);
    assert_eq!(ask.budget.map(|b| b.spent_nanos), Some(2_000_000));

    // A key with a budget alone is asked about too, with no other limit.
    pool.set_disabled(&id("k1"), true);
    store.answer(Answer::Admit(None));
    let (lease, _in_flight) = choose(&pool, 0, 0.0);
    let _ = call(&lease).await;
    let ask = store.asks().remove(2);
    assert_eq!(ask.key.as_str(), id("k2"));
    assert_eq!((ask.max_concurrent, ask.rpm, ask.tpm, ask.rpd), (None, None, None, None));
    assert_eq!(ask.budget.map(|b| (b.limit_nanos, b.reserve_nanos)), Some((1_000_000_000, 0)));
}

#[tokio::test(start_paused = true)]
async fn an_admitted_attempt_holds_its_ticket_until_the_body_ends_and_its_usage_settles_it() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1).budget(Budget::new(1.0, BudgetPeriod::Day)))]);
    store.answer(Answer::Admit(Some(4_000_000)));
    let (lease, _in_flight) = choose(&pool, 50, 0.01);
    let (tx, answer, calls) = call(&lease).await;
    let mut body = answer.expect("admitted").into_body();
    assert_eq!(calls, 1);
    let ticket = store.ticket(0);
    let spent = pool.key_status(&id("k1")).unwrap().budget.unwrap().spent_usd;
    assert!((spent - 0.004).abs() < 1e-12, "the meter learned the shared spend: {spent}");

    tx.data("data: {}\n\n");
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(ticket.releases(), 0, "a stream holds its place while it runs");
    lease.count_usage("gpt-4o", Usage::new(1000, 500));
    assert_eq!(ticket.settled(), vec![(1500, Some(2_000_000))]);
    assert_eq!(ticket.releases(), 0, "settled, not released");

    tx.end();
    assert!(body.frame().await.is_none());
    assert_eq!(ticket.releases(), 1, "released when the body ends");
    drop(body);
    assert_eq!(ticket.releases(), 1, "exactly once");

    // A body dropped half way (the client left) releases too.
    store.answer(Answer::Admit(None));
    let (lease, _in_flight) = choose(&pool, 0, 0.0);
    let (tx, answer, _) = call(&lease).await;
    tx.data("data: {}\n\n");
    let ticket = store.ticket(1);
    assert_eq!(ticket.releases(), 0);
    drop(answer);
    assert_eq!(ticket.releases(), 1);
    assert!(ticket.settled().is_empty(), "no usage, nothing settled");
}

#[tokio::test(start_paused = true)]
async fn a_ticket_is_released_when_the_inner_service_fails() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1))]);
    store.answer(Answer::Admit(None));
    let (lease, _in_flight) = choose(&pool, 0, 0.0);
    let inner = service_fn(|_: Req| async { Err::<Response<MockBody>, BoxError>("connection refused".into()) });
    let mut req = routed(());
    req.extensions_mut().insert(lease.clone());
    let err = SharedAdmitLayer::new().layer(inner).oneshot(req).await.unwrap_err();
    assert_eq!(err.to_string(), "connection refused");
    assert_eq!(store.ticket(0).releases(), 1);
}

#[tokio::test(start_paused = true)]
async fn refused_for_slots_is_key_busy_counted_nowhere_and_full_until_the_stores_time() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1).rpm(10).tpm(10_000))]);
    let before = pool.key_status(&id("k1")).unwrap();
    let (lease, in_flight) = choose(&pool, 400, 0.0);
    let counted = pool.key_status(&id("k1")).unwrap();
    assert_eq!((counted.requests, counted.window.requests_today), (1, 1));
    assert_eq!((counted.window.requests_last_minute, counted.window.tokens_last_minute), (1, 400));

    store.answer(Answer::Refuse(Refusal::new(RefusalReason::Slots, unix_ms_in(&pool, ms(500)))));
    let (_tx, answer, calls) = call(&lease).await;
    let err = answer.unwrap_err();
    assert!(err.downcast_ref::<KeyBusy>().is_some(), "{err}");
    assert_eq!(calls, 0, "never sent");
    drop(in_flight);
    let after = pool.key_status(&id("k1")).unwrap();
    assert_eq!((after.requests, after.in_flight), (before.requests, 0));
    assert_eq!(after.window.requests_today, before.window.requests_today);
    assert_eq!(after.window.requests_last_minute, before.window.requests_last_minute);
    assert_eq!(after.window.tokens_last_minute, before.window.tokens_last_minute);
    assert!(after.models.iter().all(|m| m.today.requests == 0), "{:?}", after.models);
    assert_eq!(after.state, KeyState::Ok, "no penalty");

    let start = Instant::now();
    match pool.provider("openai").unwrap().choose("gpt-4o", &[], None) {
        Choice::Unavailable(why) => assert!(why.full && why.recheck_at == Some(start + ms(500)), "{why:?}"),
        Choice::Leased(..) => panic!("full elsewhere"),
    }
    advance(ms(499)).await;
    assert_eq!(chosen(&pool), None);
    advance(ms(1)).await;
    assert_eq!(chosen(&pool), Some(id("k1")), "asked again at the store's time");
}

#[tokio::test(start_paused = true)]
async fn a_key_full_elsewhere_is_rechecked_within_a_second_or_as_soon_as_a_slot_frees() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1))]);
    let start = Instant::now();
    for _ in 0..2 {
        let (lease, _in_flight) = choose(&pool, 0, 0.0);
        // The earliest lease expires in a minute.
        store.answer(Answer::Refuse(Refusal::new(RefusalReason::Slots, unix_ms_in(&pool, secs(60)))));
        assert!(call(&lease).await.1.is_err());
        match pool.provider("openai").unwrap().choose("gpt-4o", &[], None) {
            Choice::Unavailable(why) => assert_eq!(why.recheck_at, Some(Instant::now() + secs(1)), "{why:?}"),
            Choice::Leased(..) => panic!("full elsewhere"),
        }
        advance(ms(999)).await;
        assert_eq!(chosen(&pool), None);
        advance(ms(1)).await;
    }
    assert_eq!(chosen(&pool), Some(id("k1")), "a second at most, not the lease's minute");

    let (lease, _in_flight) = choose(&pool, 0, 0.0);
    store.answer(Answer::Refuse(Refusal::new(RefusalReason::Slots, unix_ms_in(&pool, secs(60)))));
    assert!(call(&lease).await.1.is_err());
    assert_eq!(chosen(&pool), None);
    assert!(pool.freed_elsewhere(&id("k1")));
    assert_eq!(chosen(&pool), Some(id("k1")), "another replica freed a slot");
    assert!(!pool.freed_elsewhere("openai:00000000"), "no such key here");
    assert_eq!(Instant::now(), start + secs(2));

    // A budget all reserved elsewhere is as full, and frees the same way.
    let pool = budget_pool(&store);
    let (lease, _in_flight) = choose(&pool, 0, 0.001);
    store.answer(Answer::Refuse(Refusal::new(RefusalReason::BudgetReserved, unix_ms_in(&pool, secs(1)))));
    assert!(call(&lease).await.1.is_err());
    assert_eq!(chosen(&pool), None);
    assert!(pool.freed_elsewhere(&id("k1")));
    assert_eq!(chosen(&pool), Some(id("k1")));
}

fn budget_pool(store: &Arc<FakeStore>) -> Arc<KeyPool> {
    pool(store, vec![("k1", day_budget(1.0))])
}

#[tokio::test(start_paused = true)]
async fn refused_for_a_window_the_key_cools_as_rate_limited_until_the_stores_time() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", KeySettings::new().rpm(3))]);
    let (lease, in_flight) = choose(&pool, 0, 0.0);
    store.answer(Answer::Refuse(Refusal::new(RefusalReason::Window, unix_ms_in(&pool, secs(20)))));
    assert!(call(&lease).await.1.unwrap_err().downcast_ref::<KeyBusy>().is_some());
    drop(in_flight);
    let start = Instant::now();
    match pool.provider("openai").unwrap().choose("gpt-4o", &[], None) {
        Choice::Unavailable(why) => {
            assert_eq!((why.cooling_until, why.rate_limited), (Some(start + secs(20)), true), "{why:?}");
        }
        Choice::Leased(..) => panic!("the shared window is full"),
    }
    assert_eq!(pool.key_status(&id("k1")).unwrap().window.requests_last_minute, 0, "not counted here");
    assert!(pool.freed_elsewhere(&id("k1")));
    assert_eq!(chosen(&pool), None, "a freed slot does not empty a window");
    advance(secs(19)).await;
    assert_eq!(chosen(&pool), None);
    advance(secs(1)).await;
    assert_eq!(chosen(&pool), Some(id("k1")));
}

#[tokio::test(start_paused = true)]
async fn a_budget_spent_elsewhere_shows_exhausted_and_the_key_is_skipped() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", day_budget(0.01)), ("k2", KeySettings::new().priority(1))]);
    let (lease, in_flight) = choose(&pool, 0, 0.001);
    assert_eq!(lease.key_id().as_str(), id("k1"));
    let refusal = Refusal::new(RefusalReason::BudgetSpent, MIDNIGHT_MS).spent(Some(10_000_000));
    store.answer(Answer::Refuse(refusal));
    assert!(call(&lease).await.1.unwrap_err().downcast_ref::<KeyBusy>().is_some());
    drop(in_flight);
    assert_budget_spent(&pool, 0.01);

    // A replica's `spent` message says the same, for a key not yet refused.
    let store = FakeStore::new();
    let pool = self::pool(&store, vec![("k1", day_budget(0.01)), ("k2", KeySettings::new().priority(1))]);
    assert_eq!(chosen(&pool), Some(id("k1")));
    assert!(pool.spent_elsewhere(&id("k1"), 12_000_000));
    assert_budget_spent(&pool, 0.012);
    assert!(!pool.spent_elsewhere("openai:00000000", 1), "no such key here");
    assert!(store.asks().is_empty());
}

fn assert_budget_spent(pool: &Arc<KeyPool>, usd: f64) {
    let status = pool.key_status(&id("k1")).unwrap();
    assert_eq!((status.state, status.reason), (KeyState::Exhausted, Some("budget")));
    let budget = status.budget.unwrap();
    assert!((budget.spent_usd - usd).abs() < 1e-12 && budget.remaining_usd == 0.0, "{budget:?}");
    for _ in 0..3 {
        assert_eq!(chosen(pool), Some(id("k2")), "k1 is skipped: the next tier serves");
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_does_not_answer_lets_the_attempt_through_on_this_replicas_limits() {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1).rpm(10))]);
    store.answer(Answer::Local);
    let (lease, _in_flight) = choose(&pool, 0, 0.0);
    let (tx, answer, calls) = call(&lease).await;
    assert!(answer.is_ok() && calls == 1, "passed through");
    assert_eq!(store.asks().len(), 1);
    assert_eq!(store.tickets(), 0, "no ticket");
    lease.count_usage("gpt-4o", Usage::new(10, 10));
    let status = pool.key_status(&id("k1")).unwrap();
    assert_eq!((status.window.requests_today, status.window.requests_last_minute), (1, 1), "counted here");
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_retry_time_already_past_here_still_keeps_the_key_out_for_a_moment() {
    // Redis's clock runs behind this replica's: the time it names is past
    // here. Choosing the key again at once would ask Redis again at once,
    // and again, for as long as the key stays full there.
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", capped(1).rpm(3))]);
    let past = pool.clock().now_unix_ms() - 200;
    for reason in [RefusalReason::Window, RefusalReason::Slots, RefusalReason::BudgetReserved] {
        let (lease, _in_flight) = choose(&pool, 0, 0.0);
        store.answer(Answer::Refuse(Refusal::new(reason, past)));
        assert!(call(&lease).await.1.is_err());
        assert_eq!(chosen(&pool), None, "{reason:?}: not asked about again at once");
        advance(ms(100)).await;
        assert_eq!(chosen(&pool), Some(id("k1")), "{reason:?}: a moment later");
    }
}
