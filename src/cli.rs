//! Command-line flags; each overrides the config file and the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keyrelay: one OpenAI-compatible endpoint in front of a pool of LLM provider keys.
///
/// Without a command it serves.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on [default: 127.0.0.1]. Without PROXY_API_KEY only
    /// a loopback address is allowed.
    #[arg(long)]
    pub host: Option<String>,

    /// Port to listen on [default: 8000]; 0 picks a free one.
    #[arg(long)]
    pub port: Option<u16>,

    /// Config file [default: ./config.toml when present].
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Directory of the database (usage ledger, pool state) [default: ./data].
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key)
    /// [config: server.tls_cert].
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert [config: server.tls_key].
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Write a directory per request (request, response or stream, attempts)
    /// under DATA_DIR/logs/requests [config: server.request_logging].
    #[arg(long)]
    pub enable_request_logging: bool,

    /// Log filter, e.g. `info` or `keyrelay=debug` [default: info, or RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log lines as human-readable text or as one JSON object each.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What keyrelay can do besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print usage totals from the ledger: requests, errors, tokens, cost
    /// (reads the database; works while the server runs).
    Usage(UsageArgs),
    /// Check every configured provider key against its provider (its model
    /// list): ok, invalid, no quota, rate limited or unreachable. Exits 0
    /// when every key is usable, 1 otherwise, 64 when the configuration
    /// cannot be loaded.
    Check(CheckArgs),
    /// Show the pool of a running keyrelay (`GET /v1/keys`) as a table:
    /// live on a terminal until `q`, once otherwise.
    Status(StatusArgs),
}

/// `keyrelay check`: each key against its provider's cheapest call.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print a JSON array (one object per key) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Keys checked at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Seconds one key's check may take before it counts as unreachable.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// `keyrelay status`: a running keyrelay's pool in the terminal.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The running keyrelay.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// The proxy or admin key [default: PROXY_API_KEY, else ADMIN_API_KEY,
    /// from the configuration, `.env` or the environment].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,

    /// Seconds between refreshes on a terminal.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
}

/// `keyrelay usage`: the report of `GET /v1/usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the window: a duration back from now (30m, 24h, 7d, 2w), a
    /// date (2026-12-01, UTC) or an RFC 3339 time [default: 7 days before --until].
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// End of the window, not included (as --since; a date counts its whole
    /// day) [default: now].
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// Group by any of client, provider, model, key, day, comma-separated;
    /// empty for the total only [default: client,provider,model].
    #[arg(long, value_name = "GROUPS")]
    pub by: Option<String>,

    /// Print the JSON that GET /v1/usage answers instead of a table.
    #[arg(long)]
    pub json: bool,
}
