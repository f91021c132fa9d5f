//! An in-process upstream that speaks OpenAI's wire format.
//!
//! By default it answers like OpenAI, from the fixtures in
//! `tests/fixtures/openai/`, echoing the `model` it received:
//!
//! - `POST .../chat/completions`: a `chat.completion`, or with
//!   `"stream": true` a `text/event-stream` of `chat.completion.chunk`
//!   events and `data: [DONE]`, each event sent as its own frame;
//! - `POST .../embeddings`: an embedding list;
//! - `GET .../models`: a model list;
//! - anything else: 404 with an OpenAI error body.
//!
//! [`MockUpstream::push`] scripts the next request's answer instead (see
//! [`Script`]). Every request is recorded, with its headers and body bytes,
//! before it is answered.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use super::BoxError;

const CHAT_COMPLETION: &str = include_str!("../fixtures/openai/chat_completion.json");
const CHAT_STREAM: &str = include_str!("../fixtures/openai/chat_completion_stream.sse");
const EMBEDDINGS: &str = include_str!("../fixtures/openai/embeddings.json");
const MODELS: &str = include_str!("../fixtures/openai/models.json");
/// An OpenAI 400 body, pretty-printed as OpenAI sends it.
pub const INVALID_REQUEST: &str = include_str!("../fixtures/openai/error_invalid_request.json");

type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The bearer token of `Authorization`, i.e. the pool key that was used.
    pub fn bearer(&self) -> Option<&str> {
        self.headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("request body is UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// Every header value, joined, for leak checks.
    pub fn all_header_values(&self) -> String {
        self.headers
            .iter()
            .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
            .collect()
    }
}

/// Holds a scripted stream until opened. Cloning shares the gate; opening
/// it releases every stream waiting on it, now or later.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// What a gated stream does once its gate opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Send the remaining events, `data: [DONE]` last, and end cleanly.
    Finish,
    /// Abort the response mid-body: the connection is cut. hyper may drop
    /// frames it has not flushed yet, so break only after the client has
    /// read the events it should see (open the gate then).
    Break,
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Script {
    /// This status with these exact body bytes (`Content-Type: application/json`).
    Respond { status: u16, body: Bytes },
    /// Never answer (the request is still recorded).
    Hang,
    /// Answer `200` with the first bytes of a JSON body, then never send
    /// the rest (the connection stays open).
    Stall { prefix: Bytes },
    /// Close the connection without answering.
    Close,
    /// Stream the chat fixture: `before` events at once, then wait for
    /// `gate`, then [`Then`].
    Stream { before: usize, gate: Gate, then: Then },
}

impl Script {
    pub fn respond(status: u16, body: impl Into<Bytes>) -> Self {
        Self::Respond { status, body: body.into() }
    }

    /// One event, then wait for `gate`, then the rest.
    pub fn gated_stream(gate: &Gate) -> Self {
        Self::Stream { before: 1, gate: gate.clone(), then: Then::Finish }
    }
}

#[derive(Debug, Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<VecDeque<Script>>,
    /// Streams whose `data: [DONE]` has been handed to the connection.
    streams_finished: AtomicUsize,
}

/// The mock upstream; dropped with the test's runtime.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves on the current runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    // Errors here are the scripted closes and breaks.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL as `OPENAI_API_BASE` takes it: `http://127.0.0.1:PORT/v1`.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Scripts the answer to the next request not yet scripted (FIFO).
    pub fn push(&self, script: Script) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests to paths ending with `suffix`, e.g. `/chat/completions`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    /// The pool key each request carried, in arrival order.
    pub fn keys_seen(&self) -> Vec<String> {
        self.requests().iter().map(|r| r.bearer().unwrap_or("<no bearer>").to_owned()).collect()
    }

    /// How many streams have sent their final `data: [DONE]`.
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let recorded = Recorded {
        method: parts.method,
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let script = state.scripts.lock().unwrap().pop_front();
    let model =
        serde_json::from_slice::<Value>(&recorded.body).ok().and_then(|v| v.get("model")?.as_str().map(str::to_owned));
    match script {
        Some(Script::Respond { status, body }) => Ok(json_response(status, body)),
        Some(Script::Hang) => std::future::pending().await,
        Some(Script::Stall { prefix }) => {
            let frames = futures_util::stream::once(async move { Ok(Frame::data(prefix)) })
                .chain(futures_util::stream::pending());
            let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
        Some(Script::Close) => Err("scripted: close without answering".into()),
        Some(Script::Stream { before, gate, then }) => {
            Ok(stream_response(state, model.as_deref().unwrap_or("unknown"), before, Some((gate, then))))
        }
        None => Ok(default_response(state, &recorded, model.as_deref())),
    }
}

fn default_response(state: Arc<State>, req: &Recorded, model: Option<&str>) -> Response<MockBody> {
    let path = req.path.split('?').next().unwrap_or_default();
    match (&req.method, path) {
        (&Method::POST, p) if p.ends_with("/chat/completions") => {
            let stream = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("stream")?.as_bool())
                .unwrap_or(false);
            let model = model.unwrap_or("unknown");
            if stream {
                stream_response(state, model, usize::MAX, None)
            } else {
                json_response(200, chat_completion(model))
            }
        }
        (&Method::POST, p) if p.ends_with("/embeddings") => {
            json_response(200, with_model(EMBEDDINGS, model.unwrap_or("unknown")))
        }
        (&Method::GET, p) if p.ends_with("/models") => json_response(200, MODELS),
        _ => json_response(
            404,
            r#"{"error":{"message":"Unknown request URL. (mock upstream)","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#,
        ),
    }
}

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut res = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *res.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The non-streaming chat answer the mock gives for `model`, byte for byte.
pub fn chat_completion(model: &str) -> String {
    with_model(CHAT_COMPLETION, model)
}

/// A fixture document with its `model` set to what the request asked for.
fn with_model(fixture: &str, model: &str) -> String {
    let mut doc: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    doc["model"] = Value::from(model);
    doc.to_string()
}

/// The stream fixture's events, each `data: ...\n\n`, `model` set.
pub fn stream_events(model: &str) -> Vec<String> {
    CHAT_STREAM
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("fixture events are data:");
            if data == "[DONE]" {
                "data: [DONE]\n\n".to_owned()
            } else {
                format!("data: {}\n\n", with_model(data, model))
            }
        })
        .collect()
}

fn stream_response(state: Arc<State>, model: &str, before: usize, gate: Option<(Gate, Then)>) -> Response<MockBody> {
    let events = stream_events(model);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(events.len() + 1);
    tokio::spawn(async move {
        let total = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if i == before
                && let Some((gate, then)) = &gate
            {
                gate.wait().await;
                if *then == Then::Break {
                    let _ = tx.send(Err("scripted: stream broken".into())).await;
                    return;
                }
            }
            if i + 1 == total {
                state.streams_finished.fetch_add(1, Ordering::SeqCst);
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    res
}
