//! RequestLogLayer alone: request ids, and the one `request finished` event
//! per request, captured with a tracing layer on the test's thread.

mod support;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use keyrelay_layers::{
    BoxError,
    extensions::{ErrorCode, RequestId},
    log::{LoggedBody, Quiet, RequestLog, RequestLogLayer, TeeBody},
    provider::ProviderId,
    record::{AttemptRecord, RequestRecord},
    usage::Usage,
};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, ServiceExt, service_fn};
use tower_test::mock;

use support::{Captured, Event, MockBody, capture, trace_init, within};

const FINISHED: &str = "request finished";

type Req = Request<TeeBody<()>>;

/// Sends a request with these headers to an inner that answers with the
/// `RequestId` it saw; returns (id the inner saw, response header).
async fn ids(header: Option<HeaderValue>) -> (String, String) {
    trace_init();
    let svc = RequestLogLayer::new().layer(service_fn(|req: Req| async move {
        let id = req.extensions().get::<RequestId>().expect("RequestId").clone();
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(id.to_string()))))
    }));
    let mut req = Request::new(());
    if let Some(value) = header {
        req.headers_mut().insert("x-request-id", value);
    }
    let res = within(svc.oneshot(req)).await.unwrap();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = within(res.into_body().collect()).await.unwrap().to_bytes();
    (String::from_utf8(seen.to_vec()).unwrap(), echoed)
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test]
async fn a_sane_client_request_id_is_used_and_echoed() {
    for id in ["abc-123", "req_01HZX9:part/2", &"x".repeat(128)] {
        let (seen, echoed) = ids(Some(HeaderValue::from_str(id).unwrap())).await;
        assert_eq!((seen.as_str(), echoed.as_str()), (id, id));
    }
}

#[tokio::test]
async fn a_missing_request_id_is_replaced_by_a_generated_32_hex_one() {
    let (seen, echoed) = ids(None).await;
    assert!(is_generated(&seen), "{seen}");
    assert_eq!(seen, echoed, "the inner layers and the client see the same id");
    let (again, _) = ids(None).await;
    assert_ne!(seen, again, "each request gets its own");
}

#[tokio::test]
async fn an_insane_request_id_is_replaced_by_a_generated_one() {
    for value in [
        HeaderValue::from_static(""),
        HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    ] {
        let (seen, echoed) = ids(Some(value.clone())).await;
        assert!(is_generated(&seen), "{value:?} -> {seen}");
        assert_eq!(seen, echoed);
    }
}

type Inner = mock::Mock<Req, Response<MockBody>>;
type InnerHandle = mock::Handle<Req, Response<MockBody>>;

/// A RequestLog around a mock; the response body is scripted per test.
fn spawn() -> (mock::Spawn<RequestLog<Inner>>, InnerHandle) {
    trace_init();
    mock::spawn_layer(RequestLogLayer::new())
}

/// Calls once and answers with `res`; returns the logged response.
async fn respond<B>(res: Response<B>) -> Response<LoggedBody<B>>
where
    B: http_body::Body,
{
    trace_init();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<B>, _>(RequestLogLayer::new());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::post("/v1/chat/completions").header("x-request-id", "r-1").body(()).unwrap());
    let (_, responder) = within(handle.next_request()).await.unwrap();
    responder.send_response(res);
    within(fut).await.unwrap()
}

fn finished(captured: &Captured) -> Vec<Event> {
    captured.named(FINISHED)
}

#[tokio::test]
async fn finished_fires_once_as_completed_at_the_end_of_the_body() {
    let (captured, _guard) = capture();
    let (tx, body) = MockBody::channel();
    let res = respond(Response::new(body)).await;
    assert!(finished(&captured).is_empty(), "not at headers: the body is still to come");

    let mut body = res.into_body();
    tx.data("data: one\n\n");
    within(body.frame()).await.unwrap().unwrap();
    assert!(finished(&captured).is_empty(), "not after a chunk either");

    tx.end();
    assert!(within(body.frame()).await.is_none());
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.level, tracing::Level::INFO);
    assert_eq!(event.field("outcome"), Some("completed"));
    assert_eq!(event.field("status"), Some("200"));
    assert!(event.field("duration_ms").is_some() && event.field("headers_after_ms").is_some());
    assert_eq!(event.spans.get("id"), Some("r-1"), "inside the request span");
    assert_eq!(event.spans.get("method"), Some("POST"));
    assert_eq!(event.spans.get("path"), Some("/v1/chat/completions"));
    assert_eq!(event.spans.get("status"), None, "the status is the event's, not recorded on the span");

    assert!(within(body.frame()).await.is_none());
    drop(body);
    assert_eq!(finished(&captured).len(), 1, "never twice");
}

#[tokio::test]
async fn finished_fires_once_as_cancelled_when_the_body_is_dropped_early() {
    let (captured, _guard) = capture();
    let (tx, body) = MockBody::channel();
    let res = respond(Response::new(body)).await;
    let mut body = res.into_body();
    tx.data("data: one\n\n");
    within(body.frame()).await.unwrap().unwrap();
    drop(body);
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("outcome"), Some("cancelled"));
    drop(tx);
    assert_eq!(finished(&captured).len(), 1);
}

#[tokio::test]
async fn finished_fires_once_as_errored_on_a_body_error() {
    let (captured, _guard) = capture();
    let (tx, body) = MockBody::channel();
    let res = respond(Response::new(body)).await;
    let mut body = res.into_body();
    tx.data("data: one\n\n");
    tx.error("upstream reset");
    within(body.frame()).await.unwrap().unwrap();
    let err = within(body.frame()).await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("outcome"), Some("errored"));
    let warned = captured.named("response body failed");
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0].field("error"), Some("upstream reset"));

    drop(body);
    assert_eq!(finished(&captured).len(), 1, "the drop after an error adds nothing");
}

#[tokio::test]
async fn a_body_complete_at_its_headers_is_reported_at_once() {
    let (captured, _guard) = capture();
    let res = respond(Response::new(Empty::<Bytes>::new())).await;
    let events = finished(&captured);
    assert_eq!(events.len(), 1, "an empty body may never be polled");
    assert_eq!(events[0].field("outcome"), Some("completed"));
    drop(res);
    assert_eq!(finished(&captured).len(), 1);
}

#[tokio::test]
async fn a_known_length_body_is_completed_on_its_last_frame() {
    let (captured, _guard) = capture();
    let res = respond(Response::new(Full::new(Bytes::from_static(b"{}")))).await;
    let mut body = res.into_body();
    within(body.frame()).await.unwrap().unwrap();
    let events = finished(&captured);
    assert_eq!(events.len(), 1, "without waiting for another poll");
    assert_eq!(events[0].field("outcome"), Some("completed"));
    drop(body);
    assert_eq!(finished(&captured).len(), 1);
}

#[tokio::test]
async fn finished_reports_the_status_and_the_error_code_of_the_response() {
    let (captured, _guard) = capture();
    let mut res = Response::new(Empty::<Bytes>::new());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.extensions_mut().insert(ErrorCode("no_usable_key"));
    let res = respond(res).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["x-request-id"], "r-1");
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("status"), Some("503"));
    assert_eq!(events[0].field("code"), Some("no_usable_key"));
}

#[tokio::test]
async fn the_completion_event_reports_what_inner_layers_recorded_each_field_once() {
    let (captured, _guard) = capture();
    let svc = RequestLogLayer::new().layer(service_fn(|req: Req| {
        // What Parse, RetryRotate and the usage meter write.
        let record = req.extensions().get::<RequestRecord>().expect("RequestLog put a record in").clone();
        record.set_route(ProviderId::new("openai"), "gpt-4o".into(), "gpt-4o".into());
        for (key, outcome, status) in [
            ("openai:0e1ec0f0", "rate_limit", 429),
            ("openai:1a2b3c4d", "transient", 502),
            ("openai:1a2b3c4d", "transient", 502),
            ("openai:5e6f7a8b", "success", 200),
        ] {
            record.push_attempt(AttemptRecord::new(key, outcome, Some(status), 7));
        }
        record.set_usage(Usage::new(12, 5));
        async { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) }
    }));
    drop(within(svc.oneshot(Request::new(()))).await.unwrap());
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.field("provider"), Some("openai"));
    assert_eq!(event.field("model"), Some("gpt-4o"));
    assert_eq!(event.field("key"), Some("openai:5e6f7a8b"), "the key that answered");
    let attempts = event.field("attempts").unwrap();
    assert_eq!(attempts.matches("openai:").count(), 4, "{attempts}");
    assert!(attempts.starts_with("\"openai:0e1ec0f0 rate_limit 7ms, "), "quoted, as it holds spaces: {attempts}");
    assert_eq!((event.field("tokens_in"), event.field("tokens_out")), (Some("12"), Some("5")));
    // The span holds none of them, so a formatter that appends span
    // records cannot show any of them twice.
    for name in ["provider", "model", "key", "attempts", "tokens_in"] {
        assert_eq!(event.spans.0.get(name), None, "{name} is the event's, not the span's");
    }
}

#[tokio::test]
async fn a_quiet_response_reports_at_debug_level() {
    let (captured, _guard) = capture();
    let svc = RequestLogLayer::new().layer(service_fn(|_: Req| async {
        let mut res = Response::new(Empty::<Bytes>::new());
        res.extensions_mut().insert(Quiet);
        Ok::<_, BoxError>(res)
    }));
    drop(within(svc.clone().oneshot(Request::new(()))).await.unwrap());
    let events = finished(&captured);
    assert_eq!(events.len(), 1, "still reported");
    assert_eq!(events[0].level, tracing::Level::DEBUG);
}

#[tokio::test]
async fn a_stream_that_broke_after_its_headers_is_errored_though_its_body_ended() {
    let (captured, _guard) = capture();
    let svc = RequestLogLayer::new().layer(service_fn(|req: Req| {
        // The usage meter marks the break; the body then ends cleanly with
        // an error event.
        req.extensions().get::<RequestRecord>().unwrap().mark_broken();
        async { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"data: {\"error\":{}}\n\n")))) }
    }));
    let res = within(svc.oneshot(Request::new(()))).await.unwrap();
    within(res.into_body().collect()).await.unwrap();
    let events = finished(&captured);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("outcome"), Some("errored"));
}

#[tokio::test]
async fn an_inner_error_is_logged_once_as_failed_and_passed_on() {
    let (captured, _guard) = capture();
    let (mut svc, mut handle) = spawn();
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_, responder) = within(handle.next_request()).await.unwrap();
    responder.send_error("no route to upstream");
    let err = within(fut).await.unwrap_err();
    assert_eq!(err.to_string(), "no route to upstream");
    let failed = captured.named("request failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].level, tracing::Level::WARN);
    assert_eq!(failed[0].field("error"), Some("no route to upstream"));
}

#[tokio::test]
async fn a_request_dropped_before_its_headers_is_reported_once_as_cancelled() {
    let (captured, _guard) = capture();
    let (mut svc, mut handle) = spawn();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    let (_req, _responder) = within(handle.next_request()).await.unwrap();
    assert_pending!(fut.poll());
    drop(fut);
    let events = finished(&captured);
    assert_eq!(events.len(), 1, "every request ends with exactly one event");
    assert_eq!(events[0].field("outcome"), Some("cancelled"));
}

#[tokio::test]
async fn poll_ready_waits_for_the_inner_service() {
    let (mut svc, mut handle) = spawn();
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
}

/// Keeps what RequestLog hands it.
#[derive(Clone, Default)]
struct Kept(std::sync::Arc<std::sync::Mutex<Vec<keyrelay_layers::log::RequestLogEntry>>>);

impl keyrelay_layers::log::RequestLogSink for Kept {
    fn record(&self, entry: keyrelay_layers::log::RequestLogEntry) {
        self.0.lock().unwrap().push(entry);
    }
}

type FullReq = Request<TeeBody<Full<Bytes>>>;

#[tokio::test]
async fn a_sink_gets_both_bodies_with_credentials_redacted() {
    trace_init();
    let kept = Kept::default();
    let layer = RequestLogLayer::new().with_sink(std::sync::Arc::new(kept.clone()));
    let svc = layer.layer(service_fn(|req: FullReq| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut res = Response::new(Full::new(Bytes::from([b"echo: ".as_slice(), &body].concat())));
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        Ok::<_, BoxError>(res)
    }));
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-secret")
        .header("x-api-key", "sk-secret")
        .header("x-request-id", "r-9")
        .header("accept", "*/*")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .unwrap();
    let res = within(svc.oneshot(req)).await.unwrap();
    assert!(kept.0.lock().unwrap().is_empty(), "not before the body ends");
    let got = within(res.into_body().collect()).await.unwrap().to_bytes();
    let entries = kept.0.lock().unwrap().clone();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.id, "r-9");
    assert_eq!((entry.method.as_str(), entry.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(entry.request_body.as_ref(), b"{\"model\":\"m\"}");
    assert_eq!(entry.response_body, got);
    assert!(!entry.request_body_truncated && !entry.response_body_truncated && !entry.event_stream);
    assert_eq!((entry.status, entry.outcome), (Some(200), "completed"));
    let header = |name: &str| entry.request_headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(header("authorization"), Some("[redacted]"));
    assert_eq!(header("x-api-key"), Some("[redacted]"));
    assert_eq!(header("accept"), Some("*/*"));
    assert!(!format!("{entry:?}").contains("sk-secret"));
}

#[tokio::test]
async fn captured_bodies_are_bounded() {
    trace_init();
    let kept = Kept::default();
    let layer = RequestLogLayer::new().with_sink(std::sync::Arc::new(kept.clone()));
    let big = Bytes::from(vec![b'x'; keyrelay_layers::log::CAPTURE_LIMIT + 10]);
    let svc = layer.layer(service_fn(|req: FullReq| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, BoxError>(Response::new(Full::new(body)))
    }));
    let res = within(svc.oneshot(Request::new(Full::new(big.clone())))).await.unwrap();
    assert_eq!(within(res.into_body().collect()).await.unwrap().to_bytes(), big);
    let entry = kept.0.lock().unwrap()[0].clone();
    assert_eq!(entry.request_body.len(), keyrelay_layers::log::CAPTURE_LIMIT);
    assert_eq!(entry.response_body.len(), keyrelay_layers::log::CAPTURE_LIMIT);
    assert!(entry.request_body_truncated && entry.response_body_truncated);
}
