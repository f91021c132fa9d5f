//! A small client for talking to the proxy: requests with either kind of
//! proxy key, whole-body replies, OpenAI error checks, and an SSE reader
//! that takes the response frame by frame.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

use super::{BoxError, assert_no_secret, within};

/// Request bodies: whole or chunked.
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// How a request presents the proxy key.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    None,
    /// `Authorization: Bearer <key>`, as OpenAI SDKs send it.
    Bearer(&'a str),
    /// `x-api-key: <key>`, as Anthropic-style clients send it.
    XApiKey(&'a str),
    /// `x-goog-api-key: <key>`, as Google's clients send it.
    GoogKey(&'a str),
}

fn builder(method: Method, url: &str, auth: Auth<'_>) -> http::request::Builder {
    let builder = Request::builder().method(method).uri(url);
    match auth {
        Auth::None => builder,
        Auth::Bearer(key) => builder.header(header::AUTHORIZATION, format!("Bearer {key}")),
        Auth::XApiKey(key) => builder.header("x-api-key", key),
        Auth::GoogKey(key) => builder.header("x-goog-api-key", key),
    }
}

/// A JSON `POST` with a `Content-Length`.
pub fn post(url: &str, auth: Auth<'_>, body: impl Into<Bytes>) -> Request<ReqBody> {
    builder(Method::POST, url, auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync())
        .expect("a valid request")
}

/// A JSON `POST` sent with `Transfer-Encoding: chunked` (no length known
/// up front), one chunk per part.
pub fn chunked(url: &str, auth: Auth<'_>, parts: Vec<Bytes>) -> Request<ReqBody> {
    let frames = futures_util::stream::iter(parts.into_iter().map(|p| Ok(Frame::data(p))));
    builder(Method::POST, url, auth)
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("a valid request")
}

/// A request without a body.
pub fn get(url: &str, auth: Auth<'_>) -> Request<ReqBody> {
    request(Method::GET, url, auth)
}

pub fn request(method: Method, url: &str, auth: Auth<'_>) -> Request<ReqBody> {
    builder(method, url, auth)
        .body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync())
        .expect("a valid request")
}

/// A hyper client with its own connection pool.
#[derive(Clone, Debug)]
pub struct TestClient(Client<HttpConnector, ReqBody>);

impl TestClient {
    /// HTTP/1.1.
    pub fn http1() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }

    /// HTTP/2 over cleartext with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self(Client::builder(TokioExecutor::new()).http2_only(true).build_http())
    }

    /// Sends and waits (bounded) for the response head.
    pub async fn send(&self, req: Request<ReqBody>) -> Response<Incoming> {
        let what = format!("the response to {} {}", req.method(), req.uri());
        within(&what, self.0.request(req)).await.unwrap_or_else(|err| panic!("request failed: {err:?}"))
    }

    /// Sends and reads the whole response.
    pub async fn fetch(&self, req: Request<ReqBody>) -> Reply {
        Reply::read(self.send(req).await).await
    }

    /// Sends and reads the whole response, or says why not (for a server
    /// a test is about to kill); bounded like [`Self::fetch`].
    pub async fn try_fetch(&self, req: Request<ReqBody>) -> Result<Reply, super::BoxError> {
        within("a response, or a failure", async {
            let (parts, body) = self.0.request(req).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        })
        .await
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub async fn read(res: Response<Incoming>) -> Self {
        let (parts, body) = res.into_parts();
        let body =
            within("the response body", body.collect()).await.expect("the response body arrives whole").to_bytes();
        Self { status: parts.status, headers: parts.headers, body }
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("response body is not JSON ({err}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Checks an OpenAI-shaped error: the status, `application/json`,
/// `{"error": {"message", "type", "param", "code"}}` with this `code`, a
/// message containing `message_part`, and no secret anywhere.
#[track_caller]
pub fn assert_openai_error(reply: &Reply, status: u16, code: &str, message_part: &str) {
    assert_eq!(reply.status.as_u16(), status, "status; body: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"), "error bodies are JSON");
    let body = reply.json();
    let error = body.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("no `error` object: {body}"));
    assert_eq!(error.get("code").and_then(Value::as_str), Some(code), "{body}");
    assert!(error.get("type").is_some_and(Value::is_string), "`type` is a string: {body}");
    assert!(error.contains_key("param"), "`param` is present: {body}");
    let message =
        error.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("`message` is a string: {body}"));
    assert!(message.contains(message_part), "message {message:?} should mention {message_part:?}");
    assert_no_secret("an error body", reply.text());
}

/// Reads a `text/event-stream` response frame by frame.
#[derive(Debug)]
pub struct SseReader {
    body: Incoming,
    buf: BytesMut,
    ended: bool,
}

impl SseReader {
    pub fn new(body: Incoming) -> Self {
        Self { body, buf: BytesMut::new(), ended: false }
    }

    /// The next whole event (`data: ...`, without its blank line), reading
    /// frames as needed; `None` once the body ended. Fails on a body error
    /// or a wait beyond [`super::WAIT`].
    pub async fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = self.buf.split_to(at + 2);
                let event = std::str::from_utf8(&event[..at]).expect("events are UTF-8");
                return Some(event.to_owned());
            }
            if self.ended {
                assert!(
                    self.buf.is_empty(),
                    "the stream ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            match within("the next stream frame", self.body.frame()).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(err)) => panic!("the stream failed: {err:?}"),
                None => self.ended = true,
            }
        }
    }

    /// Every remaining event until the body ends.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }
}
