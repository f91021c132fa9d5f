//! Logging and metrics setup: tracing to stderr as text or JSON, filtered
//! by `--log-level`, else `RUST_LOG`, else `info`; the Prometheus recorder.

use std::{io::IsTerminal, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The completion-line writer, once [`init`] installed the subscriber it
/// writes beside.
pub fn access_log() -> Option<std::sync::Arc<dyn keyrelay_layers::log::AccessLog>> {
    ACCESS_LOG.get().cloned()
}

static ACCESS_LOG: OnceLock<std::sync::Arc<dyn keyrelay_layers::log::AccessLog>> = OnceLock::new();

pub fn init(level: Option<&str>, format: LogFormat) {
    // The completion line of every request is written by keyrelay itself,
    // in the subscriber's layout (see access_log.rs).
    let _ = ACCESS_LOG.set(std::sync::Arc::new(crate::access_log::StderrAccessLog::new(format)));
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        // One object per line, span fields included: for log shippers.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// How often [`metrics_upkeep`] drains histogram samples: often enough that
/// few pile up between two runs (a run takes microseconds).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the recorder's upkeep every `every`, forever. A recorder installed
/// with `install_recorder` does none by itself: every histogram sample (two
/// per request) stays in memory until upkeep or a scrape of `/metrics`
/// drains it, so a proxy nobody scrapes would grow without bound.
pub async fn metrics_upkeep(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        metrics_handle().run_upkeep();
    }
}

/// The Prometheus recorder, installed once per process (tests start many
/// proxies in one process; they share it).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(keyrelay_layers::metrics::LATENCY_BUCKETS)
            .expect("the bucket list is not empty");
        match builder.install_recorder() {
            Ok(handle) => {
                keyrelay_layers::metrics::describe();
                handle
            }
            Err(err) => {
                // Another recorder owns the process (an embedding program):
                // serve an empty exposition rather than fail.
                tracing::warn!(error = %err, "cannot install the Prometheus recorder; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}
