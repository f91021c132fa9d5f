//! Streams the proxy reads event by event: a provider's events translated
//! to OpenAI chunks, or an OpenAI stream less the usage chunk the proxy
//! asked for. Each is framed once ([`dialect::SseFramer`]), and its usage
//! reaches the [`UsageMeter`] at its end.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use pin_project_lite::pin_project;

use super::{dialect, meter::UsageMeter};
use crate::{BoxError, usage::Usage};

pin_project! {
    /// A provider's event stream as OpenAI chunks, event by event. The
    /// events one upstream frame completes leave as one frame.
    pub(crate) struct TranslatedStream<B> {
        #[pin]
        inner: B,
        framer: dialect::SseFramer,
        translator: Box<dyn dialect::StreamTranslator>,
        meter: Option<UsageMeter>,
        failed: Option<BoxError>,
        done: bool,
    }
}

impl<B> TranslatedStream<B> {
    pub(crate) fn new(inner: B, translator: Box<dyn dialect::StreamTranslator>, meter: Option<UsageMeter>) -> Self {
        Self { inner, framer: dialect::SseFramer::new(), translator, meter, failed: None, done: false }
    }
}

impl<B> http_body::Body for TranslatedStream<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(err) = this.failed.take() {
                *this.done = true;
                if let Some(meter) = this.meter.take() {
                    meter.broke();
                }
                return Poll::Ready(Some(Err(err)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { continue };
                    let whole_events = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                    if whole_events && this.framer.is_idle() {
                        if this.translator.passes_unchanged(data) {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        match this.translator.keep_whole_events(data) {
                            Some(kept) if kept.is_empty() => continue,
                            Some(kept) => return Poll::Ready(Some(Ok(Frame::data(kept)))),
                            None => {}
                        }
                    }
                    for event in this.framer.push(data) {
                        match this.translator.event(&event) {
                            Ok(chunks) => chunks.iter().for_each(|c| out.extend_from_slice(c)),
                            Err(err) => {
                                *this.failed = Some(format!("the provider reported an error mid-stream: {err}").into());
                                break;
                            }
                        }
                    }
                }
                Some(Err(err)) => {
                    *this.failed = Some(err.into());
                    continue;
                }
                None => {
                    if let Some(event) = this.framer.finish() {
                        match this.translator.event(&event) {
                            Ok(chunks) => chunks.iter().for_each(|c| out.extend_from_slice(c)),
                            Err(err) => {
                                *this.failed = Some(format!("the provider reported an error mid-stream: {err}").into())
                            }
                        }
                    }
                    if this.failed.is_none() && !this.translator.is_complete() {
                        // A clean end of the body is not the end of the answer.
                        *this.failed = Some("the provider's stream ended before the answer was complete".into());
                    }
                    if this.failed.is_none() {
                        this.translator.finish().iter().for_each(|c| out.extend_from_slice(c));
                        if let Some(meter) = this.meter.take() {
                            meter.finished(this.translator.usage());
                        }
                        *this.done = true;
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }
}

/// Drops the usage-only chunk the proxy asked for on the client's behalf
/// (the stream's usage is read from it on the way). A frame of whole events
/// passes as it came, less the usage chunk's bytes; a frame that splits an
/// event is re-framed (comments and `id:` lines are not kept), and a half
/// event is held until it is whole.
pub fn drop_usage_chunk<B>(body: B) -> impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    TranslatedStream::new(body, Box::new(UsageChunkFilter::default()), None)
}

/// The [`dialect::StreamTranslator`] behind [`drop_usage_chunk`]: passes an
/// OpenAI stream through, less the usage-only chunk, whose usage it keeps.
#[derive(Debug, Default)]
pub(crate) struct UsageChunkFilter {
    usage: Option<Usage>,
}

impl dialect::StreamTranslator for UsageChunkFilter {
    fn passes_unchanged(&mut self, frame: &[u8]) -> bool {
        // Any usage object, even one split over data lines, goes through
        // `event` below, which drops the usage chunk.
        crate::usage::only_null_usage(frame)
    }

    fn keep_whole_events(&mut self, frame: &Bytes) -> Option<Bytes> {
        // Events end at a blank line; with `\r` line ends in play, leave
        // the framing to the framer.
        if memchr::memchr(b'\r', frame).is_some() {
            return None;
        }
        let mut kept: Option<BytesMut> = None;
        let mut kept_from = 0;
        // Each event is looked at once, however many `"usage"` keys it has.
        let mut looked_to = 0;
        for at in memchr::memmem::find_iter(frame, b"\"usage\"") {
            if at < looked_to {
                continue;
            }
            let start = memchr::memmem::rfind(&frame[..at], b"\n\n").map_or(0, |end| end + 2);
            let end = memchr::memmem::find(&frame[at..], b"\n\n").map(|end| at + end + 2)?;
            looked_to = end;
            // With usage asked for, every chunk says `"usage":null`: only
            // an event with a usage object is worth framing and parsing.
            if crate::usage::only_null_usage(&frame[start..end]) {
                continue;
            }
            let events = dialect::SseFramer::new().push(&frame[start..end]);
            let [event] = events.as_slice() else { return None };
            self.note_usage(&event.data);
            if dialect::openai::is_usage_only_chunk(&event.data) {
                kept.get_or_insert_with(|| BytesMut::with_capacity(frame.len()))
                    .extend_from_slice(&frame[kept_from..start]);
                kept_from = end;
            }
        }
        Some(match kept {
            None => frame.clone(),
            Some(mut kept) => {
                kept.extend_from_slice(&frame[kept_from..]);
                kept.freeze()
            }
        })
    }

    fn event(&mut self, event: &dialect::SseEvent) -> Result<Vec<Bytes>, dialect::TranslateError> {
        self.note_usage(&event.data);
        Ok(if dialect::openai::is_usage_only_chunk(&event.data) {
            Vec::new()
        } else {
            vec![dialect::sse::encode_event(event)]
        })
    }

    fn finish(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl UsageChunkFilter {
    /// Keeps the usage an event carries (the usage chunk's, or a provider's
    /// that puts it on its last content chunk).
    fn note_usage(&mut self, data: &str) {
        if let Some(usage) = crate::usage::usage_in_tail(data.as_bytes()) {
            self.usage = Some(usage);
        }
    }
}
