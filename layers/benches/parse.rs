//! Request parsing and the OpenAI model rewrite, in bytes of request body.
//!
//! Parse reads only `model` and `stream` (serde still validates the whole
//! document), and the upstream swaps the model token in place and splices
//! `stream_options` in before the last brace. `serde_value` is what that
//! avoids: the same route-and-rewrite through a `serde_json::Value`.

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyrelay_layers::{extensions::Endpoint, parse::route_target, upstream::dialect::openai};
use serde_json::Value;

const SIZES: [(&str, usize); 3] = [("200B", 200), ("8KB", 8 << 10), ("200KB", 200 << 10)];

/// The naive alternative: parse it all, change `model`, write it all again.
fn serde_value(body: &Bytes) -> Bytes {
    let mut value: Value = serde_json::from_slice(body).expect("JSON");
    let model = value["model"].as_str().expect("a model");
    let (_provider, upstream_model) = model.split_once('/').expect("provider/model");
    value["model"] = upstream_model.into();
    serde_json::to_vec(&value).expect("serialisable").into()
}

fn parse(c: &mut Criterion) {
    let pool = common::pool(1);
    let mut group = c.benchmark_group("parse");
    for (label, size) in SIZES {
        let body = common::chat_body(size, true);
        assert!(body.len() > size * 3 / 4, "{label}: {} bytes", body.len());
        let target = route_target(&body, Endpoint::ChatCompletions, &pool).expect("a routable body");
        let span = target.model_span().expect("a model span");
        assert_eq!(
            serde_json::from_slice::<Value>(&openai::rewrite_model(&body, span.clone(), target.model())).unwrap(),
            serde_json::from_slice::<Value>(&serde_value(&body)).unwrap(),
            "both ways give the same request"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("route_target", label), &body, |b, body| {
            b.iter(|| route_target(black_box(body), Endpoint::ChatCompletions, &pool).expect("routable"));
        });
        group.bench_with_input(BenchmarkId::new("rewrite_model", label), &body, |b, body| {
            b.iter(|| openai::rewrite_model(black_box(body), span.clone(), target.model()));
        });
        group.bench_with_input(BenchmarkId::new("ask_for_stream_usage", label), &body, |b, body| {
            b.iter(|| openai::ask_for_stream_usage(black_box(body), false));
        });
        // What a request costs here in total: route it, then swap the model.
        group.bench_with_input(BenchmarkId::new("route_and_splice", label), &body, |b, body| {
            b.iter(|| {
                let target = route_target(black_box(body), Endpoint::ChatCompletions, &pool).expect("routable");
                openai::rewrite_model(body, target.model_span().expect("a span"), target.model())
            });
        });
        group.bench_with_input(BenchmarkId::new("serde_value", label), &body, |b, body| {
            b.iter(|| serde_value(black_box(body)));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = parse
}
criterion_main!(benches);
