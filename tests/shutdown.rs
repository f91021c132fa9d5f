//! Graceful shutdown: in-flight streams finish, new connections are refused,
//! idle keep-alive connections do not hold the server up, and a stream that
//! outlives the grace period is given up on.

mod support;

use std::time::Duration;

use keyrelay::server::Shutdown;
use support::{
    Auth, Gate, MockUpstream, PROXY_KEY, Proxy, Script, SseReader, TestClient, chat_body,
    openai_env, post, stream_events, within,
};
use tokio::net::TcpStream;

async fn open_stream(client: &TestClient, proxy: &Proxy) -> SseReader {
    let res = client
        .send(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", true),
        ))
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
    assert_eq!(
        events,
        stream_events("gpt-4o-mini"),
        "the stream completes whole"
    );
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
