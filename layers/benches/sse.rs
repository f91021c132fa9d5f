//! Stream framing and translation throughput, in bytes of provider stream.
//!
//! Each input is fed either one event per frame (how providers usually
//! flush) or in 7-byte frames (the worst re-framing case: events are held
//! back across many frames). Frames are split before measuring; cutting
//! them is not part of the cost.
//!
//! The OpenAI pass-through is measured through its public body wrappers;
//! `sse/client` measures the inbound dialects' stream translations.
//! The translated dialects are driven the way the upstream's private
//! `TranslatedStream` body drives them (framer, translator, one output
//! buffer per input frame), since that body is not public.

mod common;

use std::{
    hint::black_box,
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use futures_util::stream;
use http_body::{Body, Frame};
use http_body_util::StreamBody;
use keyrelay_layers::{
    BoxError,
    body::SseErrorTail,
    extensions::Inbound,
    upstream::{
        dialect::{
            SseFramer, StreamTranslator, anthropic,
            client::{ChainedStream, ClientHints, for_inbound},
            gemini,
        },
        drop_usage_chunk,
    },
};

const CREATED: u64 = 1_767_268_800;

fn fixture(path: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into()
}

/// The stream cut after each blank line (`\n\n`), delimiters kept.
fn per_event(stream: &Bytes) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut start = 0;
    for end in stream.windows(2).enumerate().filter(|(_, w)| *w == b"\n\n").map(|(i, _)| i + 2) {
        frames.push(stream.slice(start..end));
        start = end;
    }
    if start < stream.len() {
        frames.push(stream.slice(start..));
    }
    frames
}

fn split_7(stream: &Bytes) -> Vec<Bytes> {
    (0..stream.len()).step_by(7).map(|at| stream.slice(at..(at + 7).min(stream.len()))).collect()
}

/// The frames as a body that is always ready, as a fast upstream's would be.
type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

fn body(frames: &[Bytes]) -> Frames {
    StreamBody::new(stream::iter(frames.iter().cloned().map(|b| Ok(Frame::data(b))).collect::<Vec<_>>()))
}

/// Reads a body that never waits, with no runtime; returns the bytes out.
fn drain<B: Body<Data = Bytes, Error = BoxError>>(body: B) -> usize {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = 0;
    loop {
        match Pin::as_mut(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => out += frame.expect("a clean stream").into_data().map_or(0, |d| d.len()),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("an in-memory body never waits"),
        }
    }
}

/// What `TranslatedStream` does per frame: frame, translate, concatenate.
fn translate(frames: &[Bytes], mut translator: impl StreamTranslator) -> usize {
    let mut framer = SseFramer::new();
    let mut sent = 0;
    for frame in frames {
        let mut out = BytesMut::new();
        for event in framer.push(frame) {
            translator.event(&event).expect("a well-formed stream").iter().for_each(|c| out.extend_from_slice(c));
        }
        sent += black_box(out.freeze()).len();
    }
    if let Some(event) = framer.finish() {
        sent += translator.event(&event).expect("a well-formed stream").iter().map(Bytes::len).sum::<usize>();
    }
    assert!(translator.is_complete(), "the fixture stream ends properly");
    sent + translator.finish().iter().map(Bytes::len).sum::<usize>()
}

/// The stream cut both ways, as `<name>/per_event` and `<name>/split_7`.
fn splits(stream: &Bytes) -> [(&'static str, Vec<Bytes>); 2] {
    [("per_event", per_event(stream)), ("split_7", split_7(stream))]
}

/// Benches `run` over the frames, cut both ways.
fn both_splits(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, stream: &Bytes, run: impl Fn(&[Bytes]) -> usize) {
    for (split, frames) in splits(stream) {
        assert!(run(&frames) > 0, "{name}/{split} produced nothing");
        group.bench_function(format!("{name}/{split}"), |b| b.iter(|| run(black_box(&frames))));
    }
}

/// Benches the body `wrap` makes of a body of the frames, cut both ways;
/// the inner body is built outside the timing.
fn both_splits_body<W: Body<Data = Bytes, Error = BoxError>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    stream: &Bytes,
    wrap: impl Fn(Frames) -> W,
) {
    for (split, frames) in splits(stream) {
        assert!(drain(wrap(body(&frames))) > 0, "{name}/{split} produced nothing");
        group.bench_function(format!("{name}/{split}"), |b| {
            b.iter_batched(|| body(&frames), |body| drain(wrap(body)), BatchSize::SmallInput);
        });
    }
}

fn openai(c: &mut Criterion) {
    // About the length of a short answer: 60 content chunks, ~16 KB.
    let stream: Bytes = common::openai_stream(60).concat().into();
    let mut group = c.benchmark_group("sse/openai");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    // Plain pass-through (the provider does not send usage): frames go
    // through untouched, only watched for a break.
    both_splits_body(&mut group, "error_tail", &stream, SseErrorTail::new);
    // The usage chunk the proxy asked for is dropped: every event is
    // framed, checked, and encoded again.
    both_splits_body(&mut group, "drop_usage_chunk", &stream, |body| SseErrorTail::new(drop_usage_chunk(body)));
    // The framer alone, to tell its share from the filter's.
    both_splits(&mut group, "framer_only", &stream, |frames| {
        let mut framer = SseFramer::new();
        frames.iter().map(|f| framer.push(f).len()).sum::<usize>() + usize::from(framer.finish().is_some())
    });
    group.finish();
}

fn anthropic(c: &mut Criterion) {
    let stream = fixture("anthropic/streams/text_and_tools.sse");
    let mut group = c.benchmark_group("sse/anthropic");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    both_splits(&mut group, "translate", &stream, |frames| {
        translate(frames, anthropic::ChatStream::new(common::MODEL, false, CREATED))
    });
    group.finish();
}

fn gemini(c: &mut Criterion) {
    let stream = fixture("gemini/stream_text.gemini.sse");
    let mut group = c.benchmark_group("sse/gemini");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    both_splits(&mut group, "translate", &stream, |frames| {
        translate(frames, gemini::ChatStream::new("google/gemini-2.5-flash", false, CREATED))
    });
    group.finish();
}

/// The inbound dialects' streams: an OpenAI-compatible provider's chat
/// stream as Anthropic, Responses and Gemini events (one translation), and
/// Anthropic's stream as Responses events (two, chained), as a Codex
/// session on a Claude model runs.
fn client(c: &mut Criterion) {
    let stream: Bytes = common::openai_stream(60).concat().into();
    let mut group = c.benchmark_group("sse/client");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let hints = ClientHints::default();
    for inbound in [Inbound::Anthropic, Inbound::Responses, Inbound::Gemini] {
        let dialect = for_inbound(inbound).expect("a client dialect");
        both_splits(&mut group, &format!("{}_from_chat", inbound.as_str()), &stream, |frames| {
            translate(frames, ChainedStream::new(None, dialect.stream(common::MODEL, &hints)))
        });
    }
    let anthropic_stream = fixture("anthropic/streams/text_and_tools.sse");
    let responses = for_inbound(Inbound::Responses).expect("a client dialect");
    group.throughput(Throughput::Bytes(anthropic_stream.len() as u64));
    both_splits(&mut group, "responses_from_anthropic", &anthropic_stream, |frames| {
        let from_anthropic = Box::new(anthropic::ChatStream::new(common::MODEL, true, CREATED));
        translate(frames, ChainedStream::new(Some(from_anthropic), responses.stream(common::MODEL, &hints)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = openai, anthropic, gemini, client
}
criterion_main!(benches);
