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
