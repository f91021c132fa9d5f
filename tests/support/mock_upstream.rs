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
//! Scripts (see [`Script`]) change the answer. The first that applies wins:
//!
//! 1. [`MockUpstream::push_for`]: the next request carrying that pool key
//!    (its `Authorization: Bearer` value), in order;
//! 2. [`MockUpstream::always_for`] / [`MockUpstream::faults_for`]: every
//!    further request with that key, until [`MockUpstream::clear_for`];
//! 3. [`MockUpstream::push`]: the next request, whatever its key;
//! 4. the default answer above.
//!
//! Every request is recorded, with its headers, body bytes, arrival time and
//! a label of the answer it got ([`Recorded::answer`]), before it is
//! answered. The mock also counts requests in flight per key, and the most
//! it ever saw at once ([`MockUpstream::max_in_flight`]). A request counts
//! from its arrival until its answer is handed over: a whole response just
//! before its headers go out, a stream just before its last frame (or its
//! break), a hanging one until the proxy drops its connection. So a key's
//! count can only be lower than the proxy's own view of it, never higher,
//! and a count above the proxy's cap is a real breach.

use std::{
    collections::{HashMap, VecDeque},
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
    time::Instant,
};

use super::BoxError;

const CHAT_COMPLETION: &str = include_str!("../fixtures/openai/chat_completion.json");
const CHAT_STREAM: &str = include_str!("../fixtures/openai/chat_completion_stream.sse");
const EMBEDDINGS: &str = include_str!("../fixtures/openai/embeddings.json");
const MODELS: &str = include_str!("../fixtures/openai/models.json");
/// An OpenAI 400 body, pretty-printed as OpenAI sends it.
pub const INVALID_REQUEST: &str = include_str!("../fixtures/openai/error_invalid_request.json");

/// In a scripted body, replaced by the bearer value the request carried:
/// an upstream that echoes the key it was sent.
pub const BEARER_PLACEHOLDER: &str = "{bearer}";
/// How the in-flight counters name requests without a bearer.
const NO_BEARER: &str = "<no bearer>";
/// How long a [`Script::BreakAfter`] stream pauses before it breaks, so
/// that hyper flushes the events before it (it flushes whenever the body
/// has nothing more to give) and the break cannot overtake them.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived (its body read).
    pub at: Instant,
    /// What it was answered: [`Script::label`], or `"ok"` for the default.
    pub answer: String,
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

    /// The body's `model`, when it is JSON and has one.
    pub fn model(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body).ok()?.get("model")?.as_str().map(str::to_owned)
    }

    /// Whether the body asks for a stream.
    pub fn wants_stream(&self) -> bool {
        serde_json::from_slice::<Value>(&self.body).ok().and_then(|v| v.get("stream")?.as_bool()).unwrap_or(false)
    }

    /// The body's `user` field (tests tag requests with it).
    pub fn user(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body).ok()?.get("user")?.as_str().map(str::to_owned)
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

    pub(super) async fn wait(&self) {
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

/// Holds requests ([`Script::Hold`]) and lets them go a given number at a
/// time, or all at once. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Valve(Arc<Semaphore>);

impl Valve {
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    /// Lets `n` more held requests (present or future) through.
    pub fn release(&self, n: usize) {
        self.0.add_permits(n);
    }

    /// Lets every held request through, now and later.
    pub fn open(&self) {
        self.0.close();
    }

    async fn pass(&self) {
        // Closed means open: the error is the way through.
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
    }
}

impl Default for Valve {
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
    /// The default answer (see the module docs).
    Ok,
    /// This status, these extra headers and these exact body bytes
    /// (`Content-Type: application/json`); [`BEARER_PLACEHOLDER`] in the body
    /// becomes the key the request carried.
    Respond { status: u16, headers: Vec<(String, String)>, body: Bytes },
    /// Never answer (the request is still recorded).
    Hang,
    /// Answer `200` with the first bytes of a JSON body, then never send
    /// the rest (the connection stays open).
    Stall { prefix: Bytes },
    /// Close the connection without answering (FIN).
    Close,
    /// Reset the connection without answering (RST: the socket is closed
    /// with a zero linger).
    Reset,
    /// Stream the chat fixture: `before` events at once, then wait for
    /// `gate`, then [`Then`].
    Stream { before: usize, gate: Gate, then: Then },
    /// A `200` that breaks after `k` events: a stream sends `k` events,
    /// pauses briefly so they are flushed, then cuts the connection. A
    /// request without `"stream": true` gets the first half of its JSON
    /// body instead, then the cut.
    BreakAfter(usize),
    /// Wait until the valve lets this request through, then the default
    /// answer.
    Hold(Valve),
    /// Wait until the valve lets this request through, then answer as the
    /// inner script says (labelled as the inner script).
    HoldThen(Valve, Box<Script>),
}

/// Picks the answer for each request with one key; see [`MockUpstream::faults_for`].
pub type FaultFn = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;

const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const INSUFFICIENT_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const PAYMENT_REQUIRED: &str = r#"{"error":{"message":"Payment required: add credits to continue.","type":"billing_error","param":null,"code":null}}"#;
/// Echoes the whole key, as a careless provider might.
const INVALID_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: {bearer}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
/// Echoes the whole key too.
const SERVER_ERROR: &str = r#"{"error":{"message":"The server had an error while processing your request with key {bearer}. Sorry about that!","type":"server_error","param":null,"code":null}}"#;

impl Script {
    pub fn respond(status: u16, body: impl Into<Bytes>) -> Self {
        Self::Respond { status, headers: Vec::new(), body: body.into() }
    }

    /// [`Script::respond`] with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Respond { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// One event, then wait for `gate`, then the rest.
    pub fn gated_stream(gate: &Gate) -> Self {
        Self::Stream { before: 1, gate: gate.clone(), then: Then::Finish }
    }

    /// OpenAI's 429 for requests per minute, with `Retry-After` when given.
    /// The body holds no retry hint of its own.
    pub fn rate_limited(retry_after: Option<&str>) -> Self {
        let script = Self::respond(429, RATE_LIMITED);
        match retry_after {
            Some(value) => script.with_header("retry-after", value),
            None => script,
        }
    }

    /// OpenAI's 429 `insufficient_quota` (no hint: quota comes back at the daily reset).
    pub fn insufficient_quota() -> Self {
        Self::respond(429, INSUFFICIENT_QUOTA)
    }

    /// A 402.
    pub fn payment_required() -> Self {
        Self::respond(402, PAYMENT_REQUIRED)
    }

    /// OpenAI's 401 `invalid_api_key`, echoing the key it was sent.
    pub fn invalid_key() -> Self {
        Self::respond(401, INVALID_KEY)
    }

    /// A server error with this status, echoing the key it was sent.
    pub fn server_error(status: u16) -> Self {
        Self::respond(status, SERVER_ERROR)
    }

    /// OpenAI's 400 (the request's own fault).
    pub fn client_error() -> Self {
        Self::respond(400, INVALID_REQUEST)
    }

    /// A short name of the answer, as [`Recorded::answer`] shows it:
    /// `ok`, `status:429`, `hang`, `stall`, `close`, `reset`, `stream`,
    /// `break:K`, `hold` (a [`Script::HoldThen`] by its inner script).
    pub fn label(&self) -> String {
        match self {
            Self::Ok => "ok".to_owned(),
            Self::Respond { status, .. } => format!("status:{status}"),
            Self::Hang => "hang".to_owned(),
            Self::Stall { .. } => "stall".to_owned(),
            Self::Close => "close".to_owned(),
            Self::Reset => "reset".to_owned(),
            Self::Stream { .. } => "stream".to_owned(),
            Self::BreakAfter(k) => format!("break:{k}"),
            Self::Hold(_) => "hold".to_owned(),
            Self::HoldThen(_, then) => then.label(),
        }
    }
}

/// Scripts for one key.
#[derive(Default)]
struct KeyScripts {
    queue: VecDeque<Script>,
    always: Option<FaultFn>,
}

/// Requests in flight with one key, now and at most.
#[derive(Clone, Copy, Debug, Default)]
struct Flight {
    now: usize,
    max: usize,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<VecDeque<Script>>,
    per_key: Mutex<HashMap<String, KeyScripts>>,
    flights: Mutex<HashMap<String, Flight>>,
    /// Streams whose `data: [DONE]` has been handed to the connection.
    streams_finished: AtomicUsize,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    fn next_script(&self, key: &str, req: &Recorded) -> Option<Script> {
        let always = {
            let mut per_key = self.per_key.lock().unwrap();
            match per_key.get_mut(key) {
                Some(scripts) => match scripts.queue.pop_front() {
                    Some(script) => return Some(script),
                    None => scripts.always.clone(),
                },
                None => None,
            }
        };
        // Called without the lock, so that it may do anything.
        if let Some(pick) = always {
            return Some(pick(req));
        }
        self.scripts.lock().unwrap().pop_front()
    }
}

/// Counts one request in flight for its key until dropped.
struct Flying {
    state: Arc<State>,
    key: String,
}

impl Flying {
    fn new(state: Arc<State>, key: &str) -> Self {
        {
            let mut flights = state.flights.lock().unwrap();
            let flight = flights.entry(key.to_owned()).or_default();
            flight.now += 1;
            flight.max = flight.max.max(flight.now);
        }
        Self { state, key: key.to_owned() }
    }
}

impl Drop for Flying {
    fn drop(&mut self) {
        let mut flights = self.state.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get_mut(&self.key) {
            flight.now -= 1;
        }
    }
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
                // Events go out as they are written, as from a real provider
                // (Nagle would hold each small frame for the last one's ACK).
                let _ = stream.set_nodelay(true);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let reset = Arc::new(AtomicBool::new(false));
                    let io = MockIo { tcp: stream, reset: reset.clone() };
                    let svc = service_fn(move |req| handle(state.clone(), reset.clone(), req));
                    // Errors here are the scripted closes, resets and breaks.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
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

    /// Scripts the answer to the next request not yet scripted (FIFO),
    /// whatever its key.
    pub fn push(&self, script: Script) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// Scripts the answer to the next request carrying `key` (FIFO per key).
    pub fn push_for(&self, key: &str, script: Script) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().queue.push_back(script);
    }

    /// Answers every request carrying `key` with `script` (after its
    /// [`push_for`](Self::push_for) queue), until [`clear_for`](Self::clear_for).
    pub fn always_for(&self, key: &str, script: Script) {
        self.faults_for(key, move |_| script.clone());
    }

    /// Answers every request carrying `key` with what `pick` says for it
    /// (after its [`push_for`](Self::push_for) queue).
    pub fn faults_for(&self, key: &str, pick: impl Fn(&Recorded) -> Script + Send + Sync + 'static) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().always = Some(Arc::new(pick));
    }

    /// Drops every script of `key`.
    pub fn clear_for(&self, key: &str) {
        self.state.per_key.lock().unwrap().remove(key);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every request so far, in arrival order, forgetting them: a long run
    /// calls it now and then so that the records do not grow without bound.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.state.requests.lock().unwrap())
    }

    /// Requests to paths ending with `suffix`, e.g. `/chat/completions`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    /// Requests that carried `key`.
    pub fn requests_with(&self, key: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.bearer() == Some(key)).collect()
    }

    /// The pool key each request carried, in arrival order.
    pub fn keys_seen(&self) -> Vec<String> {
        self.requests().iter().map(|r| r.bearer().unwrap_or(NO_BEARER).to_owned()).collect()
    }

    /// How many streams have sent their final `data: [DONE]`.
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }

    /// Requests with `key` in flight now (see the module docs).
    pub fn in_flight(&self, key: &str) -> usize {
        self.state.flights.lock().unwrap().get(key).map_or(0, |f| f.now)
    }

    /// The most requests with `key` ever in flight at once.
    pub fn max_in_flight(&self, key: &str) -> usize {
        self.state.flights.lock().unwrap().get(key).map_or(0, |f| f.max)
    }

    /// Requests in flight now, all keys together.
    pub fn total_in_flight(&self) -> usize {
        self.state.flights.lock().unwrap().values().map(|f| f.now).sum()
    }
}

async fn handle(
    state: Arc<State>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut recorded = Recorded {
        method: parts.method,
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
        at: Instant::now(),
        answer: String::new(),
    };
    let key = recorded.bearer().unwrap_or(NO_BEARER).to_owned();
    let flying = Flying::new(state.clone(), &key);
    let mut script = state.next_script(&key, &recorded).unwrap_or(Script::Ok);
    recorded.answer = script.label();
    state.requests.lock().unwrap().push(recorded.clone());
    let model = recorded.model();
    let model = model.as_deref().unwrap_or("unknown");
    loop {
        match script {
            Script::Hold(valve) => {
                valve.pass().await;
                script = Script::Ok;
            }
            Script::HoldThen(valve, then) => {
                valve.pass().await;
                script = *then;
            }
            _ => break,
        }
    }
    match script {
        Script::Ok | Script::Hold(_) | Script::HoldThen(..) => Ok(default_response(state, &recorded, model, flying)),
        Script::Respond { status, headers, body } => {
            let body = match std::str::from_utf8(&body) {
                Ok(text) if text.contains(BEARER_PLACEHOLDER) => Bytes::from(text.replace(BEARER_PLACEHOLDER, &key)),
                _ => body,
            };
            let mut res = json_response(status, body);
            for (name, value) in headers {
                res.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).expect("a scripted header name"),
                    HeaderValue::from_str(&value).expect("a scripted header value"),
                );
            }
            drop(flying);
            Ok(res)
        }
        Script::Hang => {
            // Counted in flight until the proxy gives up on the connection.
            let _flying = flying;
            std::future::pending().await
        }
        Script::Stall { prefix } => {
            let frames = futures_util::stream::once(async move { Ok(Frame::data(prefix)) })
                .chain(futures_util::stream::pending())
                .map(move |frame| {
                    let _held = &flying;
                    frame
                });
            let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
        Script::Close => {
            drop(flying);
            Err("scripted: close without answering".into())
        }
        Script::Reset => {
            drop(flying);
            reset.store(true, Ordering::SeqCst);
            Err("scripted: reset without answering".into())
        }
        Script::Stream { before, gate, then } => {
            Ok(stream_response(state, model, before, Pause::Gate(gate, then), flying))
        }
        Script::BreakAfter(k) if recorded.wants_stream() => {
            Ok(stream_response(state, model, k, Pause::BreakNow, flying))
        }
        Script::BreakAfter(_) => {
            let whole = chat_completion(model);
            let half = Bytes::from(whole[..whole.len() / 2].to_owned());
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(half))).await;
                tokio::time::sleep(FLUSH_PAUSE).await;
                drop(flying);
                let _ = tx.send(Err("scripted: body broken".into())).await;
            });
            let mut res = Response::new(channel_body(rx));
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
    }
}

fn default_response(state: Arc<State>, req: &Recorded, model: &str, flying: Flying) -> Response<MockBody> {
    let path = req.path.split('?').next().unwrap_or_default();
    match (&req.method, path) {
        (&Method::POST, p) if p.ends_with("/chat/completions") => {
            if req.wants_stream() {
                stream_response(state, model, usize::MAX, Pause::Never, flying)
            } else {
                json_response(200, chat_completion(model))
            }
        }
        (&Method::POST, p) if p.ends_with("/embeddings") => json_response(200, with_model(EMBEDDINGS, model)),
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

/// Where a scripted stream stops on its way.
enum Pause {
    Never,
    /// Wait for the gate, then finish or break.
    Gate(Gate, Then),
    /// Break at once (after a flush pause).
    BreakNow,
}

fn stream_response(state: Arc<State>, model: &str, before: usize, pause: Pause, flying: Flying) -> Response<MockBody> {
    let events = stream_events(model);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(events.len() + 1);
    tokio::spawn(async move {
        let mut flying = Some(flying);
        let total = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if i == before {
                let broken = match &pause {
                    Pause::Never => false,
                    Pause::Gate(gate, then) => {
                        gate.wait().await;
                        *then == Then::Break
                    }
                    Pause::BreakNow => {
                        tokio::time::sleep(FLUSH_PAUSE).await;
                        true
                    }
                };
                if broken {
                    drop(flying.take());
                    let _ = tx.send(Err("scripted: stream broken".into())).await;
                    return;
                }
            }
            if i + 1 == total {
                drop(flying.take());
                state.streams_finished.fetch_add(1, Ordering::SeqCst);
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let mut res = Response::new(channel_body(rx));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    res
}

fn channel_body(rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> MockBody {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A connection's socket, which [`Script::Reset`] closes with a reset (a
/// zero linger) instead of the usual FIN.
struct MockIo {
    tcp: TcpStream,
    reset: Arc<AtomicBool>,
}

impl MockIo {
    fn resetting(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }
}

impl Drop for MockIo {
    fn drop(&mut self) {
        if self.resetting() {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for MockIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for MockIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.resetting() {
            // No FIN: the drop resets the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
