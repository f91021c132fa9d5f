//! The upstream leaf: `prepare` (pure), then `UpstreamService` and
//! `ModelCatalog` against a scripted hyper server on 127.0.0.1:0.
//!
//! Over 600 lines on purpose: every test drives the same scripted server,
//! and each test file is a binary of its own to link.
#![allow(clippy::disallowed_methods, reason = "the mock server runs as tasks; the no-spawn rule is the library's")]

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyrelay_layers::{
    BoxError,
    error::MissingExtension,
    extensions::{Endpoint, RouteTarget},
    parse::route_target,
    pool::{KeyLease, KeyPool, Secret, Selection},
    provider::{Provider, ProviderId},
    upstream::{ClientOptions, HttpsClient, ModelCatalog, UpstreamService, build_client, prepare},
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_test::{assert_pending, task};
use tower::{Service, ServiceExt};

use support::{MockBody, NOWHERE, key_id, openai, pool, pool_at, reply, secrets, target, within};

// === prepare: the provider's request, built without I/O ===

/// A request as KeySelect hands it to the upstream: target and lease inside.
fn leased(pool: &KeyPool, mut req: Request<Bytes>, target: RouteTarget) -> Request<Bytes> {
    let (lease, _in_flight) = pool.provider("openai").unwrap().lease().unwrap();
    req.extensions_mut().insert(target);
    req.extensions_mut().insert(lease);
    req
}

/// A chat request whose target Parse found in `body`.
fn parsed(pool: &KeyPool, body: &'static str) -> Request<Bytes> {
    let bytes = Bytes::from_static(body.as_bytes());
    let target = route_target(&bytes, Endpoint::ChatCompletions, pool).unwrap();
    leased(pool, Request::post("/v1/chat/completions").body(bytes).unwrap(), target)
}

#[test]
fn prepare_builds_the_uri_from_the_api_base_and_the_endpoint() {
    for (base, endpoint, expected) in [
        ("http://127.0.0.1:9/v1", Endpoint::ChatCompletions, "http://127.0.0.1:9/v1/chat/completions"),
        ("http://127.0.0.1:9/v1/", Endpoint::Embeddings, "http://127.0.0.1:9/v1/embeddings"),
        (
            "https://api.groq.com/openai/v1",
            Endpoint::ChatCompletions,
            "https://api.groq.com/openai/v1/chat/completions",
        ),
    ] {
        let pool = pool_at(base, Selection::LeastUsed, &["k1"]);
        let target = RouteTarget::new(ProviderId::new("openai"), "m", endpoint, false);
        // The client's own path and query never reach the provider.
        let req = Request::post("/embeddings?debug=1").body(Bytes::new()).unwrap();
        let (up, _, _) = prepare(leased(&pool, req, target)).unwrap();
        assert_eq!(up.uri(), expected);
        assert_eq!(up.method(), Method::POST);
        assert_eq!(up.version(), Version::HTTP_11);
    }
}

#[test]
fn prepare_sends_the_leased_key_as_a_sensitive_bearer_token() {
    let pool = pool(Selection::RoundRobin, &["k1", "k2"]);
    let _first = pool.provider("openai").unwrap().lease();
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer client-proxy-key")
        .body(Bytes::new())
        .unwrap();
    let (up, lease, _) = prepare(leased(&pool, req, target(false))).unwrap();
    assert_eq!(lease.key_id(), &key_id("openai", "k2"));
    let auth = up.headers().get_all(header::AUTHORIZATION);
    assert_eq!(auth.iter().collect::<Vec<_>>(), ["Bearer k2"], "exactly one, the leased key");
    assert!(up.headers()[header::AUTHORIZATION].is_sensitive());
}

#[test]
fn prepare_drops_client_credentials_hop_by_hop_host_and_content_length() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let mut req = Request::post("/v1/chat/completions").body(Bytes::new()).unwrap();
    for (name, value) in [
        ("authorization", "Bearer client-key"),
        ("x-api-key", "client-key"),
        ("x-goog-api-key", "client-key"),
        ("api-key", "client-key"),
        ("cookie", "session=1"),
        ("proxy-authorization", "Basic eDp5"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("host", "proxy.local:8080"),
        ("content-length", "999"),
        ("content-type", "application/json; charset=utf-8"),
        ("accept", "text/event-stream"),
        ("openai-organization", "org-1"),
        ("x-request-id", "r-1"),
    ] {
        req.headers_mut().append(name, value.parse().unwrap());
    }
    let (up, _, _) = prepare(leased(&pool, req, target(false))).unwrap();
    let mut left: Vec<_> = up.headers().keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["accept", "authorization", "content-type", "openai-organization", "x-request-id"]);
    assert_eq!(up.headers()["authorization"], "Bearer k1");
    assert_eq!(up.headers()["content-type"], "application/json; charset=utf-8", "the client's content type is kept");
}

#[test]
fn prepare_defaults_the_content_type_to_json() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let req = Request::post("/v1/chat/completions").body(Bytes::new()).unwrap();
    let (up, _, _) = prepare(leased(&pool, req, target(false))).unwrap();
    assert_eq!(up.headers()[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn prepare_rewrites_only_the_model_token() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (up, _, stream) = prepare(parsed(
        &pool,
        r#"{"messages":[{"role":"user","content":"say openai/gpt-4o"}],  "model" : "openai/gpt-4o" ,"stream":true,"x":{"model":"keep"}}"#,
    ))
    .unwrap();
    assert!(stream.stream(), "the stream flag comes back for the response side");
    let body = within(up.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(
        body,
        r#"{"messages":[{"role":"user","content":"say openai/gpt-4o"}],  "model" : "gpt-4o" ,"stream":true,"x":{"model":"keep"},"stream_options":{"include_usage":true}}"#,
        "the model token swapped, usage asked for, every other byte as sent"
    );
}

#[tokio::test]
async fn prepare_leaves_the_body_alone_without_a_model_span() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let body = r#"{"model":"openai/gpt-4o"}"#;
    let req = Request::post("/v1/chat/completions").body(Bytes::from_static(body.as_bytes())).unwrap();
    let (up, _, stream) = prepare(leased(&pool, req, target(false))).unwrap();
    assert!(!stream.stream());
    let sent = within(up.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(sent, body);
}

#[test]
fn prepare_keeps_per_request_state_in_the_proxy() {
    #[derive(Clone, Debug)]
    struct Private;
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let mut req = Request::post("/v1/chat/completions").body(Bytes::new()).unwrap();
    req.extensions_mut().insert(Private);
    let (up, _, _) = prepare(leased(&pool, req, target(false))).unwrap();
    assert!(up.extensions().get::<Private>().is_none());
    assert!(up.extensions().get::<RouteTarget>().is_none());
    assert!(up.extensions().get::<KeyLease>().is_none());
}

#[test]
fn prepare_without_target_or_lease_is_a_500_naming_the_missing_one() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let mut no_lease = Request::new(Bytes::new());
    no_lease.extensions_mut().insert(target(false));
    let err = prepare(no_lease).map(|_| ()).unwrap_err();
    assert!(err.is::<MissingExtension>());
    assert!(reply(&err).message.contains("KeyLease"));

    let (lease, _) = pool.provider("openai").unwrap().lease().unwrap();
    let mut no_target = Request::new(Bytes::new());
    no_target.extensions_mut().insert(lease);
    let err = prepare(no_target).map(|_| ()).unwrap_err();
    assert_eq!(reply(&err).status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply(&err).message.contains("RouteTarget"));
}

// === a scripted upstream ===

type MockResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// One request as the mock upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A hyper HTTP/1 server on 127.0.0.1:0 that records every request and
/// answers with `respond`.
#[derive(Debug)]
struct MockUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    async fn start(respond: impl Fn(&Seen) -> MockResponse + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let accept = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, respond) = (seen.clone(), respond.clone());
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, respond) = (seen.clone(), respond.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let request = Seen {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: body.collect().await?.to_bytes(),
                            };
                            seen.lock().unwrap().push(request.clone());
                            Ok::<_, hyper::Error>(respond(&request))
                        }
                    });
                    tokio::spawn(async move {
                        let conn =
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                        // A scripted body error aborts the connection on purpose.
                        let _ = conn.await;
                    });
                }
            }
        });
        Self { addr, seen, accept }
    }

    fn api_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn full(status: StatusCode, content_type: &str, body: &'static str) -> MockResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

/// Answers the first request with `body`, streamed as the test feeds it.
fn streaming(body: MockBody) -> impl Fn(&Seen) -> MockResponse + Send + Sync + 'static {
    let body = Mutex::new(Some(body));
    move |_| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::SET_COOKIE, "__cf_bm=tracking")
            .body(body.lock().unwrap().take().expect("one request").boxed_unsync())
            .unwrap()
    }
}

/// An address where nothing listens: bound, then released.
fn refused_base() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn client() -> HttpsClient {
    build_client(&ClientOptions::default()).unwrap()
}

fn chat(pool: &KeyPool, body: &'static str, stream: bool) -> Request<Bytes> {
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer client-proxy-key")
        .header("x-request-id", "r-1")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap();
    leased(pool, req, target(stream))
}

async fn send(req: Request<Bytes>) -> Result<Response<keyrelay_layers::ProxyBody>, BoxError> {
    let mut svc = UpstreamService::new(client());
    let svc = within(svc.ready()).await?;
    within(svc.call(req)).await
}

/// Through RetryRotate too, as in the stack.
async fn send_retrying(req: Request<Bytes>) -> Result<Response<keyrelay_layers::ProxyBody>, BoxError> {
    use keyrelay_layers::retry::RetryRotateLayer;
    let svc = tower::Layer::layer(&RetryRotateLayer::default(), UpstreamService::new(client()));
    within(tower::ServiceExt::oneshot(svc, req)).await
}

const CHAT_BODY: &str = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;

#[tokio::test]
async fn the_response_streams_frame_by_frame() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);

    let res = send(chat(&pool, CHAT_BODY, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "headers arrive before any body frame");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert!(res.headers().get(header::SET_COOKIE).is_none(), "provider cookies stay out");
    assert!(res.headers().get(header::TRANSFER_ENCODING).is_none(), "hop-by-hop stays out");
    let mut body = res.into_body();

    tx.data("data: {\"n\":1}\n\n");
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: {\"n\":1}\n\n");

    // The second frame does not exist yet: the first was not held back for it.
    let mut second = task::spawn(body.frame());
    assert_pending!(second.poll());
    tx.data("data: [DONE]\n\n");
    let second = within(second).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: [DONE]\n\n");

    tx.end();
    assert!(within(body.frame()).await.is_none(), "a clean end adds nothing");
}

#[tokio::test]
async fn the_provider_sees_the_leased_key_and_the_clients_body() {
    let mock = MockUpstream::start(|_| full(StatusCode::OK, "application/json", "{}")).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let body = r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let res = send(parsed(&pool, body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);

    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer k1");
    assert_eq!(seen.headers["host"], mock.addr.to_string());
    let expected = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(seen.body, expected);
    assert_eq!(seen.headers["content-length"], expected.len().to_string(), "framed for the rewritten body");
}

#[tokio::test]
async fn the_answer_names_the_key_key_select_leased_and_nothing_else() {
    let mock = MockUpstream::start(|_| full(StatusCode::OK, "application/json", "{}")).await;
    let pool = pool_at(&mock.api_base(), Selection::RoundRobin, &["k1", "k2"]);
    let _first = pool.provider("openai").unwrap().lease();
    let res = send(chat(&pool, CHAT_BODY, false)).await.unwrap();
    assert!(res.extensions().get::<KeyLease>().is_none(), "the upstream's answer carries no extension");
    let svc = tower::Layer::layer(
        &keyrelay_layers::select::KeySelectLayer::new(pool.clone()),
        UpstreamService::new(client()),
    );
    let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(CHAT_BODY.as_bytes())).unwrap();
    req.extensions_mut().insert(target(false));
    let res = within(svc.oneshot(req)).await.unwrap();
    let lease = res.extensions().get::<KeyLease>().expect("KeySelect names the key on the response");
    assert_eq!(mock.seen()[1].headers["authorization"], format!("Bearer {}", lease.secret().expose()));
}

#[tokio::test]
async fn an_upstream_error_status_is_a_response_not_an_error() {
    let mock = MockUpstream::start(|_| {
        let mut res = full(
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        res.headers_mut().insert(header::RETRY_AFTER, "20".parse().unwrap());
        res
    })
    .await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let res = send(chat(&pool, CHAT_BODY, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::RETRY_AFTER], "20");
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "passed through as is");
}

#[tokio::test]
async fn a_refused_connection_is_502_upstream_unreachable() {
    let pool = pool_at(&refused_base(), Selection::LeastUsed, &["k1"]);
    let err = send(chat(&pool, CHAT_BODY, false)).await.unwrap_err();
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::BAD_GATEWAY, "upstream_unreachable"));
    assert!(reply.message.contains("`openai`"), "{}", reply.message);
    assert!(!reply.message.contains("k1"), "{}", reply.message);
}

#[tokio::test]
async fn a_request_without_a_lease_fails_before_any_io() {
    let mut req = Request::new(Bytes::new());
    req.extensions_mut().insert(target(false));
    let err = send(req).await.unwrap_err();
    assert!(err.is::<MissingExtension>(), "{err}");
}

/// Splits an SSE text into its events' `data:` payloads.
fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.trim_start_matches('\n').strip_prefix("data: ").unwrap_or(e))
        .collect()
}

#[tokio::test]
async fn a_stream_that_breaks_midway_ends_with_one_stream_broken_event_and_counts_against_its_key() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let res = send(chat(&pool, CHAT_BODY, true)).await.unwrap();
    let mut body = res.into_body();
    tx.data("data: {\"n\":1}\n\n");
    within(body.frame()).await.unwrap().unwrap();
    tx.error("upstream process died");

    let rest = within(body.collect()).await.expect("the break is an event, not an error");
    let rest = rest.to_bytes();
    let text = std::str::from_utf8(&rest).unwrap();
    let events = sse_data(text);
    assert_eq!(events.len(), 1, "{text:?}");
    let error: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(error["error"]["code"], "stream_broken");
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(error["error"]["param"].is_null());
    assert_eq!(pool.key_statuses()[0].today.failures_transient, 1, "the break is its key's transient failure");
    drop(tx);
}

#[tokio::test]
async fn a_stream_broken_inside_an_event_closes_that_event_first() {
    // Without the proxy's own usage request, bytes pass as they come: a half
    // event is closed before the error event.
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let provider = openai(&mock.api_base()).with_stream_usage(false);
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, secrets(&["k1"])).build().unwrap();
    let res = send_retrying(chat(&pool, CHAT_BODY, true)).await.unwrap();
    let mut body = res.into_body();
    tx.data("data: {\"n\":");
    within(body.frame()).await.unwrap().unwrap();
    tx.error("reset");
    let rest = within(body.collect()).await.unwrap().to_bytes();
    assert!(rest.starts_with(b"\n\ndata: {\"error\""), "{rest:?}");
    drop(tx);
}

#[tokio::test]
async fn a_half_event_never_reaches_the_client_when_the_proxy_frames_the_stream() {
    // With the proxy's usage request (the default) the stream is framed: a
    // half event is held, and a break leaves only the error event.
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let res = send_retrying(chat(&pool, CHAT_BODY, true)).await.unwrap();
    let mut body = res.into_body();
    tx.data("data: {\"n\":1}\n\n");
    let first = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: {\"n\":1}\n\n");
    tx.data("data: {\"n\":");
    tx.error("reset");
    let rest = within(body.collect()).await.unwrap().to_bytes();
    let text = std::str::from_utf8(&rest).unwrap();
    assert!(text.starts_with("data: {\"error\""), "only the error event after the whole one: {text:?}");
    drop(tx);
}

#[tokio::test]
async fn the_usage_chunk_the_proxy_asked_for_is_counted_and_dropped() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let svc = tower::Layer::layer(
        &keyrelay_layers::retry::RetryRotateLayer::default(),
        tower::Layer::layer(
            &keyrelay_layers::select::KeySelectLayer::new(pool.clone()),
            UpstreamService::new(client()),
        ),
    );
    let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(CHAT_BODY.as_bytes())).unwrap();
    req.extensions_mut().insert(target(true));
    let res = within(svc.oneshot(req)).await.unwrap();
    let sent: Value = serde_json::from_slice(&mock.seen()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "the proxy asks for usage");
    tx.data("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
    tx.data("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n");
    tx.data("data: [DONE]\n\n");
    drop(tx);
    let text = String::from_utf8(within(res.into_body().collect()).await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(!text.contains("usage"), "the client did not ask for it: {text}");
    assert!(text.contains("\"hi\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    let status = &pool.key_statuses()[0];
    assert_eq!((status.today.tokens_in, status.today.tokens_out), (7, 3), "counted for the key");
}

#[tokio::test]
async fn a_non_stream_body_that_breaks_is_a_body_error() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let res = send(chat(&pool, CHAT_BODY, false)).await.unwrap();
    tx.data("{\"choices\":");
    tx.error("reset");
    assert!(within(res.into_body().collect()).await.is_err());
}

#[tokio::test]
async fn poll_ready_is_always_ready() {
    let mut svc = task::spawn(());
    let mut upstream = UpstreamService::new(client());
    svc.enter(|cx, _| {
        assert!(Service::<Request<Bytes>>::poll_ready(&mut upstream, cx).is_ready());
    });
}

// === ModelCatalog ===

const MODELS: &str = r#"{"object":"list","data":[
    {"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},
    {"id":"gpt-4o-mini","object":"model","created":1,"owned_by":"openai"}]}"#;

fn models_or_404(seen: &Seen) -> MockResponse {
    if seen.method == Method::GET && seen.path == "/v1/models" {
        full(StatusCode::OK, "application/json", MODELS)
    } else {
        full(StatusCode::NOT_FOUND, "application/json", "{}")
    }
}

const TTL: Duration = Duration::from_secs(60);

fn catalog() -> ModelCatalog {
    ModelCatalog::new(client(), TTL, Duration::from_secs(5))
}

async fn ids(catalog: &ModelCatalog, pool: &KeyPool) -> Vec<String> {
    within(catalog.list(pool)).await.into_iter().map(|m| m.id).collect()
}

/// Moves tokio's clock forward while no request is in flight, then lets it
/// run again, so that network waits are never auto-advanced.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn the_catalog_lists_provider_slash_model_ids_from_the_providers_models() {
    let mock = MockUpstream::start(models_or_404).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1", "k2"]);
    let models = within(catalog().list(&pool)).await;
    let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["openai/gpt-4o", "openai/gpt-4o-mini"]);
    assert!(models.iter().all(|m| m.object == "model" && m.owned_by == "openai"));

    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1/models"));
    assert_eq!(seen[0].headers["authorization"], "Bearer k1");
}

#[tokio::test]
async fn the_catalog_lists_configured_models_first_and_once() {
    let mock = MockUpstream::start(models_or_404).await;
    let provider = openai(&mock.api_base()).with_models(vec!["my-finetune".to_owned(), "gpt-4o".to_owned()]);
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, secrets(&["k1"])).build().unwrap();
    assert_eq!(ids(&catalog(), &pool).await, ["openai/my-finetune", "openai/gpt-4o", "openai/gpt-4o-mini"]);
}

#[tokio::test]
async fn the_catalog_caches_each_list_for_its_ttl() {
    let mock = MockUpstream::start(models_or_404).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let catalog = catalog();
    let first = ids(&catalog, &pool).await;
    assert_eq!(mock.hits(), 1);

    let second = ids(&catalog, &pool).await;
    assert_eq!(second, first);
    assert_eq!(mock.hits(), 1, "served from the cache");

    skip(TTL - Duration::from_secs(1)).await;
    ids(&catalog, &pool).await;
    assert_eq!(mock.hits(), 1, "still fresh just before the TTL");

    skip(Duration::from_secs(2)).await;
    assert_eq!(ids(&catalog, &pool).await, first);
    assert_eq!(mock.hits(), 2, "fetched again after the TTL");
}

#[tokio::test]
async fn the_catalog_survives_an_unreachable_provider() {
    let mock = MockUpstream::start(models_or_404).await;
    let p = |id, base: &str| Provider::openai_compatible(id, base).unwrap();
    let pool = KeyPool::builder()
        .provider(
            p("dead", &refused_base()).with_models(vec!["configured".to_owned()]),
            Selection::LeastUsed,
            vec![Secret::new("d1")],
        )
        .provider(p("openai", &mock.api_base()), Selection::LeastUsed, secrets(&["k1"]))
        .provider(p("idle", NOWHERE), Selection::LeastUsed, vec![])
        .build()
        .unwrap();
    assert_eq!(
        ids(&catalog(), &pool).await,
        ["dead/configured", "openai/gpt-4o", "openai/gpt-4o-mini"],
        "the dead provider keeps its configured models; one without keys or models is not listed"
    );
}

#[tokio::test]
async fn the_catalog_keeps_the_last_good_list_when_a_refresh_fails() {
    let calls = AtomicUsize::new(0);
    let mock = MockUpstream::start(move |seen| {
        if calls.fetch_add(1, SeqCst) == 0 {
            models_or_404(seen)
        } else {
            full(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "oops")
        }
    })
    .await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let catalog = catalog();
    let good = ids(&catalog, &pool).await;
    assert_eq!(good, ["openai/gpt-4o", "openai/gpt-4o-mini"]);

    skip(TTL + Duration::from_secs(1)).await;
    assert_eq!(ids(&catalog, &pool).await, good, "stale beats empty");
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn a_broken_stream_never_gets_a_plain_text_tail_inside_a_compressed_body() {
    let (tx, body) = MockBody::channel();
    let body = Mutex::new(Some(body));
    // Like real providers: compress only when the request allows it.
    let mock = MockUpstream::start(move |seen| {
        let gzip = seen.headers.get(header::ACCEPT_ENCODING).is_some_and(|v| v.to_str().unwrap().contains("gzip"));
        let mut res = Response::builder().header(header::CONTENT_TYPE, "text/event-stream");
        if gzip {
            res = res.header(header::CONTENT_ENCODING, "gzip");
        }
        res.body(body.lock().unwrap().take().unwrap().boxed_unsync()).unwrap()
    })
    .await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let mut req = chat(&pool, CHAT_BODY, true);
    // What the OpenAI Python SDK (httpx) sends by default.
    req.headers_mut().insert(header::ACCEPT_ENCODING, "gzip, deflate".parse().unwrap());
    let res = send_retrying(req).await.unwrap();
    let encoded = res.headers().contains_key(header::CONTENT_ENCODING);
    let mut body = res.into_body();
    // Stands for compressed bytes when `encoded`, for an event otherwise.
    tx.data("data: {\"n\":1}\n\n");
    within(body.frame()).await.unwrap().unwrap();
    tx.error("reset");
    let rest = within(body.collect()).await.unwrap().to_bytes();
    let tail = b"data: {\"error\"";
    let tails = rest.windows(tail.len()).filter(|w| w == tail).count();
    if encoded {
        assert_eq!(tails, 0, "plain text appended to a gzip body: {rest:?}");
    } else {
        assert_eq!(tails, 1, "{rest:?}");
    }
    drop(tx);
}

#[test]
fn prepare_uses_the_providers_own_auth_header() {
    let provider = openai(NOWHERE)
        .with_auth(keyrelay_layers::provider::AuthStyle::Header(header::HeaderName::from_static("api-key")));
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, secrets(&["k1"])).build().unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer client-proxy-key")
        .header("api-key", "client-guess")
        .body(Bytes::new())
        .unwrap();
    let (up, _, _) = prepare(leased(&pool, req, target(false))).unwrap();
    assert_eq!(up.headers()["api-key"], "k1");
    assert_eq!(up.headers().get_all("api-key").iter().count(), 1);
    assert!(up.headers().get(header::AUTHORIZATION).is_none());
}

#[tokio::test]
async fn the_catalog_gives_up_on_a_hanging_provider_and_retries_after_a_backoff() {
    const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
    let asked = Arc::new(tokio::sync::Notify::new());
    let hanging = Mutex::new(Vec::new());
    let calls = AtomicUsize::new(0);
    let mock = MockUpstream::start({
        let asked = asked.clone();
        move |seen| {
            asked.notify_one();
            if calls.fetch_add(1, SeqCst) > 0 {
                return models_or_404(seen);
            }
            // Headers, then a body that never ends.
            let (tx, body) = MockBody::channel();
            hanging.lock().unwrap().push(tx);
            streaming(body)(seen)
        }
    })
    .await;
    let provider = openai(&mock.api_base()).with_models(vec!["configured".to_owned()]);
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, secrets(&["k1"])).build().unwrap();
    let catalog = Arc::new(ModelCatalog::new(client(), TTL, FETCH_TIMEOUT));

    let listing = tokio::spawn({
        let (catalog, pool) = (catalog.clone(), pool.clone());
        async move { catalog.list(&pool).await }
    });
    within(asked.notified()).await;
    // The provider has the request; let its time run out without waiting.
    skip(FETCH_TIMEOUT).await;
    let listed: Vec<_> = within(listing).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ["openai/configured"], "configured models still listed");

    assert_eq!(ids(&catalog, &pool).await, ["openai/configured"]);
    assert_eq!(mock.hits(), 1, "a failed provider is not asked again at once");

    skip(TTL).await;
    assert_eq!(
        ids(&catalog, &pool).await,
        ["openai/configured", "openai/gpt-4o", "openai/gpt-4o-mini"],
        "asked again after the backoff, and recovered"
    );
    assert_eq!(mock.hits(), 2);
}

// === think tags, a provider's opt-in ===

fn thinking_pool(api_base: &str) -> Arc<KeyPool> {
    let provider = Provider::openai_compatible("openai", api_base).unwrap().with_think_tags_split(true);
    KeyPool::builder().provider(provider, Selection::LeastUsed, secrets(&["k1"])).build().unwrap()
}

#[tokio::test]
async fn an_opted_in_provider_gets_its_think_block_moved_to_reasoning_content() {
    let mock = MockUpstream::start(|_| {
        full(
            StatusCode::OK,
            "application/json",
            r#"{"id":"x","object":"chat.completion","created":1,"model":"r1","choices":[{"index":0,"message":{"role":"assistant","content":"<think>Two and two.</think>\n\nFour."},"finish_reason":"stop"}]}"#,
        )
    })
    .await;
    let pool = thinking_pool(&mock.api_base());
    let res = send(chat(&pool, CHAT_BODY, false)).await.unwrap();
    assert!(res.headers().get(header::CONTENT_LENGTH).is_none_or(|len| len != "0"));
    let body: Value = serde_json::from_slice(&within(res.into_body().collect()).await.unwrap().to_bytes()).unwrap();
    let message = &body["choices"][0]["message"];
    assert_eq!(
        (message["content"].as_str(), message["reasoning_content"].as_str()),
        (Some("Four."), Some("Two and two."))
    );
}

#[tokio::test]
async fn an_opted_in_provider_gets_its_streamed_think_block_split_across_chunks() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = thinking_pool(&mock.api_base());
    let res = send(chat(&pool, CHAT_BODY, true)).await.unwrap();
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let chunk = |content: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"r1",
                "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
        )
    };
    for piece in ["<thi", "nk>Two and", " two.</th", "ink>\n\nFo", "ur."] {
        tx.data(chunk(piece));
    }
    tx.data("data: [DONE]\n\n");
    drop(tx);
    let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    let (mut content, mut reasoning) = (String::new(), String::new());
    for event in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if event == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(event).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or_default());
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
    }
    assert_eq!((content.as_str(), reasoning.as_str()), ("Four.", "Two and two."), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn a_request_log_gets_the_providers_own_bytes_where_they_differ() {
    let (tx, body) = MockBody::channel();
    let mock = MockUpstream::start(streaming(body)).await;
    let pool = pool_at(&mock.api_base(), Selection::LeastUsed, &["k1"]);
    let svc = tower::Layer::layer(
        &keyrelay_layers::retry::RetryRotateLayer::default(),
        tower::Layer::layer(
            &keyrelay_layers::select::KeySelectLayer::new(pool.clone()),
            UpstreamService::new(client()),
        ),
    );
    let cell = keyrelay_layers::record::RequestRecord::capturing_upstream();
    let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(CHAT_BODY.as_bytes())).unwrap();
    req.extensions_mut().insert(target(true));
    req.extensions_mut().insert(cell.clone());
    let res = within(svc.oneshot(req)).await.unwrap();
    let usage = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";
    tx.data("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
    tx.data(usage);
    tx.data("data: [DONE]\n\n");
    drop(tx);
    let sent = within(res.into_body().collect()).await.unwrap().to_bytes();
    let (upstream, truncated) = cell.upstream().expect("captured at the end of the answer");
    assert!(!truncated);
    assert!(!String::from_utf8_lossy(&sent).contains("usage"), "the client's copy has no usage chunk");
    assert!(String::from_utf8_lossy(&upstream).contains(usage), "the provider's copy does");
    let tokens = cell.usage().expect("the meter counted the dropped chunk");
    assert_eq!((tokens.prompt_tokens, tokens.completion_tokens), (7, 3));
}
