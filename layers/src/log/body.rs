//! The bodies RequestLog wraps: the request's, copied as the inner stack
//! reads it, and the response's, which reports how the request ended.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Finish, entry::Capture};

pin_project! {
    /// The request body the inner service reads: as it came, copied (bounded)
    /// for the request log when there is a sink.
    pub struct TeeBody<B> {
        #[pin]
        pub(super) inner: B,
        pub(super) capture: Option<Capture>,
    }
}

impl<B> TeeBody<B> {
    /// A body that copies nothing (for building requests outside RequestLog).
    pub fn new(inner: B) -> Self {
        Self { inner, capture: None }
    }
}

impl<B> fmt::Debug for TeeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TeeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push(data);
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
    /// A response body that reports, once, how and when it ended.
    pub struct LoggedBody<B> {
        #[pin]
        pub(super) inner: B,
        pub(super) finish: Option<Finish>,
        pub(super) capture: Option<Capture>,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().finish.take() {
                finish.report("cancelled");
            }
        }
    }
}

impl<B> fmt::Debug for LoggedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedBody").finish_non_exhaustive()
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body,
    B::Error: fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = {
            let _entered = this.finish.as_ref().map(|finish| finish.span.enter());
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            capture.push(data);
        }
        match &frame {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Ok(_)) | None => {
                if let Some(finish) = this.finish.take() {
                    finish.report("completed");
                }
            }
            Some(Err(err)) => {
                if let Some(finish) = this.finish.take() {
                    let id = finish.line.id.as_str();
                    tracing::warn!(parent: &finish.span, request_id = id, error = %err, "response body failed");
                    finish.report("errored");
                }
            }
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
