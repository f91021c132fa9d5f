//! The cost of the proxy's layers per request: the stack as `src/stack.rs`
//! assembles it for the proxied routes, around an in-memory upstream,
//! against that upstream alone. Each request is a whole exchange: a chat
//! request with the proxy key in, the response body read to its end.
//!
//! Left out: the binary's `SetSensitiveRequestHeaders` and router match
//! (a path comparison), and everything `UpstreamService` does besides
//! answering (the model rewrite is in `parse.rs`). No metrics recorder is
//! installed, so the `metrics` macros record nothing; the label strings
//! the layers build for them are still built, as in production. No tracing
//! subscriber either: spans and events are disabled callsites.

mod common;

use std::{convert::Infallible, fmt::Debug, pin::pin, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::stream;
use http::{
    HeaderValue, Request, Response,
    header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT},
};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use keyrelay_layers::{
    BoxError, ProxyBody,
    auth::AuthLayer,
    body::{SseErrorTail, full},
    concurrency::KeyConcurrencyLayer,
    filter::ModelFilterLayer,
    log::{LoggedBody, RequestLogLayer},
    parse::ParseLayer,
    pool::{KeyLease, KeyPool, Secret},
    respond::{ErrorResponseLayer, ResponseBody},
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
    timeout::{DeadlineBody, DeadlineLayer},
    upstream::drop_usage_chunk,
};
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};

const PROXY_KEY: &str = "sk-proxy-bench-0123456789";

/// Answers every request at once: the completion JSON, or `events` as a
/// stream of separate frames. Like `UpstreamService`, it drops the usage
/// chunk it was asked for and ends a broken stream with an error event.
fn upstream(
    events: Option<Arc<[Bytes]>>,
) -> impl Service<Request<Bytes>, Response = Response<ProxyBody>, Error = BoxError, Future: Send> + Clone + Send + Sync
{
    service_fn(move |req: Request<Bytes>| {
        let events = events.clone();
        async move {
            assert!(req.extensions().get::<KeyLease>().is_some(), "KeySelect leased a key");
            let res = match events {
                None => {
                    let mut res = Response::new(full(common::COMPLETION));
                    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    res
                }
                Some(events) => {
                    let frames: Vec<Result<_, BoxError>> = events.iter().cloned().map(|e| Ok(Frame::data(e))).collect();
                    let body = SseErrorTail::new(drop_usage_chunk(StreamBody::new(stream::iter(frames))));
                    let mut res = Response::new(body.boxed_unsync());
                    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    res
                }
            };
            Ok(res)
        }
    })
}

/// RequestLog -> ErrorResponse -> Auth -> Deadline -> Parse -> ModelFilter
/// -> RetryRotate -> KeySelect -> KeyConcurrency -> `upstream`, boxed at the
/// route as the binary's router does.
fn full_stack<U>(
    pool: &Arc<KeyPool>,
    upstream: U,
) -> impl Service<Request<Full<Bytes>>, Response = Response<LoggedBody<ResponseBody<ProxyBody>>>, Error = Infallible> + Clone
where
    U: Service<Request<Bytes>, Response = Response<ProxyBody>, Error = BoxError> + Clone + Send + Sync + 'static,
    U::Future: Send,
{
    let proxy = ServiceBuilder::new()
        .map_response(|res: Response<DeadlineBody<ProxyBody>>| res.map(|body| body.boxed_unsync()))
        .layer(AuthLayer::require(Secret::new(PROXY_KEY)))
        .layer(DeadlineLayer::new(Duration::from_secs(600)))
        .layer(ParseLayer::new(pool.clone(), 16 << 20))
        .layer(ModelFilterLayer::new(pool.clone()))
        .layer(RetryRotateLayer::new(RetryPolicy::default()))
        .layer(KeySelectLayer::new(pool.clone()))
        .layer(KeyConcurrencyLayer::new())
        .service(upstream);
    ServiceBuilder::new()
        .layer(RequestLogLayer::new())
        .layer(ErrorResponseLayer::new())
        .service(BoxCloneSyncService::new(proxy))
}

/// A chat request as an OpenAI SDK sends it.
fn request<B>(body: &Bytes, wrap: impl FnOnce(Bytes) -> B) -> Request<B> {
    Request::post("/v1/chat/completions")
        .header(AUTHORIZATION, format!("Bearer {PROXY_KEY}"))
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "OpenAI/Python 1.99.9")
        .body(wrap(body.clone()))
        .expect("a valid request")
}

/// Reads the body frame by frame, as the server writes it out.
async fn drain<B: Body<Data = Bytes>>(body: B) -> usize
where
    B::Error: Debug,
{
    let mut body = pin!(body);
    let mut sent = 0;
    while let Some(frame) = body.frame().await {
        sent += frame.expect("a clean body").into_data().map_or(0, |d| d.len());
    }
    sent
}

fn bench(c: &mut Criterion, rt: &Runtime, name: &str, stream: bool) {
    let pool = common::pool(4);
    let body = common::chat_body(400, stream);
    // About 20 events: the role chunk, 16 content chunks, finish, usage, [DONE].
    let events = stream.then(|| Arc::from(common::openai_stream(16)));
    let upstream = upstream(events);
    let stack = full_stack(&pool, upstream.clone());

    // Once before timing: the stack must really answer 200 with the whole body.
    let res = rt.block_on(stack.clone().oneshot(request(&body, Full::new))).expect("infallible");
    assert_eq!(res.status(), 200);
    let text = rt.block_on(res.into_body().collect()).expect("a clean body").to_bytes();
    assert!(text.ends_with(if stream { b"[DONE]\n\n" } else { b"}" }), "{text:?}");
    assert!(!text.windows(13).any(|w| w == br#""choices":[]"#), "the usage chunk is dropped");

    let mut group = c.benchmark_group(name);
    group.bench_function("bare_upstream", |b| {
        b.to_async(rt).iter(|| async {
            let res = upstream.clone().oneshot(request(&body, |b| b)).await.expect("answers");
            drain(res.into_body()).await
        });
    });
    group.bench_function("full_stack", |b| {
        b.to_async(rt).iter(|| async {
            let res = stack.clone().oneshot(request(&body, Full::new)).await.expect("infallible");
            drain(res.into_body()).await
        });
    });
    group.finish();
    assert!(pool.provider("openai").expect("bench provider").keys().iter().all(|k| k.in_flight() == 0));
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    bench(c, &rt, "stack/chat", false);
    bench(c, &rt, "stack/chat_stream", true);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = stack
}
criterion_main!(benches);
