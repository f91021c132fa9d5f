//! The server around the stack: graceful shutdown (in-flight streams
//! finish, new connections are refused, idle keep-alive connections do not
//! hold it up, a stream that outlives the grace period is given up on) and
//! connection limits (slow or silent clients are cut off, oversized heads
//! get 431).

mod support;

use std::time::Duration;

use http::HeaderValue;
use keyrelay::server::Shutdown;
use support::{
    Auth, Gate, MockUpstream, PROXY_KEY, Proxy, Script, SseReader, TestClient, chat_body, openai_env, post,
    stream_events, within,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn open_stream(client: &TestClient, proxy: &Proxy) -> SseReader {
    let res = client
        .send(post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", true)))
        .await;
    assert_eq!(res.status(), 200);
    SseReader::new(res.into_body())
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish_and_reports_drained() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.push(Script::gated_stream(&gate));
    let mut proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let mut sse = open_stream(&client, &proxy).await;
    let first = sse.next_event().await.expect("a first event");
    proxy.begin_shutdown();

    // The listener goes away: new connections are refused.
    let addr = proxy.addr();
    within("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(proxy.is_serving(), "serve() waits for the open stream");

    gate.open();
    let mut events = vec![first];
    events.extend(sse.rest().await);
    let events: Vec<String> = events.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(events, stream_events("gpt-4o-mini"), "the stream completes whole");
    assert_eq!(proxy.finished().await, Shutdown::Drained);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    let mock = MockUpstream::start().await;
    // The default grace (30 s) is far beyond the harness's wait: only a
    // prompt drain passes.
    let mut proxy = Proxy::start(openai_env(&mock, 1)).await;
    let (http1, h2c) = (TestClient::http1(), TestClient::h2c());

    for client in [&http1, &h2c] {
        let reply = client
            .fetch(post(
                &proxy.url("/v1/chat/completions"),
                Auth::Bearer(PROXY_KEY),
                chat_body("openai/gpt-4o-mini", false),
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // Both clients keep their connection open and idle in their pools.
    proxy.begin_shutdown();
    assert_eq!(proxy.finished().await, Shutdown::Drained);
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stream_that_outlives_the_grace_period() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.push(Script::gated_stream(&gate));
    let mut proxy = Proxy::start_with(openai_env(&mock, 1), |s| {
        s.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let client = TestClient::http1();

    let mut sse = open_stream(&client, &proxy).await;
    sse.next_event().await.expect("a first event");
    proxy.begin_shutdown();
    assert_eq!(proxy.finished().await, Shutdown::GraceExpired);
    gate.open();
}

/// A proxy that gives clients 200 ms to send their request head.
async fn impatient_proxy() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| {
        s.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    (mock, proxy)
}

/// Reads until the server closes the connection (EOF or reset), bounded.
async fn until_closed(tcp: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let _ = within(what, tcp.read_to_end(&mut seen)).await;
    seen
}

#[tokio::test]
async fn client_stalling_inside_its_request_head_is_cut_off() {
    let (mock, proxy) = impatient_proxy().await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keyrelay\r\n").await.unwrap();
    until_closed(&mut tcp, "the server to cut off a stalled request head").await;
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn connection_that_never_sends_a_byte_is_cut_off() {
    let (_mock, proxy) = impatient_proxy().await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    until_closed(&mut tcp, "the server to cut off a silent connection").await;
}

#[tokio::test]
async fn connection_stalling_inside_the_http2_preface_is_cut_off() {
    let (_mock, proxy) = impatient_proxy().await;
    // Each prefix still matches HTTP/2's preface, so the version is not
    // known yet when the client goes quiet.
    for prefix in [&b"P"[..], b"PRI * HTTP/2.0\r\n"] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(prefix).await.unwrap();
        until_closed(&mut tcp, "the server to cut off a stalled preface").await;
    }
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let mut req =
        post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false));
    let big = HeaderValue::from_str(&"a".repeat(70 * 1024)).unwrap();
    req.headers_mut().insert("x-padding", big);
    let reply = client.fetch(req).await;
    assert_eq!(reply.status, 431);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_connection_that_has_sent_nothing() {
    let mock = MockUpstream::start().await;
    // A head timeout far beyond the harness's wait: only a shutdown that
    // ignores the silent connection passes.
    let mut proxy = Proxy::start_with(openai_env(&mock, 1), |s| {
        s.header_read_timeout = Duration::from_secs(60);
    })
    .await;

    // Like a browser's or an SDK's pre-opened connection.
    let _silent = TcpStream::connect(proxy.addr()).await.unwrap();
    // Connections are accepted in order: once a later one is served, the
    // silent one has been accepted too.
    let reply = TestClient::http1()
        .fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    proxy.begin_shutdown();
    assert_eq!(proxy.finished().await, Shutdown::Drained);
}
