//! AuthLayer alone, in front of a tower-test mock.

mod support;

use http::{HeaderMap, Request, Response};
use keyrelay_layers::{auth::AuthLayer, pool::Secret};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower_test::mock;

use support::{reply, within};

type Req = Request<()>;
type Res = Response<&'static str>;

fn require() -> AuthLayer {
    AuthLayer::require(Secret::new("proxy-key"))
}

fn request(headers: &[(&'static str, &'static str)]) -> Req {
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-request-id", "r-1")
        .body(())
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    req
}

/// Sends `req` through `layer`; returns the headers the inner service saw,
/// or the error's (status, code, message).
async fn through(layer: AuthLayer, req: Req) -> Result<HeaderMap, (u16, &'static str, String)> {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(req);
    let seen = match handle.poll_request() {
        std::task::Poll::Ready(Some((req, send))) => {
            send.send_response(Response::new("from inner"));
            Some(req.headers().clone())
        }
        _ => None,
    };
    match within(fut).await {
        Ok(res) => {
            assert_eq!(*res.body(), "from inner");
            Ok(seen.expect("an accepted request reaches the inner service"))
        }
        Err(err) => {
            assert!(seen.is_none(), "a rejected request must not reach the inner service");
            let reply = reply(&err);
            Err((reply.status.as_u16(), reply.code, reply.message))
        }
    }
}

fn assert_no_credentials(headers: &HeaderMap) {
    assert!(headers.get("authorization").is_none(), "{headers:?}");
    assert!(headers.get("x-api-key").is_none(), "{headers:?}");
}

#[tokio::test]
async fn bearer_token_is_accepted_and_stripped_before_the_inner_service() {
    let seen = through(require(), request(&[("authorization", "Bearer proxy-key")])).await.unwrap();
    assert_no_credentials(&seen);
    assert_eq!(seen["x-request-id"], "r-1", "other headers pass");
    assert_eq!(seen["content-type"], "application/json");
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
    for value in ["bearer proxy-key", "BEARER proxy-key", "Bearer   proxy-key  "] {
        let seen = through(require(), request(&[("authorization", value)])).await;
        assert_no_credentials(&seen.unwrap_or_else(|e| panic!("{value:?}: {e:?}")));
    }
}

#[tokio::test]
async fn x_api_key_is_accepted_and_stripped_before_the_inner_service() {
    let seen = through(require(), request(&[("x-api-key", "proxy-key")])).await.unwrap();
    assert_no_credentials(&seen);
}

#[tokio::test]
async fn both_credential_headers_are_stripped_when_one_of_them_matches() {
    let seen =
        through(require(), request(&[("authorization", "Bearer sk-meant-for-openai"), ("x-api-key", "proxy-key")]))
            .await
            .unwrap();
    assert_no_credentials(&seen);
}

#[tokio::test]
async fn wrong_key_is_401_invalid_api_key_and_never_reaches_the_inner_service() {
    for headers in [
        [("authorization", "Bearer wrong")],
        [("x-api-key", "wrong")],
        [("x-api-key", "proxy-ke")],
        [("authorization", "Bearer proxy-key-and-more")],
    ] {
        let (status, code, message) = through(require(), request(&headers)).await.unwrap_err();
        assert_eq!((status, code), (401, "invalid_api_key"), "{headers:?}");
        assert!(message.starts_with("invalid proxy API key"), "{message}");
    }
}

#[tokio::test]
async fn missing_key_is_401_invalid_api_key_saying_how_to_send_one() {
    for headers in [&[][..], &[("authorization", "Basic cHJveHkta2V5")][..], &[("authorization", "Bearer")][..]] {
        let (status, code, message) = through(require(), request(headers)).await.unwrap_err();
        assert_eq!((status, code), (401, "invalid_api_key"), "{headers:?}");
        assert!(message.contains("Authorization: Bearer") && message.contains("x-api-key"), "{message}");
    }
}

#[tokio::test]
async fn disabled_passes_every_request_but_still_strips_credentials() {
    for headers in [
        &[][..],
        &[("authorization", "Bearer anything")][..],
        &[("x-api-key", "anything"), ("authorization", "Basic eDp5")][..],
    ] {
        let seen =
            through(AuthLayer::disabled(), request(headers)).await.unwrap_or_else(|e| panic!("{headers:?}: {e:?}"));
        assert_no_credentials(&seen);
        assert_eq!(seen["x-request-id"], "r-1");
    }
}

#[tokio::test]
async fn poll_ready_waits_for_the_inner_service() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(require());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    assert!(!svc.is_woken());

    handle.allow(1);
    assert!(svc.is_woken(), "the inner's wake-up reaches the caller");
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test]
async fn poll_ready_passes_on_the_inner_error() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(require());
    handle.send_error("inner broke");
    let err = assert_ready_err!(svc.poll_ready());
    assert_eq!(err.to_string(), "inner broke");
}

#[tokio::test]
async fn an_inner_error_passes_through_unchanged() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(require());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request(&[("x-api-key", "proxy-key")]));
    let (_, send) = within(handle.next_request()).await.unwrap();
    send.send_error(keyrelay_layers::error::MissingModel::new());
    let err = within(fut).await.unwrap_err();
    assert_eq!(reply(&err).code, "missing_model");
}
