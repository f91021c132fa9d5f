//! The mock upstream: an OpenAI-compatible chat endpoint with no logic, so
//! every microsecond the bench sees is the client's, the hop's or the
//! proxy's. A body with `"stream":true` gets a 22-event SSE stream (one frame
//! per event, as providers send them); anything else a small completion.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;

/// Events in one streamed answer: a role chunk, 19 content chunks, a finish
/// chunk and a usage chunk, then `[DONE]`.
pub const STREAM_EVENTS: usize = 22;

fn stream_events() -> Vec<Bytes> {
    let chunk = |delta: &str, finish: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        ))
    };
    let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    for word in 0..(STREAM_EVENTS - 3) {
        events.push(chunk(&format!(r#"{{"content":"word{word} "}}"#), "null"));
    }
    events.push(chunk("{}", r#""stop""#));
    events.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":20,\"total_tokens\":29}}\n\n",
    ));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, events: &[Bytes]) -> Result<Response<MockBody>, Infallible> {
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let streams = body.windows(13).any(|w| w == b"\"stream\":true");
    let res = if streams {
        let frames = events.iter().cloned().map(|e| Ok::<_, Infallible>(Frame::data(e)));
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())).boxed_unsync())
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed_unsync())
    };
    Ok(res.expect("static response parts are valid"))
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) {
    let events: &'static [Bytes] = Vec::leak(stream_events());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, events));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the mock upstream");
    let addr = listener.local_addr().expect("bound address");
    (listener, addr)
}
