//! What sharing state on Redis costs each request (issue 16), measured on
//! a real `redis-server` with 1 to 4 keyrelay replicas in this process
//! (each its own server, pool and Redis connections, as in
//! `tests/shared_redis.rs`) in front of the mock OpenAI upstream.
//!
//! ```text
//! cargo bench --bench redis_round_trips                      # 600 requests a run
//! cargo bench --bench redis_round_trips -- --requests 200 --replicas 2
//! ```
//!
//! For each configuration ([`scenario::Config`]) and replica count, a
//! counted run sends the requests round robin over the replicas, 16 at a
//! time, while Redis' `MONITOR` records every command (top level, or run
//! by a script) and `INFO stats` the socket reads. Then a timed run sends
//! them one at a time, without MONITOR, for latency percentiles; the same
//! configuration without Redis gives the baseline. Latencies are wall
//! clock on a shared machine: indicative, never asserted.
#![allow(clippy::disallowed_methods)] // a bench measures wall-clock time
#![allow(clippy::print_stderr)]

#[path = "../../tests/support/mod.rs"]
mod support;

mod monitor;
mod report;
mod scenario;

use std::time::Duration;

use monitor::{Monitor, Scripts, Tally};
use redis::aio::MultiplexedConnection;
use report::{Counted, Row};
use scenario::{Config, Driven, drive, percentile};
use support::{MockUpstream, Proxy, redis::RedisServer};

/// The channel keyrelay's replicas subscribe to (default prefix).
const CHANNEL: &str = "keyrelay:events";
/// Requests in flight during a counted run.
const CONCURRENCY: usize = 16;
/// A counted run's window lasts this long at least.
const COUNTED_WINDOW: Duration = Duration::from_secs(3);

struct Args {
    requests: usize,
    replicas: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
    };
    let args = Args { requests: flag("--requests", 600), replicas: flag("--replicas", 4) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(measure(&args));
}

async fn measure(args: &Args) {
    let redis = RedisServer::start().await;
    let port: u16 = redis.url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("redis port");
    let mock = MockUpstream::start().await;
    let mut conn = redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let scripts = Scripts::new();
    let mut rows = Vec::new();
    let mut run = 0;
    for config in Config::ALL {
        config.prepare(&mock);
        let baseline = timed_without_redis(config, &mock, args.requests).await;
        for n in 1..=args.replicas {
            run += 1;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
            let (env, toml) = config.settings(&mock, Some(&redis.url()));
            let replicas = start(n, &env, toml.as_deref()).await;
            wait_for_subscribers(&mut conn, n as u64).await;
            // Connections made, scripts loaded, sessions of the warm-up
            // bound: the counted run sees the steady state.
            drive(config, &replicas, &mock, run * 1000, 8 * n, 4).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let counted = counted_run(config, &replicas, &mock, &mut conn, port, &scripts, run, args.requests).await;
            let timed = drive(config, &replicas, &mock, run * 1000 + 1, args.requests, 1).await;
            eprintln!("{} with {n} replica(s): done", config.label());
            rows.push(Row {
                config,
                replicas: n,
                counted,
                p50_us: percentile(&timed.latencies, 50.0),
                p99_us: percentile(&timed.latencies, 99.0),
                timed_failed: timed.failed,
                baseline_p50_us: percentile(&baseline.latencies, 50.0),
                baseline_p99_us: percentile(&baseline.latencies, 99.0),
                baseline_failed: baseline.failed,
            });
            stop(replicas).await;
            mock.take_requests();
        }
        mock.clear_for(support::KEY_ONE);
        mock.clear_for(support::KEY_TWO);
        mock.clear_for(support::KEY_THREE);
    }
    report::print(&rows, args.requests, CONCURRENCY);
}

async fn start(n: usize, env: &[(String, String)], toml: Option<&str>) -> Vec<Proxy> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(match toml {
            Some(toml) => Proxy::start_with_config(env.to_vec(), toml, None).await,
            None => Proxy::start(env.to_vec()).await,
        });
    }
    replicas
}

async fn stop(replicas: Vec<Proxy>) {
    for proxy in replicas {
        proxy.stop().await;
    }
}

/// The latency of one replica without Redis: the request path's cost
/// without any admission round trip.
async fn timed_without_redis(config: Config, mock: &MockUpstream, requests: usize) -> Driven {
    let (env, toml) = config.settings(mock, None);
    let replicas = start(1, &env, toml.as_deref()).await;
    drive(config, &replicas, mock, 0, 16, 4).await;
    let timed = drive(config, &replicas, mock, 1, requests, 1).await;
    stop(replicas).await;
    mock.take_requests();
    timed
}

async fn wait_for_subscribers(conn: &mut MultiplexedConnection, n: u64) {
    support::within("every replica to subscribe", async {
        while monitor::subscribers(conn, CHANNEL).await != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn counted_run(
    config: Config,
    replicas: &[Proxy],
    mock: &MockUpstream,
    conn: &mut MultiplexedConnection,
    port: u16,
    scripts: &Scripts,
    run: usize,
    requests: usize,
) -> Counted {
    let mut monitor = Monitor::start(port).await;
    let (start, end) = (format!("start-{run}"), format!("end-{run}"));
    let reads_before = monitor::reads_processed(conn).await;
    monitor::mark(conn, &start).await;
    let began = tokio::time::Instant::now();
    let driven = drive(config, replicas, mock, run, requests, CONCURRENCY).await;
    // Releases and events leave after the answers: let them reach Redis.
    // And a window of a few seconds at least, to count the counter writes
    // (once a second per replica, whatever the load).
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::sleep_until(began + COUNTED_WINDOW).await;
    let secs = began.elapsed().as_secs_f64();
    monitor::mark(conn, &end).await;
    // Ours in between: the two ECHOs and this INFO.
    let reads = monitor::reads_processed(conn).await.saturating_sub(reads_before + 3);
    let seen = monitor.until(&start, &end).await;
    Counted { tally: Tally::of(&seen, scripts), reads, secs, failed: driven.failed }
}
