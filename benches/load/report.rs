//! Turns the runs into the README's tables and checks them against the
//! targets of issue #6.

use crate::drive::{Mode, Samples, quantile_us};

/// Linux's USER_HZ: /proc reports CPU time in hundredths of a second.
const TICKS_PER_SEC: f64 = 100.0;

pub struct Point {
    samples: Samples,
    cpu_ticks: u64,
    peak_rss_kib: u64,
}

impl Point {
    pub fn new(samples: Samples, cpu_ticks: u64, peak_rss_kib: u64) -> Self {
        Point { samples, cpu_ticks, peak_rss_kib }
    }

    fn p(&self, q: f64) -> f64 {
        quantile_us(&self.samples.latencies_ns, q)
    }

    fn first_chunk(&self, q: f64) -> f64 {
        quantile_us(&self.samples.first_chunk_ns, q)
    }

    /// The server's CPU time per request, in microseconds.
    fn cpu_us(&self) -> f64 {
        let served = self.samples.requests() as u64 + self.samples.warmup_requests;
        self.cpu_ticks as f64 / TICKS_PER_SEC * 1e6 / served.max(1) as f64
    }
}

pub struct Row {
    pub mode: Mode,
    pub concurrency: usize,
    pub direct: Point,
    pub hop: Point,
    pub proxy: Point,
}

impl Row {
    fn added(&self, via: &Point, q: f64) -> f64 {
        via.p(q) - self.direct.p(q)
    }

    fn added_first_chunk(&self, via: &Point, q: f64) -> f64 {
        via.first_chunk(q) - self.direct.first_chunk(q)
    }

    pub fn progress(&self) -> String {
        format!(
            "{:<6} c={:<3} rps direct {:>7.0} hop {:>7.0} keyrelay {:>7.0} | added p50 hop {:>6.0} µs keyrelay {:>6.0} µs | errors {}",
            self.mode.as_str(),
            self.concurrency,
            self.direct.samples.rps(),
            self.hop.samples.rps(),
            self.proxy.samples.rps(),
            self.added(&self.hop, 0.5),
            self.added(&self.proxy, 0.5),
            self.direct.samples.errors + self.hop.samples.errors + self.proxy.samples.errors,
        )
    }
}

pub fn print(rows: &[Row], pinned: bool, secs: f64) {
    println!(
        "\nkeyrelay load bench: {} s per point after a 0.5 s warm-up; {}.",
        secs,
        if pinned { "keyrelay and the bare hop on core 0, mock and load generator on core 1" } else { "unpinned" }
    );
    println!("Latencies in µs (request sent to last byte read); added = via the hop or keyrelay minus direct.\n");
    for mode in [Mode::Chat, Mode::Stream] {
        println!("{}:\n", if mode == Mode::Chat { "Non-streaming chat" } else { "Streaming chat (22 events)" });
        println!(
            "| conc | rps direct | rps hop | rps keyrelay | p50 direct | p99 direct | added p50 hop | added p50 keyrelay | added p99 hop | added p99 keyrelay | CPU/req hop | CPU/req keyrelay | hop peak RSS | keyrelay peak RSS |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in rows.iter().filter(|r| r.mode == mode) {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} µs | {:.1} µs | {:.1} MiB | {:.1} MiB |",
                row.concurrency,
                row.direct.samples.rps(),
                row.hop.samples.rps(),
                row.proxy.samples.rps(),
                row.direct.p(0.5),
                row.direct.p(0.99),
                row.added(&row.hop, 0.5),
                row.added(&row.proxy, 0.5),
                row.added(&row.hop, 0.99),
                row.added(&row.proxy, 0.99),
                row.hop.cpu_us(),
                row.proxy.cpu_us(),
                row.hop.peak_rss_kib as f64 / 1024.0,
                row.proxy.peak_rss_kib as f64 / 1024.0,
            );
        }
        println!();
    }
    let errors: u64 =
        rows.iter().map(|r| r.direct.samples.errors + r.hop.samples.errors + r.proxy.samples.errors).sum();
    let find = |mode, concurrency| rows.iter().find(|r| r.mode == mode && r.concurrency == concurrency);
    println!("Targets:\n");
    for mode in [Mode::Chat, Mode::Stream] {
        if let Some(row) = find(mode, 1) {
            let (hop, proxy) = (row.added(&row.hop, 0.5), row.added(&row.proxy, 0.5));
            let ratio = proxy / hop;
            verdict(
                ratio <= 1.5,
                format!(
                    "{} c=1: keyrelay adds {proxy:.0} µs at p50, the bare hop {hop:.0} µs: {ratio:.2}x (target <= 1.5x)",
                    mode.as_str()
                ),
            );
        }
        if let Some(row) = find(mode, 64) {
            let share = row.proxy.samples.rps() / row.hop.samples.rps();
            verdict(
                share >= 0.8,
                format!(
                    "{} c=64: keyrelay serves {:.0}% of the bare hop's throughput (target >= 80%)",
                    mode.as_str(),
                    share * 100.0
                ),
            );
        }
    }
    if let Some(row) = find(Mode::Stream, 1) {
        let (p50, p99) = (row.added_first_chunk(&row.proxy, 0.5), row.added_first_chunk(&row.proxy, 0.99));
        verdict(
            p50 < 1000.0,
            format!(
                "stream c=1: the first chunk reaches the client {p50:.0} µs (p50), {p99:.0} µs (p99) later than direct (target < 1 ms)"
            ),
        );
    }
    let peak = rows.iter().map(|r| r.proxy.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    verdict(
        peak < 40.0,
        format!("keyrelay's peak RSS over the whole run, up to c=256: {peak:.1} MiB (target < 40 MB)"),
    );
    verdict(errors == 0, format!("{errors} failed requests"));
}

fn verdict(met: bool, line: String) {
    println!("- {} {line}", if met { "met:" } else { "MISSED:" });
}
