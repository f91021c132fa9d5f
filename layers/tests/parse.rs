//! ParseLayer alone: the inner service records what it was handed.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use keyrelay_layers::{
    BoxError,
    error::{ErrorReply, MissingExtension},
    extensions::{Endpoint, RouteTarget},
    parse::ParseLayer,
    pool::{KeyPool, Secret, Selection},
    provider::Provider,
    record::RequestRecord,
};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use support::{MockBody, NOWHERE, polled, reply, within};

const LIMIT: usize = 256;

fn pool() -> Arc<KeyPool> {
    let p = |id| Provider::openai_compatible(id, NOWHERE).unwrap();
    KeyPool::builder()
        .provider(p("openai"), Selection::LeastUsed, vec![Secret::new("k1")])
        .provider(p("openrouter"), Selection::LeastUsed, vec![])
        .build()
        .unwrap()
}

/// Runs `req` through Parse; the request the inner service got, or the
/// client's answer.
async fn parse<B>(req: Request<B>) -> Result<Request<Bytes>, ErrorReply>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let seen = Arc::new(Mutex::new(None));
    let inner = service_fn({
        let seen = seen.clone();
        move |req: Request<Bytes>| {
            *seen.lock().unwrap() = Some(req);
            async { Ok::<_, BoxError>(Response::new(())) }
        }
    });
    let result = within(ParseLayer::new(pool(), LIMIT).layer(inner).oneshot(req)).await;
    let seen = seen.lock().unwrap().take();
    match result {
        Ok(_) => Ok(seen.expect("Ok means the inner service was called")),
        Err(err) => {
            assert!(seen.is_none(), "a refused request must not reach the inner service");
            Err(reply(&err))
        }
    }
}

fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()
}

fn target(req: &Request<Bytes>) -> &RouteTarget {
    req.extensions().get::<RouteTarget>().expect("RouteTarget")
}

#[tokio::test]
async fn inserts_the_route_target_from_the_body() {
    let req =
        parse(post("/v1/chat/completions", r#"{"model":"openai/gpt-4o","stream":true,"messages":[]}"#)).await.unwrap();
    let t = target(&req);
    assert_eq!(t.provider().as_str(), "openai");
    assert_eq!(t.model(), "gpt-4o");
    assert!(t.stream());
    assert_eq!(t.endpoint(), Endpoint::ChatCompletions);
}

#[tokio::test]
async fn splits_model_at_the_first_slash_only() {
    let req = parse(post("/v1/chat/completions", r#"{"model":"openrouter/meta-llama/llama-3-70b"}"#)).await.unwrap();
    let t = target(&req);
    assert_eq!((t.provider().as_str(), t.model()), ("openrouter", "meta-llama/llama-3-70b"));
}

#[tokio::test]
async fn stream_is_false_unless_the_body_says_true() {
    for body in [
        r#"{"model":"openai/gpt-4o"}"#,
        r#"{"model":"openai/gpt-4o","stream":false}"#,
        r#"{"model":"openai/gpt-4o","stream":null}"#,
    ] {
        let req = parse(post("/v1/chat/completions", body)).await.unwrap();
        assert!(!target(&req).stream(), "{body}");
    }
}

#[tokio::test]
async fn the_endpoint_comes_from_the_path_with_or_without_v1() {
    for (path, endpoint) in [
        ("/v1/chat/completions", Endpoint::ChatCompletions),
        ("/chat/completions", Endpoint::ChatCompletions),
        ("/v1/chat/completions/", Endpoint::ChatCompletions),
        ("/v1/embeddings", Endpoint::Embeddings),
        ("/embeddings", Endpoint::Embeddings),
    ] {
        let req = parse(post(path, r#"{"model":"openai/text-embedding-3-small"}"#))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        assert_eq!(target(&req).endpoint(), endpoint, "{path}");
    }
}

#[tokio::test]
async fn the_inner_service_gets_the_exact_body_bytes_and_the_request_parts() {
    // Odd spacing, unknown fields and escapes: nothing is re-serialised.
    let body = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"h\\u00e9\"}],\n  \"model\":\"openai/gpt-4o\", \"x_custom\": {\"a\": [1, 2.50]} }";
    let req = Request::post("/v1/chat/completions?trace=1")
        .header("content-type", "application/json")
        .header("x-request-id", "r-9")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let seen = parse(req).await.unwrap();
    assert_eq!(seen.body(), body.as_bytes());
    assert_eq!(seen.method(), "POST");
    assert_eq!(seen.uri(), "/v1/chat/completions?trace=1");
    assert_eq!(seen.headers()["x-request-id"], "r-9");
    assert_eq!(seen.headers()["content-type"], "application/json");
    let span = target(&seen).model_span().expect("the model token's position");
    assert_eq!(&body[span], "\"openai/gpt-4o\"");
}

#[tokio::test]
async fn a_body_streamed_in_many_frames_is_joined_exactly() {
    let body = MockBody::script(vec![Ok(r#"{"model":"#), Ok(r#""openai/gpt-4o","#), Ok(""), Ok(r#""messages":[]}"#)]);
    let seen = parse(Request::post("/v1/chat/completions").body(body).unwrap()).await.unwrap();
    assert_eq!(seen.body(), &br#"{"model":"openai/gpt-4o","messages":[]}"#[..]);
}

#[tokio::test]
async fn content_length_above_the_limit_is_413_without_reading_the_body() {
    let (_tx, body) = MockBody::channel();
    let polls = body.polls();
    let req =
        Request::post("/v1/chat/completions").header("content-length", (LIMIT + 1).to_string()).body(body).unwrap();
    let reply = parse(req).await.unwrap_err();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.code, "request_too_large");
    assert!(reply.message.contains(&format!("{LIMIT} bytes")), "{}", reply.message);
    assert_eq!(polled(&polls), 0, "the body was never read");
}

#[tokio::test]
async fn a_streamed_body_without_length_over_the_limit_is_413() {
    let (tx, body) = MockBody::channel();
    tx.data(vec![b' '; LIMIT / 2]);
    tx.data(vec![b' '; LIMIT / 2]);
    tx.data(vec![b' '; 1]);
    // The sender stays alive: Parse must stop at the limit, not at the end.
    let reply = parse(Request::post("/v1/chat/completions").body(body).unwrap()).await.unwrap_err();
    assert_eq!((reply.status, reply.code), (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"));
    drop(tx);
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_accepted() {
    let mut body = br#"{"model":"openai/gpt-4o"}"#.to_vec();
    body.resize(LIMIT, b' ');
    let req = Request::post("/v1/chat/completions")
        .header("content-length", LIMIT.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    assert_eq!(parse(req).await.unwrap().body().len(), LIMIT);
}

#[tokio::test]
async fn bad_bodies_are_400_with_a_code_naming_the_problem() {
    for (body, code) in [
        ("", "invalid_json"),
        ("not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        (r#"{"model":"openai/gpt-4o""#, "invalid_json"),
        (r#"{"model":"openai/gpt-4o","stream":"yes"}"#, "invalid_json"),
        (r#"{"messages":[]}"#, "missing_model"),
        (r#"{"model":null}"#, "missing_model"),
        (r#"{"model":42}"#, "invalid_model"),
        (r#"{"model":["openai/gpt-4o"]}"#, "invalid_model"),
        (r#"{"model":"gpt-4o"}"#, "invalid_model"),
        (r#"{"model":"/gpt-4o"}"#, "invalid_model"),
        (r#"{"model":"openai/"}"#, "invalid_model"),
        (r#"{"model":"anthropic/claude-3"}"#, "unknown_provider"),
        (r#"{"model":"OpenAI/gpt-4o"}"#, "unknown_provider"),
    ] {
        let reply = parse(post("/v1/chat/completions", body)).await.unwrap_err();
        assert_eq!((reply.status, reply.code), (StatusCode::BAD_REQUEST, code), "{body}: {}", reply.message);
    }
}

#[tokio::test]
async fn unknown_provider_names_the_configured_ones() {
    let reply = parse(post("/v1/chat/completions", r#"{"model":"nope/x"}"#)).await.unwrap_err();
    assert!(reply.message.contains("`nope`") && reply.message.contains("openai, openrouter"), "{}", reply.message);
}

#[tokio::test]
async fn a_path_that_is_not_chat_or_embeddings_is_404_without_reading_the_body() {
    for path in ["/v1/models", "/v1/completions", "/v1/chat/completions/extra", "/v2/chat/completions", "/"] {
        let body = MockBody::script(vec![Ok(r#"{"model":"openai/gpt-4o"}"#)]);
        let polls = body.polls();
        let reply = parse(Request::post(path).body(body).unwrap()).await.unwrap_err();
        assert_eq!((reply.status, reply.code), (StatusCode::NOT_FOUND, "unknown_url"), "{path}");
        assert_eq!(polled(&polls), 0, "{path}: body read for a route that does not exist");
    }
}

#[tokio::test]
async fn a_body_read_error_is_400() {
    let body = MockBody::script(vec![Ok(r#"{"model":"#), Err("connection reset by peer")]);
    let reply = parse(Request::post("/v1/chat/completions").body(body).unwrap()).await.unwrap_err();
    assert_eq!((reply.status, reply.code), (StatusCode::BAD_REQUEST, "invalid_json"));
    assert!(reply.message.contains("could not read"), "{}", reply.message);
}

#[tokio::test]
async fn an_inner_error_passes_through_as_itself() {
    let inner = service_fn(|_: Request<Bytes>| async {
        Err::<Response<()>, BoxError>(MissingExtension::new("KeyLease").into())
    });
    let err = ParseLayer::new(pool(), LIMIT)
        .layer(inner)
        .oneshot(post("/v1/chat/completions", r#"{"model":"openai/gpt-4o"}"#))
        .await
        .unwrap_err();
    assert!(err.is::<MissingExtension>(), "{err}");
}

#[tokio::test]
async fn takes_the_inner_readiness_only_once_the_body_is_in() {
    // A slow upload must hold nothing inside: Parse is ready at once, and
    // waits for the inner service's readiness after reading the body.
    // tower-test's mock panics when a service not polled ready is called.
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Bytes>, Response<()>, _>(ParseLayer::new(pool(), LIMIT));
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready::<Request<Full<Bytes>>>());
    let mut fut = tokio_test::task::spawn(svc.call(post("/v1/chat/completions", r#"{"model":"openai/gpt-4o"}"#)));
    assert_pending!(fut.poll(), "waits for the inner service's readiness");
    handle.allow(1);
    let answer = async {
        let (req, responder) = handle.next_request().await.unwrap();
        assert_eq!(target(&req).model(), "gpt-4o");
        responder.send_response(Response::new(()));
    };
    let (res, ()) = within(async { tokio::join!(fut, answer) }).await;
    res.unwrap();
}

#[tokio::test]
async fn records_provider_and_model_in_the_request_record() {
    let inner = service_fn(|_: Request<Bytes>| async { Ok::<_, BoxError>(Response::new(())) });
    let record = RequestRecord::default();
    let mut req = post("/v1/chat/completions", r#"{"model":"openrouter/meta-llama/llama-3-70b"}"#);
    req.extensions_mut().insert(record.clone());
    ParseLayer::new(pool(), LIMIT).layer(inner).oneshot(req).await.unwrap();
    let route = record.route().expect("Parse wrote the route");
    assert_eq!((route.provider.as_str(), &*route.model), ("openrouter", "meta-llama/llama-3-70b"));
    assert_eq!(record.model_label().as_deref(), Some("other"), "an unknown model is not a metrics label yet");
}

#[tokio::test]
async fn the_endpoint_a_router_recognised_wins_over_the_path() {
    let inner = service_fn(|req: Request<Bytes>| async move {
        assert_eq!(target(&req).endpoint(), Endpoint::Embeddings);
        Ok::<_, BoxError>(Response::new(()))
    });
    let mut req = post("/some/mount/point", r#"{"model":"openai/text-embedding-3-small"}"#);
    req.extensions_mut().insert(Endpoint::Embeddings);
    ParseLayer::new(pool(), LIMIT).layer(inner).oneshot(req).await.unwrap();
}
