//! Shared admission under KeySelect (and RetryRotate), on a paused clock: a
//! request waiting because every key is full on other replicas' account is
//! woken by `freed_elsewhere` at once, or looks again at the recheck time;
//! a key refused by the store is passed over for another within the same
//! request, counted nowhere.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError, ProxyBody,
    body::full,
    error::{KeyBusy, LeasedError},
    extensions::Deadline,
    pool::{KeyLease, KeyPool, KeySettings, Refusal, RefusalReason},
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
    shared_admit::SharedAdmitLayer,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::{Layer, ServiceExt, service_fn, util::BoxCloneService};

#[path = "support/shared_store.rs"]
mod shared_store;

use shared_store::{Answer, FakeStore, id, pool};
use support::{routed, secs, within_virtual};

type Req = Request<Bytes>;
type Svc = BoxCloneService<Req, Response<ProxyBody>, BoxError>;

/// The keys the upstream was called with, in order.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Vec<String>>>);

impl Sent {
    fn keys(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// KeySelect -> SharedAdmit -> an upstream that answers 200 at once, naming
/// its key as UpstreamService does.
fn select_stack(pool: &Arc<KeyPool>) -> (Svc, Sent) {
    let sent = Sent::default();
    let upstream = service_fn({
        let sent = sent.clone();
        move |req: Req| {
            let lease = req.extensions().get::<KeyLease>().expect("KeySelect leased a key").clone();
            sent.0.lock().unwrap().push(lease.key_id().as_str().to_owned());
            async move {
                let mut res = Response::new(full("{}"));
                res.extensions_mut().insert(lease);
                Ok::<_, BoxError>(res)
            }
        }
    });
    let svc = KeySelectLayer::new(pool.clone())
        .layer(SharedAdmitLayer::new().layer(upstream))
        .map_response(|res| res.map(|body| body.map_err(BoxError::from).boxed_unsync()));
    (BoxCloneService::new(svc), sent)
}

fn request() -> Req {
    let mut req = routed(Bytes::from_static(br#"{"model":"openai/gpt-4o","messages":[]}"#));
    req.extensions_mut().insert(Deadline(Instant::now() + secs(60)));
    req
}

fn slots_refused_for_a_minute(pool: &KeyPool) -> Answer {
    Answer::Refuse(Refusal::new(RefusalReason::Slots, pool.clock().unix_ms(Instant::now() + secs(60))))
}

/// A pool whose one key is full on other replicas' account: its first
/// request was refused for want of a slot.
async fn full_elsewhere() -> (Arc<FakeStore>, Arc<KeyPool>, Svc, Sent) {
    let store = FakeStore::new();
    let pool = pool(&store, vec![("k1", KeySettings::new().max_concurrent(1))]);
    let (svc, sent) = select_stack(&pool);
    store.answer(slots_refused_for_a_minute(&pool));
    let err = within_virtual(svc.clone().oneshot(request())).await.unwrap_err();
    let leased = err.downcast_ref::<LeasedError>().expect("an attempt's error, with its key");
    assert!(leased.cause().downcast_ref::<KeyBusy>().is_some(), "{err}");
    assert!(sent.keys().is_empty());
    (store, pool, svc, sent)
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_a_key_full_elsewhere_is_woken_when_a_slot_frees_there() {
    let (store, pool, svc, sent) = full_elsewhere().await;
    let start = Instant::now();
    let mut waiting = task::spawn(svc.oneshot(request()));
    assert_pending!(waiting.poll());
    assert_eq!(store.asks().len(), 1, "a key full elsewhere is not asked about again");

    store.answer(Answer::Admit(None));
    assert!(pool.freed_elsewhere(&id("k1")));
    assert!(waiting.is_woken(), "the freed slot wakes the wait");
    let res = within_virtual(waiting).await.expect("admitted");
    assert_eq!(res.status(), 200);
    assert_eq!(Instant::now(), start, "before the recheck time");
    assert_eq!(sent.keys(), [id("k1")]);
    assert_eq!(store.asks().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn without_word_of_a_freed_slot_the_waiting_request_looks_again_at_the_recheck_time() {
    let (store, pool, svc, sent) = full_elsewhere().await;
    // RetryRotate chooses again when the store still refuses.
    let svc = RetryRotateLayer::new(RetryPolicy::default()).layer(svc);
    let start = Instant::now();
    let mut waiting = task::spawn(svc.oneshot(request()));
    assert_pending!(waiting.poll());

    // Still full at the recheck; admitted at the next.
    store.answer(slots_refused_for_a_minute(&pool));
    tokio::time::advance(secs(1)).await;
    assert!(waiting.is_woken());
    assert_pending!(waiting.poll());
    assert_eq!(store.asks().len(), 2);
    store.answer(Answer::Admit(None));
    let res = within_virtual(waiting).await.expect("admitted");
    assert_eq!(res.status(), 200);
    assert_eq!(Instant::now(), start + secs(2), "a look a second, not a minute's wait");
    assert_eq!(sent.keys(), [id("k1")]);
}

#[tokio::test(start_paused = true)]
async fn a_key_refused_by_the_store_is_passed_over_for_another_within_the_request() {
    let store = FakeStore::new();
    let capped = KeySettings::new().max_concurrent(1);
    let pool = pool(&store, vec![("k1", capped.clone()), ("k2", capped.priority(1))]);
    let (inner, sent) = select_stack(&pool);
    let svc = RetryRotateLayer::new(RetryPolicy::default()).layer(inner);
    store.answer(slots_refused_for_a_minute(&pool));
    store.answer(Answer::Admit(None));

    let res = within_virtual(svc.oneshot(request())).await.expect("served by k2");
    assert_eq!(res.status(), 200);
    let asked: Vec<String> = store.asks().iter().map(|ask| ask.key.as_str().to_owned()).collect();
    assert_eq!(asked, [id("k1"), id("k2")], "k1 first (its tier), then k2");
    assert_eq!(sent.keys(), [id("k2")], "only k2 was sent to");
    let statuses = pool.key_statuses();
    let requests: Vec<u64> = statuses.iter().map(|status| status.requests).collect();
    assert_eq!(requests, [0, 1], "the refused attempt is counted nowhere");
    assert_eq!(statuses[0].window.requests_today, 0);
    drop(res);
    assert_eq!(store.ticket(0).releases(), 1);
}
