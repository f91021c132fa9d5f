//! The response body wrappers, frame by frame: `LeasedBody` (the in-flight
//! guard) and `SseErrorTail` (a broken stream's last event).

mod support;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;
use http_body_util::{BodyExt, Full};
use keyrelay_layers::{
    body::{LeasedBody, SseErrorTail, sse_error_event},
    pool::Selection,
};
use serde_json::{Value, json};
use tokio_test::{assert_pending, task};

use support::{MockBody, in_flight, pool, within};

#[tokio::test]
async fn leased_body_forwards_frames_size_hint_and_end_of_stream() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (_, guard) = pool.provider("openai").unwrap().lease().unwrap();
    let mut body = LeasedBody::new(Full::new(Bytes::from_static(b"hello")), Some(guard));
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    assert_eq!(in_flight(&pool, "openai"), [1]);

    let frame = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    assert!(body.is_end_stream());
    assert_eq!(in_flight(&pool, "openai"), [0], "released with the last frame");
    assert!(within(body.frame()).await.is_none());
    assert_eq!(in_flight(&pool, "openai"), [0]);
}

#[tokio::test]
async fn leased_body_holds_the_key_across_pending_polls_and_trailers() {
    let pool = pool(Selection::LeastUsed, &["k1"]);
    let (_, guard) = pool.provider("openai").unwrap().lease().unwrap();
    let (tx, inner) = MockBody::channel();
    let mut body = LeasedBody::new(inner, Some(guard));

    let mut next = task::spawn(body.frame());
    assert_pending!(next.poll());
    assert_eq!(in_flight(&pool, "openai"), [1], "pending is not the end");
    tx.data("a");
    assert!(next.is_woken());
    within(next).await.unwrap().unwrap();

    let mut trailers = HeaderMap::new();
    trailers.insert("x-usage", "12".parse().unwrap());
    tx.trailers(trailers);
    let frame = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap()["x-usage"], "12");
    assert_eq!(in_flight(&pool, "openai"), [1], "the channel has not ended yet");
    tx.end();
    assert!(within(body.frame()).await.is_none());
    assert_eq!(in_flight(&pool, "openai"), [0]);
}

async fn collect_text<B>(body: B) -> String
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = within(body.collect()).await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn sse_error_tail_passes_a_clean_stream_through_unchanged() {
    let inner = MockBody::script(vec![Ok("data: {\"n\":1}\n\n"), Ok("data: {\"n\":"), Ok("2}\n\ndata: [DONE]\n\n")]);
    assert_eq!(collect_text(SseErrorTail::new(inner)).await, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n");
}

#[tokio::test]
async fn sse_error_tail_ends_a_broken_stream_with_one_event_and_nothing_after() {
    let (tx, inner) = MockBody::channel();
    let mut body = SseErrorTail::new(inner);
    tx.data("data: {\"n\":1}\n\n");
    tx.error("connection reset");
    tx.data("data: {\"n\":2}\n\n");

    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: {\"n\":1}\n\n");
    assert!(!body.is_end_stream());

    let tail = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert!(body.is_end_stream(), "the error event is the last frame");
    let text = std::str::from_utf8(&tail).unwrap();
    let json: Value =
        serde_json::from_str(text.strip_prefix("data: ").and_then(|t| t.strip_suffix("\n\n")).unwrap()).unwrap();
    assert_eq!(
        json["error"],
        json!({
            "message": "upstream stream broke: connection reset",
            "type": "upstream_error",
            "param": null,
            "code": "stream_broken",
        })
    );
    assert!(within(body.frame()).await.is_none(), "what the upstream sent after breaking is not forwarded");
}

#[tokio::test]
async fn sse_error_tail_closes_a_partial_event_before_its_error_event() {
    for (sent, expected_prefix) in [
        ("data: {\"n\":", "data: {\"n\":\n\ndata: {\"error\""),
        ("data: {\"n\":1}\n", "data: {\"n\":1}\n\n\ndata: {\"error\""),
        ("data: {\"n\":1}\r\n\r\n", "data: {\"n\":1}\r\n\r\ndata: {\"error\""),
    ] {
        let inner = MockBody::script(vec![Ok(sent), Err("reset")]);
        let text = collect_text(SseErrorTail::new(inner)).await;
        assert!(text.starts_with(expected_prefix), "{sent:?} -> {text:?}");
        assert_eq!(text.matches("data: {\"error\"").count(), 1);
    }
}

#[tokio::test]
async fn sse_error_tail_reports_a_break_before_any_byte() {
    let inner = MockBody::script(vec![Err("refused mid-handshake")]);
    let text = collect_text(SseErrorTail::new(inner)).await;
    assert!(text.starts_with("data: {\"error\""), "{text:?}");
    assert!(text.ends_with("\n\n"));
}

#[test]
fn sse_error_event_is_one_openai_shaped_event() {
    let event = sse_error_event("upstream said \"no\"\nand left", "stream_broken");
    let text = std::str::from_utf8(&event).unwrap();
    assert_eq!(text.matches("\n\n").count(), 1, "a message with a newline stays one event");
    let json: Value = serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(json["error"]["message"], "upstream said \"no\"\nand left");
}
