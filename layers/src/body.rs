//! Response body wrappers. Each forwards frames as they arrive; only
//! [`CoalescedBody`] holds one back, for one scheduler turn, to send it with
//! the frames right behind it.
//!
//! - [`GuardedBody`]: holds a guard (a concurrency permit, or a key's
//!   in-flight count: [`LeasedBody`]) until the body is done;
//! - [`IdleTimeoutBody`]: fails a stream that stays silent too long;
//! - [`SseErrorTail`]: ends a stream that broke with one SSE error event;
//! - [`CoalescedBody`]: merges data frames that arrive together.
//!
//! A stream that breaks after its first event, as the upstream service
//! hands it to the client:
//!
//! ```
//! use bytes::Bytes;
//! use futures_util::stream;
//! use http_body::Frame;
//! use http_body_util::{BodyExt, StreamBody};
//! use keyrelay_layers::{body::{LeasedBody, SseErrorTail}, pool::{KeyPool, Secret}, provider::Provider, BoxError};
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let pool = KeyPool::builder().provider(openai, Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
//! let provider = pool.provider("openai").unwrap();
//! let (_lease, in_flight) = provider.lease().unwrap();
//!
//! let upstream = StreamBody::new(stream::iter([
//!     Ok(Frame::data(Bytes::from("data: {\"choices\":[]}\n\n"))),
//!     Err(BoxError::from("connection reset")),
//! ]));
//! let body = SseErrorTail::new(LeasedBody::new(upstream, Some(in_flight)));
//! assert_eq!(provider.keys()[0].in_flight(), 1, "the body holds its key");
//!
//! let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
//! let last = text.trim_end().rsplit("\n\n").next().unwrap();
//! let event: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
//! assert_eq!(event["error"]["code"], "stream_broken");
//! assert_eq!(provider.keys()[0].in_flight(), 0, "released when the stream ended");
//! # });
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;

use crate::{BoxError, ProxyBody, extensions::Inbound, pool::InFlight};

mod coalesce;
pub use coalesce::{CoalescedBody, MAX_BATCH_BYTES};

/// A complete body as a [`ProxyBody`].
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A response body that keeps its key counted in flight until the body
/// ends, fails, or is dropped (the client went away): a stream holds its key
/// for as long as it runs, not just until its headers.
pub type LeasedBody<B> = GuardedBody<B, InFlight>;

pin_project! {
    /// A response body that holds a guard (a concurrency permit) until the
    /// body ends, fails, or is dropped.
    #[derive(Debug)]
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> GuardedBody<B, G> {
    /// `guard` (if any) is dropped when `inner` ends, fails, or is dropped.
    pub fn new(inner: B, guard: Option<G>) -> Self {
        Self { inner, guard }
    }
}

impl<B, G> Body for GuardedBody<B, G>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if !matches!(&frame, Some(Ok(_))) || this.inner.is_end_stream() {
            drop(this.guard.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A stream that fails after `idle` without a frame: a stalled upstream
    /// must not hold a key and a client forever.
    #[derive(Debug)]
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        idle: std::time::Duration,
        // Re-armed lazily from `last_frame` when it fires, not on every
        // frame: a timer-wheel update per SSE event costs more than the event.
        sleep: Pin<Box<tokio::time::Sleep>>,
        last_frame: tokio::time::Instant,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// Fails with [`StreamIdle`] when `inner` sends no frame for `idle`.
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Self { inner, idle, sleep: Box::pin(tokio::time::sleep(idle)), last_frame: tokio::time::Instant::now() }
    }
}

/// A stream stayed silent longer than its idle timeout.
#[derive(Debug)]
pub struct StreamIdle(std::time::Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upstream stream sent nothing for {} s (proxy.stream_idle_timeout_secs)", self.0.as_secs())
    }
}

impl std::error::Error for StreamIdle {}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.last_frame = tokio::time::Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let due = *this.last_frame + *this.idle;
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(Some(Err(StreamIdle(*this.idle).into())));
            }
            this.sleep.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A server-sent event stream whose upstream may break after the `200`
    /// went out: instead of cutting the connection, it ends the stream with
    /// one `data: {"error": ...}` event, so that SDKs raise a clear error.
    #[derive(Debug)]
    pub struct SseErrorTail<B> {
        #[pin]
        inner: B,
        failed: bool,
        // Whether the bytes sent so far end on an event boundary.
        at_boundary: bool,
        // Stream chunks of the provider, when counted: the handle is looked
        // up once, so each frame costs one atomic add.
        chunks: Option<metrics::Counter>,
        // Whose error event ends a broken stream.
        inbound: Inbound,
    }
}

impl<B> SseErrorTail<B> {
    /// Wraps an SSE body; an error of `inner` becomes the final event.
    pub fn new(inner: B) -> Self {
        Self { inner, failed: false, at_boundary: true, chunks: None, inbound: Inbound::OpenAi }
    }

    /// Ends a broken stream with `inbound`'s error event instead of
    /// OpenAI's (see [`crate::error::shape::stream_error_event`]).
    pub fn in_dialect(mut self, inbound: Inbound) -> Self {
        self.inbound = inbound;
        self
    }

    /// Counts each frame in [`crate::metrics::STREAM_CHUNKS`] for `provider`.
    pub fn counting_chunks_of(mut self, provider: String) -> Self {
        self.chunks = Some(metrics::counter!(crate::metrics::STREAM_CHUNKS, "provider" => provider));
        self
    }
}

/// The last event of a stream that broke: OpenAI's error shape.
pub fn sse_error_event(message: &str, code: &str) -> Bytes {
    crate::error::shape::stream_error_event(Inbound::OpenAi, message, code)
}

impl<B> Body for SseErrorTail<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                    *this.at_boundary = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                    if let Some(chunks) = this.chunks.as_ref() {
                        chunks.increment(1);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                *this.failed = true;
                let err: BoxError = err.into();
                tracing::warn!(error = %err, "upstream stream broke after its headers");
                let message = format!("upstream stream broke: {err}");
                let event = crate::error::shape::stream_error_event(*this.inbound, &message, "stream_broken");
                let event = if *this.at_boundary { event } else { [&b"\n\n"[..], &event].concat().into() };
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The error event may add bytes the inner hint does not know of.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use http_body_util::StreamBody;

    use super::*;
    use crate::{
        pool::{KeyPool, Secret},
        provider::Provider,
    };

    fn frames(items: Vec<Result<&'static str, &'static str>>) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(stream::iter(
            items.into_iter().map(|item| item.map(|s| Frame::data(Bytes::from(s))).map_err(BoxError::from)),
        ))
    }

    #[tokio::test]
    async fn a_broken_stream_ends_with_one_error_event() {
        let body = SseErrorTail::new(frames(vec![Ok("data: {\"a\":1}\n\n"), Err("connection reset")]));
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        let events: Vec<_> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2, "{text}");
        let error: serde_json::Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(error["error"]["code"], "stream_broken");
        assert!(error["error"]["message"].as_str().unwrap().contains("connection reset"));
    }

    #[tokio::test]
    async fn a_partial_event_is_closed_before_the_error_event() {
        let body = SseErrorTail::new(frames(vec![Ok("data: {\"a\""), Err("reset")]));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(bytes.windows(8).any(|w| w == b"\n\ndata: "), "{bytes:?}");
    }

    #[tokio::test]
    async fn leased_body_releases_its_key_at_the_end_on_error_and_on_drop() {
        let provider = Provider::openai_compatible("p", "http://127.0.0.1:9/v1").unwrap();
        let pool = KeyPool::builder().provider(provider, Default::default(), vec![Secret::new("k")]).build().unwrap();
        let provider = pool.provider("p").unwrap();
        let in_flight = || provider.keys()[0].in_flight();

        let (_, guard) = provider.lease().unwrap();
        let mut body = LeasedBody::new(frames(vec![Ok("one"), Ok("two")]), Some(guard));
        assert_eq!(in_flight(), 1);
        body.frame().await.unwrap().unwrap();
        assert_eq!(in_flight(), 1, "still streaming");
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.is_none());
        assert_eq!(in_flight(), 0, "released at the end");

        let (_, guard) = provider.lease().unwrap();
        let mut body = LeasedBody::new(frames(vec![Err("boom")]), Some(guard));
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(in_flight(), 0, "released on error");

        let (_, guard) = provider.lease().unwrap();
        let body = LeasedBody::new(frames(vec![Ok("never read")]), Some(guard));
        drop(body);
        assert_eq!(in_flight(), 0, "released when the client goes away");

        let (_, guard) = provider.lease().unwrap();
        let mut body = LeasedBody::new(Full::new(Bytes::from_static(b"whole")), Some(guard));
        body.frame().await.unwrap().unwrap();
        assert_eq!(in_flight(), 0, "released on the last frame, before any further poll");
    }
}
