//! KeyConcurrencyLayer alone: the (key, model) permit lives in the response
//! body until it ends, fails or is dropped; a key whose slot is gone is
//! KeyBusy at once; without a cap there is no permit at all.

mod support;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError,
    body::GuardedBody,
    concurrency::KeyConcurrencyLayer,
    error::KeyBusy,
    pool::{Choice, InFlight, KeyLease, KeyPool, ProviderOptions, Selection, SlotPermit},
};
use tokio::sync::Semaphore;
use tokio_test::{assert_pending, task};
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use support::{BodyTx, MockBody, NOWHERE, openai, reply, routed, secrets, within};

type Req = Request<()>;

fn pool(cap: usize) -> Arc<KeyPool> {
    let options = ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(cap);
    KeyPool::builder().provider_with(openai(NOWHERE), options, secrets(&["k1"])).build().unwrap()
}

/// A lease of the pool's only key, as KeySelect would attach it.
fn lease(pool: &Arc<KeyPool>) -> (KeyLease, InFlight) {
    match pool.provider("openai").unwrap().choose("gpt-4o", &[], None) {
        Choice::Leased(lease, in_flight) => (lease, in_flight),
        Choice::Unavailable(why) => panic!("{why:?}"),
    }
}

fn leased(lease: &KeyLease) -> Req {
    let mut req = routed(());
    req.extensions_mut().insert(lease.clone());
    req
}

fn slots(lease: &KeyLease) -> Arc<Semaphore> {
    lease.slots("gpt-4o").expect("capped")
}

/// Runs one request through KeyConcurrency whose inner answers with a
/// scripted body; returns the body's sender and the response.
async fn call(lease: &KeyLease) -> (BodyTx, Result<Response<GuardedBody<MockBody, SlotPermit>>, BoxError>) {
    let (tx, body) = MockBody::channel();
    let body = Mutex::new(Some(body));
    let inner = service_fn(move |_: Req| {
        let body = body.lock().unwrap().take().expect("one call");
        async move { Ok::<_, BoxError>(Response::new(body)) }
    });
    let res = within(KeyConcurrencyLayer::new().layer(inner).oneshot(leased(lease))).await;
    (tx, res)
}

#[tokio::test]
async fn the_permit_is_held_until_the_body_ends() {
    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let (tx, res) = call(&lease).await;
    let mut body = res.unwrap().into_body();
    assert_eq!(slots(&lease).available_permits(), 0, "headers are out, the body is not");
    tx.data("data: one\n\n");
    within(body.frame()).await.unwrap().unwrap();
    assert_eq!(slots(&lease).available_permits(), 0, "still streaming");
    tx.end();
    assert!(within(body.frame()).await.is_none());
    assert_eq!(slots(&lease).available_permits(), 1, "released at the end, the body still alive");
    drop(body);
    assert_eq!(slots(&lease).available_permits(), 1, "and not released twice");
}

#[tokio::test]
async fn the_permit_is_released_when_the_body_fails() {
    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let (tx, res) = call(&lease).await;
    let mut body = res.unwrap().into_body();
    tx.error("connection reset");
    assert!(within(body.frame()).await.unwrap().is_err());
    assert_eq!(slots(&lease).available_permits(), 1);
}

#[tokio::test]
async fn the_permit_is_released_when_the_client_goes_away() {
    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let (tx, res) = call(&lease).await;
    tx.data("never read");
    assert_eq!(slots(&lease).available_permits(), 0);
    drop(res);
    assert_eq!(slots(&lease).available_permits(), 1);
}

#[tokio::test]
async fn the_permit_is_released_when_the_inner_fails_or_the_call_is_dropped() {
    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let failing = service_fn(|_: Req| async { Err::<Response<MockBody>, BoxError>("unreachable".into()) });
    let err = within(KeyConcurrencyLayer::new().layer(failing).oneshot(leased(&lease))).await.unwrap_err();
    assert_eq!(err.to_string(), "unreachable");
    assert_eq!(slots(&lease).available_permits(), 1);

    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<()>, _>(KeyConcurrencyLayer::new());
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(leased(&lease)));
    assert_pending!(fut.poll());
    let (_req, _respond) = within(handle.next_request()).await.unwrap();
    assert_eq!(slots(&lease).available_permits(), 0, "taken when called");
    drop(fut);
    assert_eq!(slots(&lease).available_permits(), 1, "given back with the abandoned call");
}

#[tokio::test]
async fn a_key_whose_last_slot_is_gone_is_key_busy_without_calling_the_inner() {
    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let taken = slots(&lease).try_acquire_owned().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let calls = calls.clone();
        move |_: Req| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<_, BoxError>(Response::new(MockBody::script(vec![]))) }
        }
    });
    let err = within(KeyConcurrencyLayer::new().layer(inner).oneshot(leased(&lease))).await.unwrap_err();
    assert!(err.downcast_ref::<KeyBusy>().is_some(), "{err}");
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code, reply.retry_after), (StatusCode::SERVICE_UNAVAILABLE, "key_busy", Some(1)));
    assert!(reply.message.contains(lease.key_id().as_str()), "{}", reply.message);
    assert_eq!(calls.load(SeqCst), 0);
    drop(taken);
}

#[tokio::test]
async fn without_a_cap_there_is_no_permit_and_no_limit() {
    let pool = pool(0);
    let (lease, _in_flight) = lease(&pool);
    assert!(lease.slots("gpt-4o").is_none());
    let mut held = Vec::new();
    for _ in 0..20 {
        let (tx, res) = call(&lease).await;
        held.push((tx, res.unwrap()));
    }
    assert!(lease.slots("gpt-4o").is_none());
}

#[tokio::test]
async fn a_request_without_a_lease_or_a_target_is_a_500_naming_it() {
    let inner = service_fn(|_: Req| async { Ok::<_, BoxError>(Response::new(MockBody::script(vec![]))) });
    let svc = KeyConcurrencyLayer::new().layer(inner);
    let err = within(svc.clone().oneshot(routed(()))).await.unwrap_err();
    let reply = reply(&err);
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.message.contains("KeyLease"), "{}", reply.message);

    let pool = pool(1);
    let (lease, _in_flight) = lease(&pool);
    let mut req = Request::new(());
    req.extensions_mut().insert(lease);
    let err = within(svc.oneshot(req)).await.unwrap_err();
    assert!(support::reply(&err).message.contains("RouteTarget"));
}
