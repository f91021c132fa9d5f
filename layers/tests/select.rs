//! KeySelectLayer alone: which key each request gets, and how long it stays
//! counted in flight (the guard lives in the response body).

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use keyrelay_layers::{
    BoxError,
    body::LeasedBody,
    extensions::{Endpoint, RouteTarget},
    pool::{KeyId, KeyLease, KeyPool, Selection},
    provider::{Provider, ProviderId},
    select::KeySelectLayer,
};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use support::{MockBody, NOWHERE, in_flight, key_id, pool, reply, requests, routed, secrets, within};

type Req = Request<()>;

/// Runs one request whose inner answers at once with `body`; returns the
/// lease the inner service saw and the response.
async fn lease_with<B>(pool: &Arc<KeyPool>, req: Req, body: B) -> Result<(KeyLease, Response<LeasedBody<B>>), BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let seen = Arc::new(Mutex::new(None));
    let body = Arc::new(Mutex::new(Some(body)));
    let inner = service_fn({
        let seen = seen.clone();
        move |req: Req| {
            *seen.lock().unwrap() = req.extensions().get::<KeyLease>().cloned();
            let body = body.lock().unwrap().take().expect("one request");
            async move { Ok::<_, BoxError>(Response::new(body)) }
        }
    });
    let res = within(KeySelectLayer::new(pool.clone()).layer(inner).oneshot(req)).await?;
    let lease = seen.lock().unwrap().take().expect("the inner saw a KeyLease");
    Ok((lease, res))
}

async fn lease(pool: &Arc<KeyPool>) -> (KeyLease, Response<LeasedBody<Empty<Bytes>>>) {
    lease_with(pool, routed(()), Empty::<Bytes>::new()).await.unwrap()
}

fn two_providers() -> Arc<KeyPool> {
    let p = |id| Provider::openai_compatible(id, NOWHERE).unwrap();
    KeyPool::builder()
        .provider(p("openai"), Selection::LeastUsed, secrets(&["k1"]))
        .provider(p("groq"), Selection::LeastUsed, secrets(&["g1", "g2"]))
        .provider(p("empty"), Selection::LeastUsed, vec![])
        .build()
        .unwrap()
}

fn to(provider: &str) -> Req {
    let mut req = Request::new(());
    req.extensions_mut().insert(RouteTarget::new(ProviderId::new(provider), "m", Endpoint::ChatCompletions, false));
    req
}

#[tokio::test]
async fn leases_a_key_of_the_target_provider() {
    let pool = two_providers();
    let (lease, _res) = lease_with(&pool, to("groq"), Empty::<Bytes>::new()).await.unwrap();
    assert_eq!(lease.provider_id().as_str(), "groq");
    assert_eq!(lease.key_id(), &key_id("groq", "g1"));
    let (name, value) = lease.auth_header();
    assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer g1"));
    assert_eq!(in_flight(&pool, "openai"), [0], "other providers are untouched");
}

#[tokio::test]
async fn a_provider_without_keys_is_503_no_usable_key() {
    let pool = two_providers();
    let err = lease_with(&pool, to("empty"), Empty::<Bytes>::new()).await.map(|_| ()).unwrap_err();
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::SERVICE_UNAVAILABLE, "no_usable_key"));
    assert!(reply.message.contains("EMPTY_API_KEY"), "{}", reply.message);
}

#[tokio::test]
async fn a_missing_route_target_is_a_500_naming_it() {
    let err = lease_with(&pool(Selection::LeastUsed, &["k1"]), Request::new(()), Empty::<Bytes>::new())
        .await
        .map(|_| ())
        .unwrap_err();
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"));
    assert!(reply.message.contains("RouteTarget"), "{}", reply.message);
}

#[tokio::test]
async fn an_unknown_provider_is_400() {
    let err = lease_with(&two_providers(), to("nope"), Empty::<Bytes>::new()).await.map(|_| ()).unwrap_err();
    assert_eq!(reply(&err).code, "unknown_provider");
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_inner_service() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<()>, _>(KeySelectLayer::new(two_providers()));
    assert_ready_ok!(svc.poll_ready());
    let err = within(svc.call(to("empty"))).await.unwrap_err();
    assert_eq!(reply(&err).code, "no_usable_key");
    assert_pending!(handle.poll_request());
}

#[tokio::test]
async fn the_key_stays_in_flight_while_the_body_streams_and_is_released_at_its_end() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (tx, body) = MockBody::channel();
    let (_, res) = lease_with(&pool, routed(()), body).await.unwrap();
    assert_eq!(in_flight(&pool, "openai"), [1], "headers are out, the body is not");

    let mut body = res.into_body();
    tx.data("data: one\n\n");
    let frame = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: one\n\n");
    assert_eq!(in_flight(&pool, "openai"), [1], "still streaming");

    let mut next = task::spawn(body.frame());
    assert_pending!(next.poll());
    assert_eq!(in_flight(&pool, "openai"), [1], "waiting for the next chunk");
    tx.end();
    assert!(next.is_woken());
    assert!(next.await.is_none());
    assert_eq!(in_flight(&pool, "openai"), [0], "released at the end of the stream");
    drop(body);
    assert_eq!(in_flight(&pool, "openai"), [0], "and not released twice");
    assert_eq!(requests(&pool, "openai"), [1]);
}

#[tokio::test]
async fn the_key_is_released_when_the_body_fails() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (tx, body) = MockBody::channel();
    let (_, res) = lease_with(&pool, routed(()), body).await.unwrap();
    let mut body = res.into_body();
    tx.data("partial");
    within(body.frame()).await.unwrap().unwrap();
    tx.error("upstream reset");
    let err = within(body.frame()).await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
    assert_eq!(in_flight(&pool, "openai"), [0], "released on the error, while the body still exists");
    drop(body);
    assert_eq!(in_flight(&pool, "openai"), [0]);
}

#[tokio::test]
async fn the_key_is_released_when_the_body_is_dropped_early() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (tx, body) = MockBody::channel();
    let (_, res) = lease_with(&pool, routed(()), body).await.unwrap();
    tx.data("never read");
    assert_eq!(in_flight(&pool, "openai"), [1]);
    drop(res);
    assert_eq!(in_flight(&pool, "openai"), [0], "the client went away");
}

#[tokio::test]
async fn the_key_is_released_on_the_last_frame_of_a_known_length_body() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (_, res) = lease_with(&pool, routed(()), Full::new(Bytes::from_static(b"{}"))).await.unwrap();
    let mut body = res.into_body();
    within(body.frame()).await.unwrap().unwrap();
    assert_eq!(in_flight(&pool, "openai"), [0], "a body that says it is done may never be polled again");
}

#[tokio::test]
async fn the_key_is_released_when_the_inner_service_fails() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let inner = service_fn(|_: Req| async { Err::<Response<Empty<Bytes>>, BoxError>("upstream unreachable".into()) });
    let err = KeySelectLayer::new(pool.clone()).layer(inner).oneshot(routed(())).await.unwrap_err();
    assert_eq!(err.to_string(), "upstream unreachable");
    assert_eq!(in_flight(&pool, "openai"), [0]);
}

#[tokio::test]
async fn the_key_is_released_when_the_request_is_dropped_before_its_headers() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Empty<Bytes>>, _>(KeySelectLayer::new(pool.clone()));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(routed(())));
    // The key is chosen when the future first runs.
    assert_pending!(fut.poll());
    let (_req, _responder) = within(handle.next_request()).await.unwrap();
    assert_pending!(fut.poll());
    assert_eq!(in_flight(&pool, "openai"), [1], "counted from the moment it is chosen");
    drop(fut);
    assert_eq!(in_flight(&pool, "openai"), [0]);
}

#[tokio::test]
async fn least_used_spreads_sequential_requests_evenly_across_three_keys() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    for _ in 0..30 {
        let (_, res) = lease(&pool).await;
        drop(res);
    }
    assert_eq!(requests(&pool, "openai"), [10, 10, 10]);
    assert_eq!(in_flight(&pool, "openai"), [0, 0, 0]);
}

#[tokio::test]
async fn least_used_puts_concurrent_requests_on_distinct_keys() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    let mut held = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (lease, res) = lease(&pool).await;
        keys.push(lease.key_id().clone());
        held.push(res);
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(in_flight(&pool, "openai"), [1, 1, 1]);
    drop(held);
    assert_eq!(in_flight(&pool, "openai"), [0, 0, 0]);
}

#[tokio::test]
async fn least_used_spreads_requests_still_waiting_for_their_headers() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Empty<Bytes>>, _>(KeySelectLayer::new(pool.clone()));
    let mut waiting = Vec::new();
    let mut responders = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..3 {
        assert_ready_ok!(svc.poll_ready());
        let mut fut = task::spawn(svc.call(routed(())));
        assert_pending!(fut.poll());
        waiting.push(fut);
        let (req, responder) = within(handle.next_request()).await.unwrap();
        keys.push(req.extensions().get::<KeyLease>().unwrap().key_id().clone());
        responders.push(responder);
    }
    let ids = ["k1", "k2", "k3"].map(|k| key_id("openai", k));
    assert_eq!(keys, ids);
    assert_eq!(in_flight(&pool, "openai"), [1, 1, 1]);
    drop(waiting);
    assert_eq!(in_flight(&pool, "openai"), [0, 0, 0]);
}

#[tokio::test]
async fn least_used_avoids_a_key_with_a_stream_in_flight() {
    let pool = pool(Selection::LeastUsed, &["k1", "k2", "k3"]);
    let (busy, long_stream) = lease(&pool).await;
    for _ in 0..6 {
        let (lease, res) = lease(&pool).await;
        assert_ne!(lease.key_id(), busy.key_id(), "a free key was available");
        drop(res);
    }
    drop(long_stream);
    assert_eq!(in_flight(&pool, "openai"), [0, 0, 0]);
}

#[tokio::test]
async fn round_robin_cycles_through_the_keys_in_order() {
    let pool = pool(Selection::RoundRobin, &["k1", "k2", "k3"]);
    let mut seen: Vec<KeyId> = Vec::new();
    let mut held = Vec::new();
    for i in 0..7 {
        let (lease, res) = lease(&pool).await;
        seen.push(lease.key_id().clone());
        // Holding some responses open does not change the turn order.
        if i % 2 == 0 {
            held.push(res);
        }
    }
    let ids = |s: &[&str]| s.iter().map(|k| key_id("openai", k)).collect::<Vec<_>>();
    assert_eq!(seen, ids(&["k1", "k2", "k3", "k1", "k2", "k3", "k1"]));
    drop(held);
    assert_eq!(in_flight(&pool, "openai"), [0, 0, 0]);
}

#[tokio::test]
async fn the_inner_readiness_is_taken_after_the_key_is_chosen() {
    // Always ready to choose; the inner service's readiness is awaited once
    // a key is leased, so a long wait for a key holds nothing inside.
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<()>, _>(KeySelectLayer::new(pool.clone()));
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(routed(())));
    assert_pending!(fut.poll(), "waits for the inner service");
    assert_eq!(in_flight(&pool, "openai"), [1], "with its key leased");
    handle.allow(1);
    let answer = async {
        let (req, responder) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<KeyLease>().is_some());
        responder.send_response(Response::new(()));
    };
    let (res, ()) = within(async { tokio::join!(fut, answer) }).await;
    let res = res.unwrap();
    let lease = res.extensions().get::<KeyLease>().expect("the answer names its key");
    assert_eq!(lease.key_id(), &key_id("openai", "k1"));
}

fn bound_to(provider: &str, key: KeyId) -> Req {
    let mut req = Request::new(());
    let target = RouteTarget::new(ProviderId::new(provider), "m", Endpoint::Responses, false)
        .with_required_key(keyrelay_layers::extensions::RequiredKey::new(key, "resp_1"));
    req.extensions_mut().insert(target);
    req
}

#[tokio::test]
async fn a_bound_request_uses_its_key_only_and_says_why_when_it_cannot() {
    let pool = two_providers();
    let g2 = key_id("groq", "g2");
    // Least-used would choose g1, twice; the binding says g2.
    let (_first, _held) = lease_with(&pool, bound_to("groq", g2.clone()), Empty::<Bytes>::new()).await.unwrap();
    let (second, _) = lease_with(&pool, bound_to("groq", g2.clone()), Empty::<Bytes>::new()).await.unwrap();
    assert_eq!(second.key_id(), &g2);
    assert_eq!(in_flight(&pool, "groq"), [0, 1], "g1 idle, g2 holds the first body");

    pool.set_disabled(g2.as_str(), true);
    let err = lease_with(&pool, bound_to("groq", g2.clone()), Empty::<Bytes>::new()).await.unwrap_err();
    let err = reply(&err);
    assert_eq!((err.status, err.code), (StatusCode::CONFLICT, "response_key_unavailable"));
    assert!(err.message.contains("resp_1") && err.message.contains("disabled"), "{}", err.message);

    let gone = key_id("groq", "g3");
    let err = reply(&lease_with(&pool, bound_to("groq", gone), Empty::<Bytes>::new()).await.unwrap_err());
    assert_eq!((err.status, err.code), (StatusCode::NOT_FOUND, "response_not_found"));
}

#[tokio::test]
async fn a_token_count_the_proxy_estimates_leases_no_key() {
    let p = Provider::new("anthropic", NOWHERE, keyrelay_layers::provider::Dialect::Anthropic).unwrap();
    let pool = KeyPool::builder().provider(p, Selection::LeastUsed, secrets(&["a1"])).build().unwrap();
    let inner = service_fn(|req: Req| {
        assert!(req.extensions().get::<KeyLease>().is_none(), "no key for an estimate");
        async { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) }
    });
    let mut req = Request::new(());
    // Gemini's countTokens for an Anthropic model: Anthropic cannot count it.
    req.extensions_mut().insert(RouteTarget::new(ProviderId::new("anthropic"), "m", Endpoint::CountTokens, false));
    within(KeySelectLayer::new(pool.clone()).layer(inner).oneshot(req)).await.unwrap();
    assert_eq!(requests(&pool, "anthropic"), [0]);
}
