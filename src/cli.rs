//! Command-line flags; each overrides the config file and the environment.

use std::path::PathBuf;

use clap::Parser;

/// keyrelay: one OpenAI-compatible endpoint in front of a pool of LLM provider keys.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1]. Without PROXY_API_KEY only
    /// a loopback address is allowed.
    #[arg(long)]
    pub host: Option<String>,

    /// Port to listen on [default: 8000]; 0 picks a free one.
    #[arg(long)]
    pub port: Option<u16>,

    /// Config file [default: ./config.toml when present].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Directory for the key pool's state file [default: ./data].
    #[arg(long, value_name = "DIR")]
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
