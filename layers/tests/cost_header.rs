//! `x-keyrelay-cost-usd` on answers from a hyper upstream on 127.0.0.1:0:
//! on whole answers whose usage the proxy has before the headers leave
//! (passed through, native, translated), never on a stream, an unpriced
//! model or an answer whose end has not arrived with its head.
#![allow(clippy::disallowed_methods, reason = "the mock server runs as tasks; the no-spawn rule is the library's")]

mod support;

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyrelay_layers::{
    BoxError, ProxyBody,
    extensions::{Endpoint, RouteTarget},
    pool::{KeyPool, Secret, Selection},
    price::{Price, PriceTable},
    provider::{Dialect, Provider, ProviderId},
    upstream::{COST_USD, ClientOptions, UpstreamService, build_client},
};
use tokio::{net::TcpListener, sync::Mutex};
use tower::{Service, ServiceExt};

use support::{BodyTx, MockBody, within};

type MockResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// A hyper HTTP/1 server answering every request with what `respond` makes.
async fn upstream(respond: impl Fn() -> MockResponse + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = respond.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let respond = respond.clone();
                async move {
                    req.into_body().collect().await?;
                    Ok::<_, hyper::Error>(respond())
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    addr
}

/// A whole JSON answer: sent with its `Content-Length`.
fn json(body: &'static str) -> MockResponse {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

fn prices() -> Arc<PriceTable> {
    let mut prices = PriceTable::default();
    prices.insert("openai/gpt-4o-mini", Price::new(0.15, 0.60).cached_input(0.075));
    prices.insert("anthropic/claude-sonnet-4-5", Price::new(3.0, 15.0).cached_input(0.30));
    Arc::new(prices)
}

fn priced_pool(provider: Provider) -> Arc<KeyPool> {
    KeyPool::builder()
        .provider(provider, Selection::LeastUsed, vec![Secret::new("k1")])
        .prices(prices())
        .build()
        .unwrap()
}

/// Sends `body` to `endpoint` of `provider`'s `model`, as KeySelect would.
async fn send(
    pool: &KeyPool,
    provider: &str,
    model: &str,
    endpoint: Endpoint,
    stream: bool,
    body: &'static str,
) -> Response<ProxyBody> {
    let path = if endpoint == Endpoint::Messages { "/v1/messages" } else { "/v1/chat/completions" };
    let mut req = Request::post(path).body(Bytes::from_static(body.as_bytes())).unwrap();
    let (lease, _in_flight) = pool.provider(provider).unwrap().lease().unwrap();
    req.extensions_mut().insert(RouteTarget::new(ProviderId::new(provider), model, endpoint, stream));
    req.extensions_mut().insert(lease);
    let mut svc = UpstreamService::new(build_client(&ClientOptions::default()).unwrap());
    let svc = within(svc.ready()).await.unwrap();
    within(svc.call(req)).await.unwrap()
}

fn cost(res: &Response<ProxyBody>) -> Option<&str> {
    res.headers().get(COST_USD).map(|v| v.to_str().unwrap())
}

async fn text(res: Response<ProxyBody>) -> String {
    let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// 1000 prompt tokens of which 400 cached, 200 completion tokens.
const OPENAI_ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}"#;

#[tokio::test]
async fn a_passed_through_openai_answer_carries_its_cost_with_cached_tokens_at_the_cached_price() {
    let addr = upstream(|| json(OPENAI_ANSWER)).await;
    let pool = priced_pool(Provider::openai_compatible("openai", &format!("http://{addr}/v1")).unwrap());
    let res = send(&pool, "openai", "gpt-4o-mini", Endpoint::ChatCompletions, false, CHAT).await;
    assert_eq!(res.status(), StatusCode::OK);
    // 600 x 0.15 + 400 x 0.075 + 200 x 0.60 = 240 dollars per million tokens.
    assert_eq!(cost(&res), Some("0.00024"));
    assert_eq!(text(res).await, OPENAI_ANSWER, "the body passes as it came");
}

#[tokio::test]
async fn an_unpriced_model_and_an_answer_without_usage_have_no_cost() {
    let addr = upstream(|| json(OPENAI_ANSWER)).await;
    let pool = priced_pool(Provider::openai_compatible("openai", &format!("http://{addr}/v1")).unwrap());
    let res = send(&pool, "openai", "gpt-unpriced", Endpoint::ChatCompletions, false, CHAT).await;
    assert_eq!((res.status(), cost(&res)), (StatusCode::OK, None));

    let addr = upstream(|| json(r#"{"id":"chatcmpl-2","choices":[]}"#)).await;
    let pool = priced_pool(Provider::openai_compatible("openai", &format!("http://{addr}/v1")).unwrap());
    let res = send(&pool, "openai", "gpt-4o-mini", Endpoint::ChatCompletions, false, CHAT).await;
    assert_eq!((res.status(), cost(&res)), (StatusCode::OK, None));
}

#[tokio::test]
async fn a_stream_has_no_cost_header() {
    let events = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    let addr = upstream(move || {
        let mut res = json(events);
        res.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        res
    })
    .await;
    let pool = priced_pool(Provider::openai_compatible("openai", &format!("http://{addr}/v1")).unwrap());
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let res = send(&pool, "openai", "gpt-4o-mini", Endpoint::ChatCompletions, true, body).await;
    assert_eq!((res.status(), cost(&res)), (StatusCode::OK, None));
    assert!(text(res).await.contains("[DONE]"));
}

#[tokio::test]
async fn an_answer_whose_end_has_not_arrived_is_not_waited_for() {
    // Chunked, and the provider holds the rest back: the head leaves without
    // the cost rather than wait for it.
    let held: Arc<Mutex<Option<BodyTx>>> = Arc::default();
    let addr = upstream({
        let held = held.clone();
        move || {
            let (tx, body) = MockBody::channel();
            let (head, _) = OPENAI_ANSWER.split_at(40);
            tx.data(head);
            *held.try_lock().unwrap() = Some(tx);
            Response::builder().header(header::CONTENT_TYPE, "application/json").body(body.boxed_unsync()).unwrap()
        }
    })
    .await;
    let pool = priced_pool(Provider::openai_compatible("openai", &format!("http://{addr}/v1")).unwrap());
    let res = send(&pool, "openai", "gpt-4o-mini", Endpoint::ChatCompletions, false, CHAT).await;
    assert_eq!((res.status(), cost(&res)), (StatusCode::OK, None));
    let tx = held.lock().await.take().unwrap();
    tx.data(&OPENAI_ANSWER[40..]);
    tx.end();
    assert_eq!(text(res).await, OPENAI_ANSWER, "whole, in order");
}

/// 100 fresh prompt tokens, 900 read from the cache, 50 written.
const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":100,"cache_read_input_tokens":900,"output_tokens":50}}"#;

/// 100 x 3 + 900 x 0.30 + 50 x 15 = 1320 dollars per million tokens.
const ANTHROPIC_COST: &str = "0.00132";

#[tokio::test]
async fn a_native_anthropic_answer_carries_its_cost() {
    let addr = upstream(|| json(ANTHROPIC_ANSWER)).await;
    let pool = priced_pool(Provider::new("anthropic", &format!("http://{addr}"), Dialect::Anthropic).unwrap());
    let body = r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let res = send(&pool, "anthropic", "claude-sonnet-4-5-20250929", Endpoint::Messages, false, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cost(&res), Some(ANTHROPIC_COST), "a dated model takes its family's price");
    assert_eq!(text(res).await, ANTHROPIC_ANSWER);
}

#[tokio::test]
async fn a_translated_answer_carries_its_cost() {
    let addr = upstream(|| json(ANTHROPIC_ANSWER)).await;
    let pool = priced_pool(Provider::new("anthropic", &format!("http://{addr}"), Dialect::Anthropic).unwrap());
    let body = r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#;
    let res = send(&pool, "anthropic", "claude-sonnet-4-5", Endpoint::ChatCompletions, false, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cost(&res), Some(ANTHROPIC_COST));
    assert!(text(res).await.contains("\"chat.completion\""), "answered in the client's dialect");
}
