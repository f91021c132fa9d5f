//! In-process upstreams that speak Anthropic's Messages API and Google's
//! Gemini API on the wire, for the translating dialects.
//!
//! [`DialectMock::anthropic`] serves what `https://api.anthropic.com` does:
//!
//! - `POST /v1/messages`: a Messages API `message`, or with `"stream": true`
//!   a `text/event-stream` of named events (`event: message_start` ...
//!   `event: message_stop`), each event its own frame;
//! - `GET /v1/models`: Anthropic's model list;
//!
//! and checks every request the way the real API does: `x-api-key` present
//! (else 401 `authentication_error`), `anthropic-version: 2023-06-01` (else
//! 400), and for messages a JSON body with `model`, an integer `max_tokens`
//! and a non-empty `messages` array (else 400 `invalid_request_error`).
//!
//! [`DialectMock::gemini`] serves what
//! `https://generativelanguage.googleapis.com` does:
//!
//! - `POST /v1beta/models/{model}:generateContent`: a `GenerateContentResponse`;
//! - `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: the same as
//!   `data:` events separated by `\r\n\r\n`, as Google sends them;
//! - `POST /v1beta/models/{model}:batchEmbedContents`: one embedding per
//!   request ([`gemini::embedding_values`]), `outputDimensionality` honoured;
//! - `GET /v1beta/models`: Gemini's model list (names with `models/`);
//!
//! checking `x-goog-api-key` (else 403 `PERMISSION_DENIED`, as Google
//! answers unkeyed calls), `contents` in chat bodies and each embedding
//! request's `model` (`models/{model}`, as Google requires).
//!
//! A request the mock refuses is answered in the provider's own error
//! format with a message starting `mock:` and is recorded with the answer
//! label `refused`. Every request is recorded ([`Seen`]) before it is
//! answered. Answers are scripted like [`super::MockUpstream`]'s: per key
//! first ([`DialectMock::push_for`], then [`DialectMock::always_for`]), then
//! for any key ([`DialectMock::push`]), else the default above. Streams can
//! be held half way ([`Answer::gated`]) until a [`Gate`] opens.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
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
use keyrelay_layers::{
    pool::{KeyId, Secret},
    provider::ProviderId,
};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use super::{BoxError, Gate, PROXY_KEY};

/// Anthropic pool keys (each contains `SECRET`, so leak checks catch them).
pub const ANTHROPIC_KEY_ONE: &str = "sk-ant-api03-SECRET-one-aaaa";
pub const ANTHROPIC_KEY_TWO: &str = "sk-ant-api03-SECRET-two-bbbb";
/// Gemini pool keys.
pub const GEMINI_KEY_ONE: &str = "AIzaSy-SECRET-gemini-one-cccc";
pub const GEMINI_KEY_TWO: &str = "AIzaSy-SECRET-gemini-two-dddd";

/// In a scripted body, replaced by the key the request carried: a provider
/// that echoes the key it was sent.
pub const KEY_PLACEHOLDER: &str = "{key}";

type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which provider a mock plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Anthropic,
    Gemini,
}

impl Flavor {
    /// The provider id in keyrelay.
    pub fn provider(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }

    /// The header that carries the key.
    pub fn key_header(self) -> &'static str {
        match self {
            Self::Anthropic => "x-api-key",
            Self::Gemini => "x-goog-api-key",
        }
    }

    /// The two pool keys tests configure for this provider.
    pub fn keys(self) -> [&'static str; 2] {
        match self {
            Self::Anthropic => [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO],
            Self::Gemini => [GEMINI_KEY_ONE, GEMINI_KEY_TWO],
        }
    }
}

/// The id keyrelay shows for a pool key of `provider`.
pub fn key_id_of(provider: &str, secret: &str) -> String {
    KeyId::new(&ProviderId::new(provider), &Secret::new(secret)).as_str().to_owned()
}

/// The proxy key plus each mock's `keys` pool keys and host-only base:
/// `ANTHROPIC_API_KEY_1`, `ANTHROPIC_API_BASE=http://127.0.0.1:PORT`, ...
pub fn dialect_env(mocks: &[&DialectMock], keys: usize) -> Vec<(String, String)> {
    let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
    for mock in mocks {
        env.extend(mock.env(keys));
    }
    env
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The default answer for the route (see the module docs).
    Default,
    /// This status, extra headers and body (JSON); [`KEY_PLACEHOLDER`]
    /// becomes the key the request carried.
    Respond { status: u16, headers: Vec<(String, String)>, body: String },
    /// `200 text/event-stream` with these events (each already framed),
    /// one frame each; with a gate, the first `before` events go out, then
    /// the stream waits for the gate, then sends the rest.
    Events { events: Vec<String>, gate: Option<(usize, Gate)> },
    /// `200 application/json` and the first bytes of this body, then
    /// nothing more (the connection stays open).
    Stall { body: String },
}

impl Answer {
    /// A whole JSON answer.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::Respond { status, headers: Vec::new(), body: body.into() }
    }

    /// [`Answer::json`] with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Respond { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// A stream of these events.
    pub fn events(events: Vec<String>) -> Self {
        Self::Events { events, gate: None }
    }

    /// A stream that sends `before` events, waits for `gate`, then the rest.
    pub fn gated(events: Vec<String>, before: usize, gate: &Gate) -> Self {
        Self::Events { events, gate: Some((before, gate.clone())) }
    }

    /// How [`Seen::answer`] names it: `ok`, `status:429`, `events`.
    pub fn label(&self) -> String {
        match self {
            Self::Default => "ok".to_owned(),
            Self::Respond { status, .. } => format!("status:{status}"),
            Self::Events { .. } => "events".to_owned(),
            Self::Stall { .. } => "stall".to_owned(),
        }
    }
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The pool key it carried (the flavor's key header).
    pub key: Option<String>,
    /// [`Answer::label`], or `refused` when the mock refused it.
    pub answer: String,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("request body is not JSON ({err}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every header, joined, for leak checks.
    pub fn all_header_values(&self) -> String {
        self.headers
            .iter()
            .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
            .collect()
    }
}

#[derive(Default)]
struct KeyScripts {
    queue: VecDeque<Answer>,
    always: Option<Answer>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    queue: Mutex<VecDeque<Answer>>,
    per_key: Mutex<HashMap<String, KeyScripts>>,
    streams_finished: AtomicUsize,
}

impl State {
    fn next_answer(&self, key: Option<&str>) -> Answer {
        if let Some(key) = key
            && let Some(scripts) = self.per_key.lock().unwrap().get_mut(key)
        {
            if let Some(answer) = scripts.queue.pop_front() {
                return answer;
            }
            if let Some(answer) = &scripts.always {
                return answer.clone();
            }
        }
        self.queue.lock().unwrap().pop_front().unwrap_or(Answer::Default)
    }
}

/// A mock Anthropic or Gemini upstream; dropped with the test's runtime.
#[derive(Clone)]
pub struct DialectMock {
    flavor: Flavor,
    addr: SocketAddr,
    state: Arc<State>,
}

impl fmt::Debug for DialectMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialectMock").field("flavor", &self.flavor).field("addr", &self.addr).finish()
    }
}

impl DialectMock {
    pub async fn anthropic() -> Self {
        Self::start(Flavor::Anthropic).await
    }

    pub async fn gemini() -> Self {
        Self::start(Flavor::Gemini).await
    }

    async fn start(flavor: Flavor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the dialect mock");
        let addr = listener.local_addr().expect("dialect mock address");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(flavor, state.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { flavor, addr, state }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The host-only base, as `ANTHROPIC_API_BASE` / `GEMINI_API_BASE` take it.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `<P>_API_KEY_1..=keys` and `<P>_API_BASE` for this mock.
    pub fn env(&self, keys: usize) -> Vec<(String, String)> {
        let prefix = self.flavor.provider().to_ascii_uppercase();
        let mut env = vec![(format!("{prefix}_API_BASE"), self.base())];
        for (i, key) in self.flavor.keys()[..keys].iter().enumerate() {
            env.push((format!("{prefix}_API_KEY_{}", i + 1), (*key).to_owned()));
        }
        env
    }

    /// The id keyrelay shows for `secret`, a key of this provider.
    pub fn key_id(&self, secret: &str) -> String {
        key_id_of(self.flavor.provider(), secret)
    }

    /// Answers the next request not answered by a per-key script.
    pub fn push(&self, answer: Answer) {
        self.state.queue.lock().unwrap().push_back(answer);
    }

    /// Answers the next request carrying `key` (FIFO per key).
    pub fn push_for(&self, key: &str, answer: Answer) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().queue.push_back(answer);
    }

    /// Answers every further request carrying `key` (after its queue).
    pub fn always_for(&self, key: &str, answer: Answer) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().always = Some(answer);
    }

    pub fn clear_for(&self, key: &str) {
        self.state.per_key.lock().unwrap().remove(key);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose path ends with `suffix` (e.g. `:generateContent`).
    pub fn requests_to(&self, suffix: &str) -> Vec<Seen> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    /// The answers the requests with `key` got, in order.
    pub fn answers(&self, key: &str) -> Vec<String> {
        self.requests().into_iter().filter(|r| r.key.as_deref() == Some(key)).map(|r| r.answer).collect()
    }

    /// `(key, answer)` of every request, in order.
    pub fn log(&self) -> Vec<(String, String)> {
        self.requests().into_iter().map(|r| (r.key.unwrap_or_default(), r.answer)).collect()
    }

    /// Streams that have handed over their last event.
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }
}

async fn handle(flavor: Flavor, state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let key = parts.headers.get(flavor.key_header()).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        key,
        answer: String::new(),
    };
    let route = match flavor {
        Flavor::Anthropic => anthropic::route(&seen),
        Flavor::Gemini => gemini::route(&seen),
    };
    let answer = match &route {
        Ok(_) => state.next_answer(seen.key.as_deref()),
        Err(_) => Answer::Default,
    };
    seen.answer = if route.is_err() { "refused".to_owned() } else { answer.label() };
    let key = seen.key.clone().unwrap_or_default();
    state.seen.lock().unwrap().push(seen);
    let route = match route {
        Ok(route) => route,
        Err(refusal) => return Ok(json_response(refusal.status, refusal.body)),
    };
    Ok(match answer {
        Answer::Default => match route {
            Canned::Json(body) => json_response(200, body),
            Canned::Events(events) => event_stream(state, events, None),
        },
        Answer::Respond { status, headers, body } => {
            let mut res = json_response(status, body.replace(KEY_PLACEHOLDER, &key));
            for (name, value) in headers {
                res.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).expect("a scripted header name"),
                    HeaderValue::from_str(&value).expect("a scripted header value"),
                );
            }
            res
        }
        Answer::Events { events, gate } => event_stream(state, events, gate),
        Answer::Stall { body } => {
            let half = Bytes::from(body[..body.len() / 2].to_owned());
            let frames = futures_util::stream::once(async move { Ok::<_, BoxError>(Frame::data(half)) })
                .chain(futures_util::stream::pending());
            let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
    })
}

/// The provider's own error answer to a request it would refuse.
struct Refusal {
    status: u16,
    body: String,
}

/// The answer a well-formed request gets unless scripted otherwise.
enum Canned {
    Json(String),
    Events(Vec<String>),
}

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut res = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *res.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn event_stream(state: Arc<State>, events: Vec<String>, gate: Option<(usize, Gate)>) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(events.len() + 1);
    tokio::spawn(async move {
        let total = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if let Some((before, gate)) = &gate
                && i == *before
            {
                gate.wait().await;
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
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Anthropic's wire format: answers, streams and errors.
pub mod anthropic {
    use super::*;

    /// The version keyrelay must send.
    pub const VERSION: &str = "2023-06-01";

    /// The default answer's text.
    pub const TEXT: &str = "Hello from Claude.";

    /// An error body as Anthropic writes them.
    pub fn error(kind: &str, message: &str) -> String {
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
    }

    fn refuse(status: u16, kind: &str, message: &str) -> Refusal {
        Refusal { status, body: error(kind, &format!("mock: {message}")) }
    }

    /// What a request gets by default, or the refusal the real API would give.
    pub(super) fn route(seen: &Seen) -> Result<Canned, Refusal> {
        if seen.key.as_deref().is_none_or(str::is_empty) {
            return Err(refuse(401, "authentication_error", "x-api-key header is required"));
        }
        if seen.header("anthropic-version") != Some(VERSION) {
            return Err(refuse(400, "invalid_request_error", "anthropic-version: header is required (2023-06-01)"));
        }
        match (&seen.method, seen.path.as_str()) {
            (&Method::GET, "/v1/models") => Ok(Canned::Json(models())),
            (&Method::POST, "/v1/messages") => {
                if !seen.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
                    return Err(refuse(400, "invalid_request_error", "content-type must be application/json"));
                }
                let Ok(body) = serde_json::from_slice::<Value>(&seen.body) else {
                    return Err(refuse(400, "invalid_request_error", "the body is not JSON"));
                };
                if !body.get("model").is_some_and(Value::is_string) {
                    return Err(refuse(400, "invalid_request_error", "model: Field required"));
                }
                if !body.get("max_tokens").is_some_and(Value::is_u64) {
                    return Err(refuse(400, "invalid_request_error", "max_tokens: Field required"));
                }
                if body.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                    return Err(refuse(400, "invalid_request_error", "messages: at least one message is required"));
                }
                for field in ["stream_options", "n", "user", "max_completion_tokens", "tool_calls"] {
                    if body.get(field).is_some() {
                        let message = format!("{field}: Extra inputs are not permitted");
                        return Err(refuse(400, "invalid_request_error", &message));
                    }
                }
                let tools = body.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                if tools.iter().any(|t| !t.get("name").is_some_and(Value::is_string) || t.get("function").is_some()) {
                    return Err(refuse(400, "invalid_request_error", "tools: each tool needs a name and input_schema"));
                }
                if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    Ok(Canned::Events(text_stream()))
                } else {
                    Ok(Canned::Json(message_text()))
                }
            }
            _ => Err(refuse(404, "not_found_error", &format!("{} {} is not a route", seen.method, seen.path))),
        }
    }

    /// One named event, framed as Anthropic frames it.
    pub fn event(data: Value) -> String {
        let name = data["type"].as_str().expect("an Anthropic event has a type").to_owned();
        format!("event: {name}\ndata: {data}\n\n")
    }

    /// The default answer: one text block.
    pub fn message_text() -> String {
        json!({
            "id": "msg_01TextAnswer",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 21, "output_tokens": 7}
        })
        .to_string()
    }

    /// Text and two tool calls, with cache reads in the usage.
    pub fn message_tools() -> String {
        json!({
            "id": "msg_01ToolAnswer",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "text", "text": "Let me look that up."},
                {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather",
                 "input": {"city": "Paris", "unit": "celsius"}},
                {"type": "tool_use", "id": "toolu_02Time", "name": "get_time", "input": {}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 310, "output_tokens": 54, "cache_read_input_tokens": 100,
                      "cache_creation_input_tokens": 0}
        })
        .to_string()
    }

    fn start(id: &str, input_tokens: u64) -> String {
        event(json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}))
    }

    fn text_delta(index: u64, text: &str) -> String {
        event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}))
    }

    fn block_stop(index: u64) -> String {
        event(json!({"type": "content_block_stop", "index": index}))
    }

    fn end(stop_reason: &str, output_tokens: u64) -> Vec<String> {
        vec![
            event(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                         "usage": {"output_tokens": output_tokens}})),
            event(json!({"type": "message_stop"})),
        ]
    }

    /// A text answer streamed: "Hello" + " from Claude.", 25 tokens in, 6 out.
    /// Event 3 (0-based) is the first text delta.
    pub fn text_stream() -> Vec<String> {
        let mut events = vec![
            start("msg_01StreamText", 25),
            event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            event(json!({"type": "ping"})),
            text_delta(0, "Hello"),
            text_delta(0, " from Claude."),
            block_stop(0),
        ];
        events.extend(end("end_turn", 6));
        events
    }

    /// Text, then a `get_weather` tool call whose input arrives in pieces.
    pub fn tool_stream() -> Vec<String> {
        let json_delta = |partial: &str| {
            event(json!({"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": partial}}))
        };
        let mut events = vec![
            start("msg_01StreamTools", 40),
            event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            text_delta(0, "Checking."),
            block_stop(0),
            event(json!({"type": "content_block_start", "index": 1, "content_block":
                         {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather", "input": {}}})),
            json_delta(""),
            json_delta("{\"city\": "),
            event(json!({"type": "ping"})),
            json_delta("\"Paris\", \"unit\": \"celsius\"}"),
            block_stop(1),
        ];
        events.extend(end("tool_use", 30));
        events
    }

    /// Text, then Anthropic's mid-stream `error` event (overloaded).
    pub fn broken_stream() -> Vec<String> {
        vec![
            start("msg_01StreamBroken", 25),
            event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            text_delta(0, "Hel"),
            event(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ]
    }

    /// `GET /v1/models`.
    pub fn models() -> String {
        json!({
            "data": [
                {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
                 "created_at": "2025-09-29T00:00:00Z"},
                {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5",
                 "created_at": "2025-10-01T00:00:00Z"}
            ],
            "has_more": false,
            "first_id": "claude-sonnet-4-5-20250929",
            "last_id": "claude-haiku-4-5-20251001"
        })
        .to_string()
    }

    /// 429 `rate_limit_error`, with `retry-after` when given.
    pub fn rate_limited(retry_after: Option<&str>) -> Answer {
        let answer = Answer::json(
            429,
            error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute. \
                 For details, refer to: https://docs.claude.com/en/api/rate-limits.",
            ),
        )
        .with_header("anthropic-ratelimit-requests-remaining", "0");
        match retry_after {
            Some(secs) => answer.with_header("retry-after", secs),
            None => answer,
        }
    }

    /// 401 `authentication_error`.
    pub fn invalid_key() -> Answer {
        Answer::json(401, error("authentication_error", "invalid x-api-key"))
    }

    /// 529 `overloaded_error`.
    pub fn overloaded() -> Answer {
        Answer::json(529, error("overloaded_error", "Overloaded"))
    }

    /// 500 `api_error` that echoes the key it was sent, as a careless
    /// provider might.
    pub fn server_error_echoing_key() -> Answer {
        Answer::json(500, error("api_error", "Internal server error (request made with key {key})"))
    }

    /// 400 `invalid_request_error`: the request's own fault.
    pub fn bad_request(message: &str) -> Answer {
        Answer::json(400, error("invalid_request_error", message))
    }

    /// 404 `not_found_error` for an unknown model.
    pub fn unknown_model(model: &str) -> Answer {
        Answer::json(404, error("not_found_error", &format!("model: {model}")))
    }

    /// Anthropic's answer to an account out of credit: a 400.
    pub fn credit_balance_too_low() -> Answer {
        Answer::json(
            400,
            error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. \
                 Please go to Plans & Billing to upgrade or purchase credits.",
            ),
        )
    }
}

/// Gemini's wire format: answers, streams, embeddings and errors.
pub mod gemini {
    use super::*;

    /// The default answer's text.
    pub const TEXT: &str = "Hello from Gemini.";

    /// An error body as Google writes them.
    pub fn error(code: u16, status: &str, message: &str, details: Value) -> String {
        let mut error = json!({"code": code, "message": message, "status": status});
        if !details.is_null() {
            error["details"] = details;
        }
        json!({ "error": error }).to_string()
    }

    fn refuse(code: u16, status: &str, message: &str) -> Refusal {
        Refusal { status: code, body: error(code, status, &format!("mock: {message}"), Value::Null) }
    }

    /// What a request gets by default, or the refusal the real API would give.
    pub(super) fn route(seen: &Seen) -> Result<Canned, Refusal> {
        if seen.key.as_deref().is_none_or(str::is_empty) {
            return Err(refuse(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). \
                 Please use API Key or other form of API consumer identity to call this API.",
            ));
        }
        let query = seen.query.as_deref().unwrap_or_default();
        if query.split('&').any(|pair| pair.starts_with("key=")) {
            return Err(refuse(400, "INVALID_ARGUMENT", "the key belongs in x-goog-api-key, not in the URL"));
        }
        if seen.method == Method::GET && seen.path == "/v1beta/models" {
            return Ok(Canned::Json(models()));
        }
        let Some((model, method)) = seen.path.strip_prefix("/v1beta/models/").and_then(|rest| rest.rsplit_once(':'))
        else {
            return Err(refuse(404, "NOT_FOUND", &format!("{} {} is not a route", seen.method, seen.path)));
        };
        if seen.method != Method::POST {
            return Err(refuse(405, "INVALID_ARGUMENT", "POST only"));
        }
        if !seen.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
            return Err(refuse(400, "INVALID_ARGUMENT", "content-type must be application/json"));
        }
        let Ok(body) = serde_json::from_slice::<Value>(&seen.body) else {
            return Err(refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received."));
        };
        match method {
            "generateContent" | "streamGenerateContent" => {
                if body.get("contents").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                    return Err(refuse(
                        400,
                        "INVALID_ARGUMENT",
                        "* GenerateContentRequest.contents: contents is not specified",
                    ));
                }
                for field in ["model", "messages", "stream", "max_tokens", "temperature", "tool_choice"] {
                    if body.get(field).is_some() {
                        return Err(refuse(
                            400,
                            "INVALID_ARGUMENT",
                            &format!("Invalid JSON payload received. Unknown name \"{field}\": Cannot find field."),
                        ));
                    }
                }
                if method == "generateContent" {
                    return Ok(Canned::Json(response_text()));
                }
                if !query.split('&').any(|pair| pair == "alt=sse") {
                    return Err(refuse(400, "INVALID_ARGUMENT", "this mock streams only with alt=sse"));
                }
                Ok(Canned::Events(text_stream()))
            }
            "batchEmbedContents" => {
                let Some(requests) = body.get("requests").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
                    return Err(refuse(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: is required"));
                };
                let mut embeddings = Vec::new();
                for (i, request) in requests.iter().enumerate() {
                    if request.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) {
                        return Err(refuse(
                            400,
                            "INVALID_ARGUMENT",
                            &format!("requests[{i}].model must be models/{model}, as in the URL"),
                        ));
                    }
                    if request.pointer("/content/parts/0/text").and_then(Value::as_str).is_none() {
                        return Err(refuse(400, "INVALID_ARGUMENT", &format!("requests[{i}].content has no text")));
                    }
                    let dims = request.get("outputDimensionality").and_then(Value::as_u64).unwrap_or(4) as usize;
                    embeddings.push(json!({ "values": embedding_values(i, dims) }));
                }
                Ok(Canned::Json(json!({ "embeddings": embeddings }).to_string()))
            }
            other => Err(refuse(404, "NOT_FOUND", &format!("method {other} is not served by this mock"))),
        }
    }

    /// The values the mock embeds the `i`-th input as, `dims` of them:
    /// short decimals, as Google writes its (`f32`) values.
    pub fn embedding_values(i: usize, dims: usize) -> Vec<f64> {
        (0..dims)
            .map(|j| match j {
                0 => [0.013168523, -0.008711934, 0.046782676][i % 3],
                1 => -0.5 - i as f64,
                _ => (j as f64) * 0.0625 - 0.125,
            })
            .collect()
    }

    /// One `alt=sse` event, framed as Google frames it.
    pub fn event(data: Value) -> String {
        format!("data: {data}\r\n\r\n")
    }

    /// The default answer: one text part.
    pub fn response_text() -> String {
        json!({
            "candidates": [{"content": {"parts": [{"text": TEXT}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 5, "totalTokenCount": 16},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-text-1"
        })
        .to_string()
    }

    /// Text and two function calls (the first signed).
    pub fn response_tools() -> String {
        json!({
            "candidates": [{"content": {"parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                 "thoughtSignature": "c2lnbmF0dXJl"},
                {"functionCall": {"name": "get_time", "args": {}}}
            ], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 40, "totalTokenCount": 160},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-tools-1"
        })
        .to_string()
    }

    fn chunk(parts: Value, finish: Option<&str>, usage: Value, id: &str) -> String {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = reason.into();
        }
        event(json!({"candidates": [candidate], "usageMetadata": usage,
                     "modelVersion": "gemini-2.5-flash", "responseId": id}))
    }

    /// A text answer streamed: "Hello" + " from Gemini.", 9 tokens in, 4 out.
    /// Event 1 (0-based) is the second text piece.
    pub fn text_stream() -> Vec<String> {
        let early = json!({"promptTokenCount": 9, "totalTokenCount": 9});
        vec![
            chunk(json!([{"text": "Hello"}]), None, early.clone(), "resp-stream-1"),
            chunk(json!([{"text": " from Gemini."}]), None, early, "resp-stream-1"),
            chunk(
                json!([{"text": ""}]),
                Some("STOP"),
                json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}),
                "resp-stream-1",
            ),
        ]
    }

    /// Text, then a function call with the finish.
    pub fn tool_stream() -> Vec<String> {
        vec![
            chunk(json!([{"text": "Checking."}]), None, json!({"promptTokenCount": 50}), "resp-stream-tools"),
            chunk(
                json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}}}]),
                Some("STOP"),
                json!({"promptTokenCount": 50, "candidatesTokenCount": 12, "totalTokenCount": 62}),
                "resp-stream-tools",
            ),
        ]
    }

    /// Text, then Google's error object as an event.
    pub fn broken_stream() -> Vec<String> {
        vec![
            chunk(json!([{"text": "Hel"}]), None, json!({"promptTokenCount": 9}), "resp-stream-broken"),
            event(json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}})),
        ]
    }

    /// `GET /v1beta/models`: chat, embedding and other models.
    pub fn models() -> String {
        json!({"models": [
            {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash",
             "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"]},
            {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro",
             "supportedGenerationMethods": ["generateContent", "countTokens"]},
            {"name": "models/gemini-embedding-001", "displayName": "Gemini Embedding 001",
             "supportedGenerationMethods": ["embedContent", "countTextTokens"]},
            {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]}
        ]})
        .to_string()
    }

    /// 429 `RESOURCE_EXHAUSTED` (per-minute quota) with `RetryInfo.retryDelay`.
    pub fn rate_limited(retry_delay: &str) -> Answer {
        let details = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "10"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        ]);
        Answer::json(
            429,
            error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                details,
            ),
        )
    }

    /// 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`: Google's answer
    /// to a bad key.
    pub fn invalid_key() -> Answer {
        let details = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                              "domain": "googleapis.com",
                              "metadata": {"service": "generativelanguage.googleapis.com"}}]);
        Answer::json(400, error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details))
    }

    /// 503 `UNAVAILABLE`.
    pub fn unavailable() -> Answer {
        Answer::json(503, error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", Value::Null))
    }

    /// 500 `INTERNAL` that names the key it was sent, as Google's
    /// consumer messages do (`api_key:...`).
    pub fn internal_echoing_key() -> Answer {
        Answer::json(
            500,
            error(500, "INTERNAL", "Internal error encountered for consumer 'api_key:{key}'.", Value::Null),
        )
    }

    /// 400 `INVALID_ARGUMENT`: the request's own fault.
    pub fn bad_request(message: &str) -> Answer {
        Answer::json(400, error(400, "INVALID_ARGUMENT", message, Value::Null))
    }

    /// 404 `NOT_FOUND` for an unknown model.
    pub fn unknown_model(model: &str) -> Answer {
        let message =
            format!("models/{model} is not found for API version v1beta, or is not supported for generateContent.");
        Answer::json(404, error(404, "NOT_FOUND", &message, Value::Null))
    }

    /// 429 `RESOURCE_EXHAUSTED` for the per-day quota, without a retry hint.
    pub fn daily_quota_exhausted() -> Answer {
        let details = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "250"}]}
        ]);
        Answer::json(
            429,
            error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                details,
            ),
        )
    }
}
