//! The usage meter: where a successful answer's tokens, and a break after
//! its headers, are counted — once, for the key's pool counters, the
//! request's [`RequestRecord`] and the metrics.
//!
//! Every successful answer passes one of two bodies that report here:
//! [`TranslatedStream`](super::stream::TranslatedStream), which frames a
//! stream once and asks its translator for the usage, or [`MeteredBody`],
//! which reads the usage from the tail of a body that passes through as it
//! came (a whole answer, or a stream the proxy need not touch).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{
    BoxError,
    classify::{Failure, FailureClass},
    pool::KeyLease,
    record::RequestRecord,
    usage::{Usage, UsageTap},
};

/// Counts one answer for its key, model and request.
#[derive(Debug)]
pub(crate) struct UsageMeter {
    lease: KeyLease,
    model: Arc<str>,
    record: Option<RequestRecord>,
}

impl UsageMeter {
    pub(crate) fn new(lease: KeyLease, model: Arc<str>, record: Option<RequestRecord>) -> Self {
        Self { lease, model, record }
    }

    /// The answer is complete; `usage` is what it reported, if anything.
    pub(crate) fn finished(self, usage: Option<Usage>) {
        if let Some(usage) = usage {
            self.lease.count_usage(&self.model, usage);
            if let Some(record) = &self.record {
                record.set_usage(usage);
            }
        }
    }

    /// The answer broke after its headers went out: a transient failure of
    /// its key, and a broken answer for the request log.
    pub(crate) fn broke(self) {
        let labels = [
            ("provider", self.lease.provider_id().as_str().to_owned()),
            ("key", self.lease.key_id().as_str().to_owned()),
        ];
        metrics::counter!(crate::metrics::STREAM_BREAKS, &labels).increment(1);
        let _cooling_until = self.lease.record(&self.model, Err(Failure::new(FailureClass::Transient)));
        if let Some(record) = &self.record {
            record.mark_broken();
        }
    }
}

pin_project! {
    /// A body that passes as it came, its usage read from its tail at the
    /// end.
    pub(crate) struct MeteredBody<B> {
        #[pin]
        inner: B,
        tap: UsageTap,
        meter: Option<UsageMeter>,
        // The usage, when the whole body was already read for it.
        known: Option<Usage>,
    }
}

impl<B> MeteredBody<B> {
    pub(crate) fn new(inner: B, meter: UsageMeter) -> Self {
        Self { inner, tap: UsageTap::default(), meter: Some(meter), known: None }
    }

    /// The body's usage is `usage` (read from the whole body before it
    /// went out): the tap is not fed, nor read again at the end.
    pub(crate) fn knowing(mut self, usage: Option<Usage>) -> Self {
        self.known = usage;
        self
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                if this.known.is_none()
                    && let Some(data) = frame.data_ref()
                {
                    this.tap.push_bytes(data);
                }
                // The end, as soon as it is known: a body whose last frame
                // says so may never be polled again.
                if this.inner.is_end_stream()
                    && let Some(meter) = this.meter.take()
                {
                    meter.finished(this.known.or_else(|| this.tap.usage()));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                if let Some(meter) = this.meter.take() {
                    meter.broke();
                }
                Poll::Ready(Some(Err(err.into())))
            }
            None => {
                if let Some(meter) = this.meter.take() {
                    meter.finished(this.known.or_else(|| this.tap.usage()));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
