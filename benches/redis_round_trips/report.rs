//! The tables the bench prints (markdown, for ARCHITECTURE.md).

use crate::{monitor::Tally, scenario::Config};

/// One counted run: what Redis saw, its socket reads (ours taken out)
/// and how long the window was.
pub struct Counted {
    pub tally: Tally,
    pub reads: u64,
    pub secs: f64,
    /// Requests not answered 200 within the bench's patience.
    pub failed: usize,
}

/// One configuration with one replica count.
pub struct Row {
    pub config: Config,
    pub replicas: usize,
    pub counted: Counted,
    pub p50_us: u64,
    pub p99_us: u64,
    pub timed_failed: usize,
    pub baseline_p50_us: u64,
    pub baseline_p99_us: u64,
    pub baseline_failed: usize,
}

impl Row {
    /// Round trips on the request path: one `EVALSHA admit` per attempt
    /// (a refused attempt asks again on another key or later).
    fn admissions(&self) -> u64 {
        let t = &self.counted.tally;
        t.sent("evalsha:admit") + t.sent("script-load:admit")
    }

    /// Event pipelines (SET+PUBLISH; a burst shares one). Release and
    /// renewal batches cannot be told apart in MONITOR's stream since the
    /// scripts are loaded once per connection: releases are counted one
    /// by one instead.
    fn events(&self) -> u64 {
        self.counted.tally.sent("publish")
    }
}

pub fn print(rows: &[Row], requests: usize, concurrency: usize) {
    let per = |n: u64| n as f64 / requests as f64;
    println!("\n## Redis work per request ({requests} chat requests a run, {concurrency} in flight, round robin)\n");
    println!(
        "| configuration | replicas | commands sent /req (counters aside) | run in scripts /req | request-path round trips /req \
         | event writes /req | releases /req (background, pipelined) | socket reads /req | messages published | \
         deliveries | counter writes /replica/s | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let t = &row.counted.tally;
        let published = t.total_published();
        let n = row.replicas as u64;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {} |",
            row.config.label(),
            row.replicas,
            per(t.sent_for_requests()),
            per(t.in_scripts),
            per(row.admissions()),
            per(row.events()),
            per(t.sent("evalsha:release")),
            per(row.counted.reads),
            published,
            published * n,
            t.counter_ticks as f64 / (n as f64 * row.counted.secs),
            row.counted.failed,
        );
    }
    println!("\n## Wall clock per request, one at a time (indicative: a shared 2-core machine)\n");
    println!(
        "| configuration | replicas | p50 µs | p99 µs | p50 µs without Redis | p99 µs without Redis | p50 added µs | failed (with / without) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            row.config.label(),
            row.replicas,
            row.p50_us,
            row.p99_us,
            row.baseline_p50_us,
            row.baseline_p99_us,
            row.p50_us as i64 - row.baseline_p50_us as i64,
            row.timed_failed,
            row.baseline_failed,
        );
    }
    println!("\n## Commands sent, by name, and messages published, by kind\n");
    for row in rows {
        let t = &row.counted.tally;
        let sent: Vec<String> = t.sent.iter().map(|(name, calls)| format!("{name}={calls}")).collect();
        let published: Vec<String> = t.published.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
        println!(
            "- {} × {} ({:.1} s): {}; published: {}",
            row.config.label(),
            row.replicas,
            row.counted.secs,
            sent.join(" "),
            if published.is_empty() { "none".to_owned() } else { published.join(" ") },
        );
    }
}
