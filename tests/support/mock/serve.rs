//! The mock's server side: hyper HTTP/1.1 on `127.0.0.1:0`, one task per
//! connection; each request is recorded, then answered as its dialect's
//! route and its script say.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Instant,
};

use super::{
    Dialect, Gate, KEY_PLACEHOLDER, Recorded, Script, Then,
    dialect::Canned,
    state::{Flying, NO_KEY, State},
};
use crate::support::BoxError;

/// How long a [`Script::BreakAfter`] answer pauses before it breaks, so
/// that hyper flushes what went before (it flushes whenever the body has
/// nothing more to give) and the break cannot overtake it.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// Binds `127.0.0.1:0` and serves `dialect` on the current runtime.
pub(super) async fn listen(dialect: Dialect) -> (SocketAddr, Arc<State>) {
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
                let svc = service_fn(move |req| handle(dialect, state.clone(), reset.clone(), req));
                // Errors here are the scripted closes, resets and breaks.
                let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    (addr, state)
}

async fn handle(
    dialect: Dialect,
    state: Arc<State>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        key: dialect.key_of(&parts.headers),
        headers: parts.headers,
        body,
        at: Instant::now(),
        answer: String::new(),
    };
    let key = recorded.key.clone().unwrap_or_else(|| NO_KEY.to_owned());
    let flying = Flying::new(state.clone(), &key);
    let canned = match dialect.route(&recorded) {
        Ok(canned) => canned,
        Err(refusal) => {
            // Refused as the provider would: no script is spent on it.
            recorded.answer = "refused".to_owned();
            state.requests.lock().unwrap().push(recorded);
            return Ok(json_response(refusal.status, refusal.body));
        }
    };
    let mut script = state.next_script(&key, &recorded).unwrap_or(Script::Ok);
    recorded.answer = script.label();
    state.requests.lock().unwrap().push(recorded.clone());
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
            Script::Slow(delay) => {
                tokio::time::sleep(delay).await;
                script = Script::Ok;
            }
            _ => break,
        }
    }
    match script {
        Script::Ok | Script::Hold(_) | Script::HoldThen(..) | Script::Slow(_) => Ok(match canned {
            Canned::Json { status, body } => json_response(status, body),
            Canned::Events(events) => stream_response(state, events, usize::MAX, Pause::Never, flying),
        }),
        Script::Respond { status, headers, body } => {
            let body = match std::str::from_utf8(&body) {
                Ok(text) if text.contains(KEY_PLACEHOLDER) => Bytes::from(text.replace(KEY_PLACEHOLDER, &key)),
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
            Ok(json_head(Response::new(StreamBody::new(frames).boxed_unsync())))
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
            let model = recorded.model();
            let events = dialect.default_stream(model.as_deref().unwrap_or("unknown"));
            Ok(stream_response(state, events, before, Pause::Gate(gate, then), flying))
        }
        Script::Events { events, gate: None } => Ok(stream_response(state, events, usize::MAX, Pause::Never, flying)),
        Script::Events { events, gate: Some((before, gate)) } => {
            Ok(stream_response(state, events, before, Pause::Gate(gate, Then::Finish), flying))
        }
        Script::BreakAfter(k) => match canned {
            Canned::Events(events) => Ok(stream_response(state, events, k, Pause::BreakNow, flying)),
            Canned::Json { body, .. } => {
                let half = Bytes::copy_from_slice(&body.as_bytes()[..body.len() / 2]);
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(half))).await;
                    tokio::time::sleep(FLUSH_PAUSE).await;
                    drop(flying);
                    let _ = tx.send(Err("scripted: body broken".into())).await;
                });
                Ok(json_head(Response::new(channel_body(rx))))
            }
        },
    }
}

/// `Content-Type: application/json` on `res`.
fn json_head(mut res: Response<MockBody>) -> Response<MockBody> {
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn json_response(status: u16, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut res = json_head(Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync()));
    *res.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    res
}

/// Where a stream stops on its way.
enum Pause {
    Never,
    /// Wait for the gate, then finish or break.
    Gate(Gate, Then),
    /// Break at once (after a flush pause).
    BreakNow,
}

/// `200 text/event-stream`, `events` one frame each; at event `before`
/// the stream pauses as `pause` says. The request counts in flight until
/// its last event (or its break) is handed over.
fn stream_response(
    state: Arc<State>,
    events: Vec<String>,
    before: usize,
    pause: Pause,
    flying: Flying,
) -> Response<MockBody> {
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
    // As every provider sends it with a stream.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
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
