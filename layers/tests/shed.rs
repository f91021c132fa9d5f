//! `LoadShedLayer` alone: the cap, the 503 it answers with, and a streamed
//! body keeping its place until it ends.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use keyrelay_layers::{BoxError, respond::ErrorResponseLayer, shed::LoadShedLayer};
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;
use tower::{Layer, Service, ServiceExt, service_fn};

mod tokio_stream_shim {
    //! A receiver as a stream, without pulling in tokio-stream.
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

type TestBody = UnsyncBoxBody<Bytes, Infallible>;
/// Where each answer's frames are sent from.
type FrameSenders = mpsc::UnboundedReceiver<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>;

/// An inner service whose every answer streams from a channel the test holds.
fn streaming() -> (impl Service<Request<()>, Response = Response<TestBody>, Error = BoxError> + Clone, FrameSenders) {
    let (senders_tx, senders_rx) = mpsc::unbounded_channel();
    let svc = service_fn(move |_: Request<()>| {
        let (tx, rx) = mpsc::channel(4);
        let _ = senders_tx.send(tx);
        async move { Ok::<_, BoxError>(Response::new(StreamBody::new(ReceiverStream(rx)).boxed_unsync())) }
    });
    (svc, senders_rx)
}

#[tokio::test]
async fn past_the_cap_a_request_gets_503_with_retry_after_and_a_finished_stream_frees_its_place() {
    let layer = LoadShedLayer::new(2);
    let (inner, mut senders) = streaming();
    let mut svc = ErrorResponseLayer::new().layer(layer.layer(inner));

    let first = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    let second = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    assert_eq!(layer.in_flight(), 2, "headers sent, bodies still streaming");

    let refused = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "overloaded", "{json}");
    assert_eq!(layer.in_flight(), 2, "a refused request takes no place");

    // The first stream sends its last event and ends: its place is free.
    let first_tx = senders.recv().await.unwrap();
    let _second_tx = senders.recv().await.unwrap();
    first_tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await.unwrap();
    drop(first_tx);
    let got = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"data: [DONE]\n\n");
    assert_eq!(layer.in_flight(), 1);
    let third = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    assert_eq!(third.status(), 200);

    // A client that leaves mid-stream frees its place too.
    drop(second);
    drop(third);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn many_tasks_at_once_never_exceed_the_cap() {
    let layer = LoadShedLayer::new(8);
    let (inner, mut senders) = streaming();
    let svc = layer.layer(inner);
    let calls = (0..64).map(|_| svc.clone().oneshot(Request::new(())));
    let results = futures_util::future::join_all(calls).await;
    let admitted: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(admitted.len(), 8);
    assert_eq!(layer.in_flight(), 8);
    senders.close();
    drop(admitted);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn an_inner_error_frees_the_place() {
    let layer = LoadShedLayer::new(1);
    let failing = service_fn(|_: Request<()>| async { Err::<Response<TestBody>, BoxError>("boom".into()) });
    let mut svc = layer.layer(failing);
    for _ in 0..3 {
        assert!(svc.ready().await.unwrap().call(Request::new(())).await.is_err());
        assert_eq!(layer.in_flight(), 0);
    }
}

#[tokio::test]
async fn a_cap_of_zero_is_no_cap_and_counts_nothing() {
    let layer = LoadShedLayer::new(0);
    assert_eq!(layer.max(), None);
    let (inner, mut senders) = streaming();
    let svc = layer.layer(inner);
    let calls = (0..64).map(|_| svc.clone().oneshot(Request::new(())));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "every request is admitted");
    assert_eq!(layer.in_flight(), 0, "nothing is counted without a cap");
    senders.close();
    drop(results);
    assert_eq!(LoadShedLayer::new(3).max(), Some(3));
}
