//! `reload::Live::call`'s own cost: what each request pays to find the
//! current stack, as the server pays it (clone the service, then one call).
//!
//! The stack here is a stand-in as cheap to clone as the real one (a few
//! `Arc`s) whose call is free, so the time is Live's. Run with
//! `cargo bench --bench live`; it prints ns per call on one thread and on
//! every core at once (where a lock would be contended).

#![allow(clippy::disallowed_methods)] // a bench measures wall-clock time

use std::{
    convert::Infallible,
    future::{Ready, ready},
    hint::black_box,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures_util::FutureExt;
use http::{Request, Response};
use keyrelay::reload::Live;
use tower::Service;

/// As cheap to clone as keyrelay's stack: a handful of shared pointers.
#[derive(Clone)]
struct StandIn {
    _sensitive: Arc<[u8]>,
    _log: Arc<u8>,
    _routes: Arc<u16>,
}

impl Service<Request<()>> for StandIn {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

const CALLS: u32 = 2_000_000;

/// Nanoseconds per request through `svc`, the way hyper-util calls it:
/// clone the service, call it once, await the answer.
fn per_call<S: Service<Request<()>> + Clone>(svc: &S) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        let answered = svc.clone().call(Request::new(())).now_or_never();
        black_box(answered.is_some());
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// `per_call` on every core at once; the mean per thread.
fn per_call_contended<S: Service<Request<()>> + Clone + Sync>(svc: &S, threads: usize) -> f64 {
    let each: Vec<f64> = std::thread::scope(|s| {
        let running: Vec<_> = (0..threads).map(|_| s.spawn(|| per_call(svc))).collect();
        running.into_iter().map(|t| t.join().expect("bench thread")).collect()
    });
    each.iter().sum::<f64>() / each.len() as f64
}

fn main() {
    let stack = StandIn { _sensitive: Arc::from(&b"ab"[..]), _log: Arc::new(0), _routes: Arc::new(0) };
    let live = Live::new(stack.clone());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    per_call(&live); // warm up
    let (bare, through_live) = (per_call(&stack), per_call(&live));
    println!("1 thread:   {bare:.1} ns per request to the stack itself, {through_live:.1} ns through Live");
    let (bare, through_live) = (per_call_contended(&stack, threads), per_call_contended(&live, threads));
    println!("{threads} threads: {bare:.1} ns per request to the stack itself, {through_live:.1} ns through Live");
}
