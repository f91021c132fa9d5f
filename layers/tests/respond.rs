//! ErrorResponseLayer alone: errors from a mock inner service become
//! OpenAI-shaped responses; everything else passes through.

mod support;

use std::{
    convert::Infallible,
    error::Error,
    fmt,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Either, Full};
use keyrelay_layers::{
    BoxError,
    error::{
        BodyTooLarge, DeadlineExceeded, InvalidBody, InvalidModel, MethodNotAllowed, MissingExtension, MissingModel,
        NoKeyConfigured, RouteNotFound, Unauthorized, UnknownProvider, UpstreamUnreachable,
    },
    extensions::ErrorCode,
    respond::{ErrorResponse, ErrorResponseLayer},
};
use serde_json::{Value, json};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

use support::within;

type Req = Request<()>;
type InnerBody = Full<Bytes>;

/// The response ErrorResponse gives for an inner failing with `err`.
async fn answer(err: BoxError) -> Response<Either<InnerBody, Full<Bytes>>> {
    let mut err = Some(err);
    let fails = service_fn(move |_: Req| {
        let err = err.take().expect("one request");
        async move { Err::<Response<InnerBody>, BoxError>(err) }
    });
    let res: Result<_, Infallible> = within(ErrorResponseLayer::new().layer(fails).oneshot(Request::new(()))).await;
    let Ok(res) = res;
    res
}

async fn json_of<B>(res: Response<B>) -> Value
where
    B: http_body::Body,
    B::Error: fmt::Debug,
{
    let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn errors_become_openai_shaped_json_with_the_design_status() {
    let table: Vec<(BoxError, u16, &str, &str)> = vec![
        (Unauthorized::missing().into(), 401, "invalid_request_error", "invalid_api_key"),
        (Unauthorized::invalid().into(), 401, "invalid_request_error", "invalid_api_key"),
        (BodyTooLarge::new(1024).into(), 413, "invalid_request_error", "request_too_large"),
        (InvalidBody::new("eof").into(), 400, "invalid_request_error", "invalid_json"),
        (MissingModel::new().into(), 400, "invalid_request_error", "missing_model"),
        (InvalidModel::new("gpt-4o").into(), 400, "invalid_request_error", "invalid_model"),
        (UnknownProvider::new("nope", ["openai"]).into(), 400, "invalid_request_error", "unknown_provider"),
        (RouteNotFound::new("/v1/nope").into(), 404, "invalid_request_error", "unknown_url"),
        (MethodNotAllowed::new("POST").into(), 405, "invalid_request_error", "method_not_allowed"),
        (NoKeyConfigured::new("groq").into(), 503, "service_unavailable", "no_usable_key"),
        (DeadlineExceeded::new(Duration::from_secs(30)).into(), 504, "timeout_error", "deadline_exceeded"),
        (
            UpstreamUnreachable::new("openai", "connection refused").into(),
            502,
            "upstream_error",
            "upstream_unreachable",
        ),
        (MissingExtension::new("KeyLease").into(), 500, "server_error", "internal_error"),
    ];
    for (err, status, kind, code) in table {
        let message = err.to_string();
        let res = answer(err).await;
        assert_eq!(res.status().as_u16(), status, "{code}");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json", "{code}");
        assert_eq!(res.extensions().get::<ErrorCode>(), Some(&ErrorCode(code)));
        let body = json_of(res).await;
        assert_eq!(body, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),);
    }
}

#[tokio::test]
async fn method_not_allowed_carries_allow() {
    let res = answer(MethodNotAllowed::new("POST").into()).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    let res = answer(MissingModel::new().into()).await;
    assert!(res.headers().get("allow").is_none());
    assert!(res.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn a_known_error_is_found_behind_a_wrapper() {
    #[derive(Debug)]
    struct Wrapped(BoxError);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("while routing")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }
    let res = answer(Box::new(Wrapped(NoKeyConfigured::new("groq").into()))).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(res).await["error"]["code"], "no_usable_key");
}

#[tokio::test]
async fn an_unknown_error_is_a_500_that_does_not_echo_its_text() {
    let res = answer("pool poisoned near sk-live-123".into()).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.extensions().get::<ErrorCode>(), Some(&ErrorCode("internal_error")));
    let body = json_of(res).await;
    assert_eq!(body["error"]["type"], "server_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("sk-live-123"), "{message}");
}

#[tokio::test]
async fn ok_responses_pass_through_unchanged() {
    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u8);
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<InnerBody>, _>(ErrorResponseLayer::new());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_, responder) = within(handle.next_request()).await.unwrap();
    let mut res = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("retry-after", "7")
        .header(CONTENT_TYPE, "text/event-stream")
        .body(Full::new(Bytes::from_static(b"upstream's own body")))
        .unwrap();
    res.extensions_mut().insert(Marker(7));
    responder.send_response(res);

    let res = within(fut).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "an upstream status is not an error");
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
    assert_eq!(res.extensions().get::<Marker>(), Some(&Marker(7)));
    assert!(res.extensions().get::<ErrorCode>().is_none());
    assert!(matches!(res.body(), Either::Left(_)), "the inner body itself");
    let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(bytes, "upstream's own body");
}

#[tokio::test]
async fn a_poll_ready_error_is_answered_to_the_next_call() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<InnerBody>, _>(ErrorResponseLayer::new());
    handle.send_error(NoKeyConfigured::new("openai"));
    // The error is kept, not returned: the service's error type is Infallible.
    assert_ready_ok!(svc.poll_ready());
    let res = within(svc.call(Request::new(()))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<ErrorCode>(), Some(&ErrorCode("no_usable_key")));
    assert_pending!(handle.poll_request(), "the inner was not called");

    // The next request asks the inner again, which has recovered.
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_, responder) = within(handle.next_request()).await.unwrap();
    responder.send_response(Response::new(Full::default()));
    assert_eq!(within(fut).await.unwrap().status(), StatusCode::OK);
}

/// Fails `poll_ready` every time, like a service whose backend is gone.
#[derive(Clone, Debug)]
struct NeverReady;

impl Service<Req> for NeverReady {
    type Response = Response<InnerBody>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("backend closed".into()))
    }
    fn call(&mut self, _: Req) -> Self::Future {
        panic!("called without being ready")
    }
}

#[tokio::test]
async fn a_permanently_failing_inner_gets_an_error_response_each_time_not_a_panic() {
    let mut svc = ErrorResponseLayer::new().layer(NeverReady);
    for _ in 0..3 {
        let res = within(svc.ready()).await.unwrap().call(Request::new(()));
        let res = within(res).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    }
}

#[tokio::test]
async fn a_clone_does_not_inherit_a_stored_poll_ready_error() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<InnerBody>, _>(ErrorResponseLayer::new());
    handle.send_error("inner broke");
    assert_ready_ok!(svc.poll_ready());
    let mut clone: ErrorResponse<_> = svc.get_ref().clone();
    within(clone.ready()).await.unwrap();
    let fut = clone.call(Request::new(()));
    let (_, responder) = within(handle.next_request()).await.unwrap();
    responder.send_response(Response::new(Full::default()));
    assert_eq!(within(fut).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn poll_ready_waits_for_the_inner_service() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<InnerBody>, _>(ErrorResponseLayer::new());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
}
