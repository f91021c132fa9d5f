//! What the proxy does to an OpenAI-compatible provider's answers.
//!
//! Input: byte 0 picks the mode by its low bit, byte 1 is an option byte,
//! the rest is the payload.
//!
//! - odd (`s`): the payload is a stream, pushed through the framer in chunks
//!   of `(option >> 1) % 64` bytes (0: whole; 63: one frame per event, cut
//!   after each blank line). It goes through
//!   `upstream::drop_usage_chunk` (the body filter that drops the usage
//!   chunk the proxy asked for): the client must get every other event,
//!   intact. And through `think::ThinkSplitter` (`new`, and `already_open`
//!   when bit 0 of the option is set): every event out is one SSE event
//!   whose data is JSON, `[DONE]`, or the event's own data passed through.
//! - even (`r`): the payload is a whole answer: `think::split_completion`
//!   answers Ok (JSON) or Err; `openai::is_usage_only_chunk` does not panic.
#![no_main]

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keyrelay_fuzz::{assert_json, chunks, frame};
use keyrelay_layers::upstream::{
    dialect::{SseEvent, SseFramer, StreamTranslator, openai, sse::DONE, think},
    drop_usage_chunk,
};
use libfuzzer_sys::fuzz_target;

/// Without the `\r`s that end its lines. The framer drops one `\r` before
/// each `\n`, so a line that still ends in `\r` loses one each time it is
/// framed again (see `sse_framer`): once when an event is re-encoded, not
/// when its frame passes through as it came.
fn normalized(data: &str) -> String {
    data.split('\n').map(|line| line.trim_end_matches('\r')).collect::<Vec<_>>().join("\n")
}

fn normalized_event(event: &SseEvent) -> SseEvent {
    SseEvent { event: event.event.as_deref().map(normalized), data: normalized(&event.data) }
}

/// The payload cut after each blank line, as providers send their frames
/// (a frame of whole events may pass through the usage filter untouched).
fn event_frames(payload: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut start = 0;
    for at in 1..payload.len() {
        if &payload[at - 1..=at] == b"\n\n" {
            frames.push(&payload[start..=at]);
            start = at + 1;
        }
    }
    frames.push(&payload[start..]);
    frames
}

/// The body the client gets from `drop_usage_chunk` over these chunks.
fn filtered(pieces: &[&[u8]]) -> Vec<u8> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        pieces.iter().map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece)))).collect();
    let body = drop_usage_chunk(StreamBody::new(futures_util::stream::iter(frames)));
    // Every frame is ready: one poll collects the whole body.
    let mut collect = pin!(body.collect());
    match collect.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(collected)) => collected.to_bytes().to_vec(),
        Poll::Ready(Err(err)) => panic!("the usage filter failed: {err}"),
        Poll::Pending => panic!("a body of ready frames is pending"),
    }
}

fn splitter(pieces: &[&[u8]], mut splitter: think::ThinkSplitter) {
    let mut framer = SseFramer::new();
    let mut check = |event: &SseEvent| {
        let out = splitter.event(event).unwrap_or_else(|err| panic!("the think splitter refused {event:?}: {err}"));
        for chunk in out {
            if chunk == DONE {
                continue;
            }
            let again = frame(&[&chunk]);
            assert_eq!(again.len(), 1, "not one event: {:?}", String::from_utf8_lossy(&chunk));
            let again = &again[0];
            let passed = normalized(&again.data) == normalized(&event.data);
            assert!(
                passed || serde_json::from_str::<serde_json::Value>(&again.data).is_ok(),
                "{event:?} became {:?}",
                String::from_utf8_lossy(&chunk)
            );
        }
    };
    for piece in pieces {
        for event in framer.push(piece) {
            check(&event);
        }
    }
    if let Some(event) = framer.finish() {
        check(&event);
    }
    for chunk in splitter.finish() {
        assert_eq!(frame(&[&chunk]).len(), 1, "not one event: {:?}", String::from_utf8_lossy(&chunk));
        let data = chunk.strip_prefix(b"data: ").expect("a data event");
        assert_json("held-back text", data.strip_suffix(b"\n\n").expect("one event"));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, option, payload @ ..] = data else { return };
    if mode & 1 == 1 {
        let pieces = match (option >> 1) % 64 {
            0 => vec![payload],
            63 => event_frames(payload),
            size => chunks(payload, &[size]),
        };

        let expected: Vec<SseEvent> = frame(&[payload])
            .into_iter()
            .filter(|event| !openai::is_usage_only_chunk(&event.data))
            .map(|event| normalized_event(&event))
            .collect();
        let got: Vec<SseEvent> = frame(&[&filtered(&pieces)]).iter().map(normalized_event).collect();
        assert_eq!(got, expected, "the usage filter changed the stream");

        splitter(&pieces, think::ThinkSplitter::new());
        if option & 1 == 1 {
            splitter(&pieces, think::ThinkSplitter::already_open());
        }
    } else {
        if let Ok(out) = think::split_completion(payload) {
            assert!(assert_json("split_completion", &out).is_object());
        }
        let _ = openai::is_usage_only_chunk(&String::from_utf8_lossy(payload));
    }
});
