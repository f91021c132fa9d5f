//! Key selection: `ProviderPool::choose` plus the `record` of a success and
//! the release of the in-flight guard, i.e. the pool's work per attempt.
//!
//! `choose` scans every key under its own small lock, so its cost grows with
//! the pool; `cooling_90pct` shows that scan over keys that cannot be used.

#![allow(clippy::disallowed_methods, reason = "benches time real threads with std's clock")]

mod common;

use std::{
    hint::black_box,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keyrelay_layers::{
    classify::{Failure, FailureClass},
    pool::{Choice, ProviderPool},
};

use common::UPSTREAM_MODEL as MODEL;

const KEY_COUNTS: [usize; 4] = [1, 10, 100, 1000];

fn provider(keys: usize) -> Arc<ProviderPool> {
    common::pool(keys).provider("openai").expect("the bench provider").clone()
}

/// One attempt's worth of pool work: choose, record a success, release.
fn cycle(pool: &Arc<ProviderPool>) {
    match pool.choose(MODEL, &[], None) {
        Choice::Leased(lease, in_flight) => {
            black_box(lease.record(MODEL, Ok(())));
            drop(in_flight);
        }
        Choice::Unavailable(why) => panic!("no key: {why:?}"),
    }
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("selection/single");
    for keys in KEY_COUNTS {
        let pool = provider(keys);
        group.bench_with_input(BenchmarkId::from_parameter(keys), &pool, |b, pool| b.iter(|| cycle(pool)));
    }
    group.finish();
}

/// Two threads cycling on one pool. The time reported is wall time over
/// all operations of both threads (inverse throughput): perfect scaling
/// would halve the single-threaded time; the latency of one operation is
/// twice the figure. Thread start-up is included but amortised over the
/// thousands of cycles of a sample.
fn contended(c: &mut Criterion) {
    const THREADS: u32 = 2;
    let mut group = c.benchmark_group("selection/contended_2_threads");
    for keys in KEY_COUNTS {
        let pool = provider(keys);
        group.bench_with_input(BenchmarkId::from_parameter(keys), &pool, |b, pool| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                thread::scope(|s| {
                    for _ in 0..THREADS {
                        s.spawn(|| (0..iters).for_each(|_| cycle(pool)));
                    }
                });
                start.elapsed() / THREADS
            });
        });
    }
    group.finish();
}

/// Nine keys in ten rate limited for this model (for an hour): each choice
/// still looks at every key, and finds few candidates.
fn cooling(c: &mut Criterion) {
    let mut group = c.benchmark_group("selection/cooling_90pct");
    for keys in KEY_COUNTS.into_iter().filter(|&k| k >= 10) {
        let pool = provider(keys);
        let limited = Failure { class: FailureClass::RateLimit, retry_after: Some(Duration::from_secs(3600)) };
        for index in (0..keys).filter(|i| i % 10 != 0) {
            assert!(pool.record(index, MODEL, Err(limited)).is_some(), "key {index} should cool");
        }
        group.bench_with_input(BenchmarkId::from_parameter(keys), &pool, |b, pool| b.iter(|| cycle(pool)));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = single_thread, contended, cooling
}
criterion_main!(benches);
