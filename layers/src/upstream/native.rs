//! [`NativeBody`]: an answer that passes through in the client's own
//! dialect (Anthropic to Anthropic, Gemini to Gemini, Responses to a
//! provider that speaks it), byte for byte, with its usage read on the way
//! for the [`UsageMeter`] — and, for the Responses API, the id of the
//! response it made and the digests of the encrypted reasoning in it,
//! remembered with its key.
//!
//! A stream's usage may come at its start (Anthropic's `message_start`
//! holds the input tokens) and its end (`message_delta`, Gemini's last
//! `usageMetadata`, the Responses API's `response.completed`): a stream is
//! framed on a copy, and each event that names a usage is read; the largest
//! counts win (each dialect's counts only grow). A whole answer keeps only
//! its tail, like any other.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{dialect::SseFramer, meter::UsageMeter};
use crate::{
    BoxError,
    pool::{EncryptedScanner, ResponseOwner, ResponseOwners},
    usage::{Usage, UsageTap, usage_in_tail},
};

/// How far into an answer a response id is looked for: it is the first
/// field of a `response` object and of the `response.created` event.
const ID_WINDOW: usize = 4096;

/// Remembers the id of the response an answer carries, and the digests of
/// the encrypted reasoning in it, with its key.
pub(crate) struct IdCapture {
    owners: std::sync::Arc<ResponseOwners>,
    owner: ResponseOwner,
    head: Vec<u8>,
    id: Option<std::sync::Arc<str>>,
    encrypted: EncryptedScanner,
}

impl IdCapture {
    pub(crate) fn new(owners: std::sync::Arc<ResponseOwners>, owner: ResponseOwner) -> Self {
        Self { owners, owner, head: Vec::new(), id: None, encrypted: EncryptedScanner::default() }
    }

    /// Looks at the next bytes.
    fn push(&mut self, data: &[u8]) {
        if self.id.is_none() && self.head.len() < ID_WINDOW {
            let take = (ID_WINDOW - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            if let Some(id) = response_id(&self.head) {
                self.owners.remember(id, self.owner.clone());
                self.id = Some(id.into());
                self.head = Vec::new();
            }
        }
        let Self { owners, owner, id, encrypted, .. } = self;
        encrypted.push(data, &mut |digest| owners.remember(&digest, owner.clone().of_response(id.clone())));
    }
}

/// The first `"resp_..."` string in `head`, once it is whole.
fn response_id(head: &[u8]) -> Option<&str> {
    let at = memchr::memmem::find(head, b"\"resp_")? + 1;
    let len = memchr::memchr(b'"', &head[at..])?;
    let id = std::str::from_utf8(&head[at..at + len]).ok()?;
    id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-').then_some(id)
}

pin_project! {
    /// A passed-through answer, its usage read as it goes.
    pub(crate) struct NativeBody<B> {
        #[pin]
        inner: B,
        // Streams: events framed on a copy; whole answers: the tail.
        framer: Option<SseFramer>,
        tail: UsageTap,
        usage: Option<Usage>,
        meter: Option<UsageMeter>,
        id: Option<IdCapture>,
    }
}

impl<B> NativeBody<B> {
    pub(crate) fn new(inner: B, stream: bool, meter: UsageMeter, id: Option<IdCapture>) -> Self {
        let framer = stream.then(SseFramer::new);
        Self { inner, framer, tail: UsageTap::default(), usage: None, meter: Some(meter), id }
    }
}

/// The larger of two readings of one answer's usage.
fn larger(seen: Option<Usage>, new: Usage) -> Usage {
    let seen = seen.unwrap_or_default();
    Usage {
        prompt_tokens: seen.prompt_tokens.max(new.prompt_tokens),
        completion_tokens: seen.completion_tokens.max(new.completion_tokens),
        cached_tokens: seen.cached_tokens.max(new.cached_tokens),
    }
}

impl<B> Body for NativeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(id) = this.id.as_mut() {
                        id.push(data);
                    }
                    match this.framer.as_mut() {
                        Some(framer) => {
                            for event in framer.push(data) {
                                if let Some(usage) = usage_in_tail(event.data.as_bytes()) {
                                    *this.usage = Some(larger(*this.usage, usage));
                                }
                            }
                        }
                        None => this.tail.push_bytes(data),
                    }
                }
                if this.inner.is_end_stream() {
                    finish(this.meter, this.framer, this.tail, this.usage);
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
                finish(this.meter, this.framer, this.tail, this.usage);
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

fn finish(meter: &mut Option<UsageMeter>, framer: &mut Option<SseFramer>, tail: &UsageTap, usage: &mut Option<Usage>) {
    let Some(meter) = meter.take() else { return };
    match framer {
        Some(framer) => {
            if let Some(last) = framer.finish().and_then(|event| usage_in_tail(event.data.as_bytes())) {
                *usage = Some(larger(*usage, last));
            }
            meter.finished(*usage);
        }
        None => meter.finished(tail.usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_response_id_in_an_answer_and_in_its_first_event() {
        assert_eq!(
            response_id(br#"{"id": "resp_67ccd2bed1ec8190", "object": "response"}"#),
            Some("resp_67ccd2bed1ec8190")
        );
        let event = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1a\"";
        assert_eq!(response_id(event), Some("resp_1a"));
        assert_eq!(response_id(br#"{"id": "resp_cut"#), None, "not whole yet");
        assert_eq!(response_id(br#"{"id": "resp_a b"}"#), None);
    }

    #[test]
    fn the_larger_reading_wins_field_by_field() {
        let start = Usage::new(120, 1);
        let delta = Usage::new(0, 40);
        assert_eq!(larger(Some(start), delta), Usage::new(120, 40));
    }
}
