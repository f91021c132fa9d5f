//! Frames that arrive together leave together (DESIGN's performance
//! budget): a stream whose events reach the proxy in one TCP write goes to
//! the client in one HTTP chunk, not one per event. Both ends are raw TCP so
//! that the test sees the chunks as they are on the wire.

mod support;

use support::{KEY_ONE, PROXY_KEY, Proxy, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const EVENTS: usize = 22;

fn event(n: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{n} \"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn usage_event() -> String {
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":22,\"total_tokens\":25}}\n\n".to_owned()
}

/// An upstream that answers one request with a chunked stream, one chunk
/// per event as providers send them, all in a single write.
async fn one_write_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_request(&mut socket).await;
        let mut answer =
            String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        let events = (0..EVENTS).map(event).chain([usage_event(), "data: [DONE]\n\n".to_owned()]);
        for event in events {
            answer.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
        }
        answer.push_str("0\r\n\r\n");
        socket.write_all(answer.as_bytes()).await.unwrap();
        // Hold the connection open: the proxy's pool may keep it.
        let _ = socket.read(&mut [0u8; 1]).await;
    });
    (addr, task)
}

/// Reads a request head and its `content-length` body.
async fn read_request(socket: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed before its request was whole");
        seen.extend_from_slice(&buf[..n]);
        let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
        let length: usize =
            head.lines().find_map(|line| line.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
        if seen.len() >= head_end + 4 + length {
            return;
        }
    }
}

/// The chunks of a chunked HTTP/1.1 response, read to its last chunk.
async fn response_chunks(socket: &mut TcpStream) -> (String, Vec<String>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while !raw.ends_with(b"0\r\n\r\n") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed before the stream ended: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, mut body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let mut chunks = Vec::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        chunks.push(rest[..size].to_owned());
        body = &rest[size + 2..];
    }
    (head.to_owned(), chunks)
}

#[tokio::test]
async fn events_that_arrive_in_one_write_leave_in_one_chunk() {
    let (upstream, answered) = one_write_upstream().await;
    let env = vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("OPENAI_API_BASE".to_owned(), format!("http://{upstream}/v1")),
        ("OPENAI_API_KEY_1".to_owned(), KEY_ONE.to_owned()),
    ];
    let proxy = Proxy::start(env).await;

    let body = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: keyrelay\r\nauthorization: Bearer {PROXY_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    let (head, chunks) = within("the whole stream", response_chunks(&mut client)).await;

    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let expected: String = (0..EVENTS).map(event).chain(["data: [DONE]\n\n".to_owned()]).collect();
    // The usage chunk the proxy asked for on the client's behalf is gone.
    assert_eq!(chunks.concat(), expected);
    assert!(
        chunks.len() <= 2,
        "{} events that arrived in one write left in {} chunks: {chunks:#?}",
        EVENTS + 1,
        chunks.len()
    );
    answered.abort();
}
