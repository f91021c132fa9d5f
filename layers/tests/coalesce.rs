//! `body::CoalescedBody`: frames ready together leave as one, nothing waits
//! longer than one scheduler turn, and trailers, errors and the end keep
//! their place after the data before them.

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use futures_util::stream;
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use keyrelay_layers::body::{CoalescedBody, MAX_BATCH_BYTES};
use tokio::sync::mpsc;

type Item = Result<Frame<Bytes>, std::io::Error>;

fn data(text: &str) -> Item {
    Ok(Frame::data(Bytes::copy_from_slice(text.as_bytes())))
}

/// A body fed from a channel: the test decides what is ready when.
fn channel_body() -> (mpsc::UnboundedSender<Item>, impl Body<Data = Bytes, Error = std::io::Error>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let body = StreamBody::new(stream::poll_fn(move |cx| rx.poll_recv(cx)));
    (tx, body)
}

#[tokio::test]
async fn a_lone_frame_leaves_after_one_turn_without_waiting_for_more() {
    let (tx, body) = channel_body();
    let mut body = pin!(CoalescedBody::new(body));
    tx.send(data("data: one\n\n")).unwrap();
    // The sender stays open and sends nothing more: the frame still leaves.
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: one\n\n");
    tx.send(data("data: two\n\n")).unwrap();
    drop(tx);
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "data: two\n\n");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn frames_that_arrive_during_the_turn_join_the_batch() {
    let (tx, body) = channel_body();
    let mut body = pin!(CoalescedBody::new(body));
    tx.send(data("a")).unwrap();
    // The producer makes progress during the turn the body gives up (here
    // in the same task; in the proxy, the connection task).
    let producer = async {
        tx.send(data("b")).unwrap();
        tx.send(data("c")).unwrap();
    };
    let (frame, ()) = tokio::join!(body.frame(), producer);
    let frame = frame.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "abc");
}

#[tokio::test]
async fn a_second_poll_in_the_same_turn_does_not_end_the_wait() {
    let (tx, body) = channel_body();
    let mut body = pin!(CoalescedBody::new(body));
    tx.send(data("a")).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(body.as_mut().poll_frame(&mut cx).is_pending(), "the frame waits one turn");
    // hyper polls a body twice in one turn of its connection task.
    assert!(body.as_mut().poll_frame(&mut cx).is_pending(), "the turn is not over yet");
    tokio::task::yield_now().await;
    tx.send(data("b")).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "ab");
}

#[tokio::test]
async fn trailers_errors_and_the_end_follow_the_data_before_them() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-done", "1".parse().unwrap());
    let frames = vec![data("a"), data("b"), Ok(Frame::trailers(trailers.clone()))];
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(frames))));
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
    assert_eq!(body.frame().await.unwrap().unwrap().into_trailers().unwrap(), trailers);
    assert!(body.frame().await.is_none());

    let broken = vec![data("a"), data("b"), Err(std::io::Error::other("reset")), data("never")];
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(broken))));
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
    assert_eq!(body.frame().await.unwrap().unwrap_err().to_string(), "reset");

    let ended = vec![data("a"), data("b")];
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(ended))));
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
    assert!(body.is_end_stream(), "the end shows once the last batch has left");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn a_batch_stops_at_the_size_limit_and_loses_nothing() {
    let chunk = "x".repeat(10_000);
    let frames: Vec<Item> = (0..20).map(|_| data(&chunk)).collect();
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(frames))));
    let mut sizes = Vec::new();
    while let Some(frame) = body.frame().await {
        sizes.push(frame.unwrap().into_data().unwrap().len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 200_000);
    assert!(sizes.iter().all(|&size| size <= MAX_BATCH_BYTES + chunk.len()), "{sizes:?}");
    assert!(sizes.len() >= 200_000 / (MAX_BATCH_BYTES + chunk.len()), "{sizes:?}");
}

#[tokio::test]
async fn a_single_frame_is_passed_on_without_a_copy() {
    let original = Bytes::from_static(b"data: {\"n\":1}\n\n");
    let frames = vec![Ok::<_, std::io::Error>(Frame::data(original.clone()))];
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(frames))));
    let out = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(out.as_ptr(), original.as_ptr());
    assert!(matches!(body.as_mut().poll_frame(&mut Context::from_waker(Waker::noop())), Poll::Ready(None)));
}

#[tokio::test]
async fn the_end_shows_as_soon_as_the_last_batch_has_left() {
    // A server stops polling a body that reports its end (hyper does with a
    // known length), so a logging layer above must see it right away.
    let frames = vec![data("a"), data("b")];
    let mut body = pin!(CoalescedBody::new(StreamBody::new(stream::iter(frames))));
    assert!(!body.is_end_stream());
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn a_prefetch_completes_a_batch_in_hand_and_never_waits_for_the_first_frame() {
    let (tx, body) = channel_body();
    let mut body = pin!(CoalescedBody::new(body));
    // Nothing has arrived: the prefetch returns at once.
    assert!(body.as_mut().poll_prefetch(&mut Context::from_waker(Waker::noop())).is_ready());
    tx.send(data("a")).unwrap();
    tx.send(data("b")).unwrap();
    std::future::poll_fn(|cx| body.as_mut().poll_prefetch(cx)).await;
    assert_eq!(body.size_hint().lower(), 2, "the prefetched batch counts in the size");
    drop(tx);
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
    assert!(body.frame().await.is_none());
}
