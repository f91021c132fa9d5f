//! DeadlineLayer alone, in front of a tower-test mock, on a paused clock.

mod support;

use std::time::Duration;

use http::{Request, Response, StatusCode};
use keyrelay_layers::{
    error::NoKeyConfigured,
    extensions::Deadline,
    timeout::{DeadlineLayer, DeadlineService},
};
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower_test::mock;

use support::reply;

type Req = Request<()>;
type Res = Response<&'static str>;

const TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(1);

type Svc = mock::Spawn<DeadlineService<mock::Mock<Req, Res>>>;

fn spawn() -> (Svc, mock::Handle<Req, Res>) {
    mock::spawn_layer(DeadlineLayer::new(TIMEOUT))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_that_never_answers_fails_with_504_after_exactly_the_timeout() {
    let (mut svc, mut handle) = spawn();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    // Keep the responder alive: the inner never answers, but never fails either.
    let (_req, _responder) = handle.next_request().await.unwrap();
    assert_pending!(fut.poll());

    sleep(TIMEOUT - TICK).await;
    assert_pending!(fut.poll(), "one tick before the deadline it still waits");

    sleep(TICK).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    let reply = reply(&err);
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.code, "deadline_exceeded");
    assert!(reply.message.contains("10.0 s"), "{}", reply.message);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_deadline_is_inserted_for_inner_layers() {
    let (mut svc, mut handle) = spawn();
    let start = Instant::now();
    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call(Request::new(()));
    let (req, _responder) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Deadline>(), Some(&Deadline(start + TIMEOUT)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_sooner_outer_deadline_wins() {
    let (mut svc, mut handle) = spawn();
    let outer = Instant::now() + Duration::from_secs(2);
    let mut req = Request::new(());
    req.extensions_mut().insert(Deadline(outer));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req));
    let (req, _responder) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Deadline>(), Some(&Deadline(outer)));

    sleep(Duration::from_secs(2) - TICK).await;
    assert_pending!(fut.poll());
    sleep(TICK).await;
    let err = assert_ready_err!(fut.poll());
    let reply = reply(&err);
    assert_eq!(reply.code, "deadline_exceeded");
    assert!(reply.message.contains("2.0 s"), "{}", reply.message);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_later_outer_deadline_does_not_extend_this_one() {
    let (mut svc, mut handle) = spawn();
    let start = Instant::now();
    let mut req = Request::new(());
    req.extensions_mut().insert(Deadline(start + Duration::from_secs(600)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req));
    let (req, _responder) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Deadline>(), Some(&Deadline(start + TIMEOUT)));
    sleep(TIMEOUT).await;
    assert_eq!(reply(&assert_ready_err!(fut.poll())).code, "deadline_exceeded");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_outer_deadline_already_past_fails_at_once() {
    let (mut svc, mut handle) = spawn();
    sleep(Duration::from_secs(1)).await;
    let mut req = Request::new(());
    req.extensions_mut().insert(Deadline(Instant::now() - Duration::from_millis(500)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req));
    let (_req, _responder) = handle.next_request().await.unwrap();
    // The timer fires on the driver's next turn, with no time passing.
    tokio::task::yield_now().await;
    assert_eq!(reply(&assert_ready_err!(fut.poll())).code, "deadline_exceeded");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_fast_inner_passes_through_untouched() {
    let (mut svc, mut handle) = spawn();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    let (_req, responder) = handle.next_request().await.unwrap();
    sleep(TIMEOUT - TICK).await;
    let res = Response::builder().status(StatusCode::CREATED).header("x-upstream", "1").body("answer").unwrap();
    responder.send_response(res);
    let res = assert_ready_ok!(fut.poll());
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-upstream"], "1");
    assert_eq!(*res.body().get_ref(), "answer");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_error_passes_through_as_itself() {
    let (mut svc, mut handle) = spawn();
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(Request::new(())));
    let (_req, responder) = handle.next_request().await.unwrap();
    responder.send_error(NoKeyConfigured::new("openai"));
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<NoKeyConfigured>(), "{err}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn poll_ready_waits_for_the_inner_service_and_does_not_start_the_clock() {
    let (mut svc, mut handle) = spawn();
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    // Waiting for readiness is not part of the request's deadline.
    sleep(TIMEOUT * 2).await;
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let _fut = svc.call(Request::new(()));
    let (req, _responder) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<Deadline>(), Some(&Deadline(start + TIMEOUT)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_is_not_cut_once_its_headers_are_out() {
    use http_body_util::BodyExt;
    use support::MockBody;

    let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<MockBody>, _>(DeadlineLayer::new(TIMEOUT));
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(()));
    let (_req, responder) = handle.next_request().await.unwrap();
    let (tx, body) = MockBody::channel();
    responder.send_response(Response::new(body));
    let mut body = fut.await.unwrap().into_body();

    sleep(TIMEOUT * 3).await;
    tx.data("data: late but welcome\n\n");
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: late but welcome\n\n");
    tx.end();
    assert!(body.frame().await.is_none());
}
