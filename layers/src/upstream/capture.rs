//! The provider's own answer bytes, for a request log that asked for them.
//!
//! The copy is made here, bounded, and redacted before it is stored in the
//! request's [`RequestRecord`]: providers echo keys in their errors, and
//! only this body knows which key the attempt sent. It is stored when the
//! answer ends, fails, or is dropped, so a secret split across frames is
//! redacted whole.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{BoxError, log::CAPTURE_LIMIT, pool::Secret, record::RequestRecord};

/// What a capturing body keeps until its answer ends.
#[derive(Debug)]
pub(crate) struct Capture {
    record: RequestRecord,
    secret: Secret,
    bytes: BytesMut,
    truncated: bool,
}

impl Capture {
    /// A capture for `record` when it asks for one; `secret` is the key the
    /// attempt sent.
    pub(crate) fn for_record(record: Option<&RequestRecord>, secret: &Secret) -> Option<Self> {
        let record = record.filter(|r| r.captures_upstream())?;
        Some(Self { record: record.clone(), secret: secret.clone(), bytes: BytesMut::new(), truncated: false })
    }

    fn push(&mut self, data: &[u8]) {
        let room = CAPTURE_LIMIT.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }

    /// Stores the redacted copy; a later attempt's replaces it.
    fn store(self) {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = crate::error::redact(&crate::error::redact(&text, ""), self.secret.expose());
        self.record.set_upstream(Bytes::from(text), self.truncated);
    }
}

pin_project! {
    /// The provider's answer as it arrives, copied (bounded) when a request
    /// log asked for it.
    pub(crate) struct CapturedBody<B> {
        #[pin]
        inner: B,
        capture: Option<Capture>,
    }

    impl<B> PinnedDrop for CapturedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(capture) = this.project().capture.take() {
                capture.store();
            }
        }
    }
}

impl<B> CapturedBody<B> {
    pub(crate) fn new(inner: B, capture: Option<Capture>) -> Self {
        Self { inner, capture }
    }
}

impl<B> Body for CapturedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(capture) = this.capture.as_mut() {
            if let Some(Ok(frame)) = &frame
                && let Some(data) = frame.data_ref()
            {
                capture.push(data);
            }
            let ended = !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream();
            if ended && let Some(capture) = this.capture.take() {
                capture.store();
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
