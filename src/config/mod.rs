//! Configuration: figment layers, later wins:
//! built-in defaults < `config.toml` (or `--config PATH`) < `.env` in the
//! working directory < process environment < CLI flags.
//!
//! `Config` mirrors `config.toml.example` and rejects unknown keys;
//! [`Settings`] is the validated result the server runs on.

mod aliases;
pub mod clients;
mod env_compat;
mod keys;
pub mod ledger;
pub mod ledger_tls;
pub mod prices;
pub mod providers;
pub mod shared;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use keyrelay_layers::{
    extensions::Inbound,
    filter::ModelRules,
    parse::RouteDefaults,
    pool::{Affinity, KeySettings, ProviderOptions, Secret, Selection},
    provider::Provider,
};
use serde::{Deserialize, Deserializer, de};

use crate::cli::Cli;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub proxy: ProxyConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub routes: RoutesConfig,
    /// Model aliases: `[models."<alias>"] targets = ["provider/model", ...]`.
    pub models: BTreeMap<String, aliases::AliasConfig>,
    /// Client keys, each with its models, limits and budget.
    pub clients: Vec<clients::ClientConfig>,
    /// Prices over the shipped table: `[prices."provider/model"] input = ...`.
    pub prices: BTreeMap<String, prices::PriceConfig>,
    /// The durable store and the usage ledger's retention.
    pub ledger: ledger::LedgerConfig,
    /// State shared by replicas on Redis.
    pub shared: shared::SharedConfig,
}

/// The dialect routes (`/v1/messages`, `/v1/responses`, Gemini's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Where `/v1/messages` sends a model with no configured provider prefix.
    pub messages_default_provider: String,
    /// Where `/v1/responses` sends a model with no configured provider prefix.
    pub responses_default_provider: String,
    /// Where Gemini's routes send a model with no configured provider prefix.
    pub gemini_default_provider: String,
    /// How many Responses API response ids keep the key that made them.
    pub remembered_responses: usize,
    /// How long a response id keeps its key.
    pub remembered_response_ttl_secs: u64,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            messages_default_provider: "anthropic".to_owned(),
            responses_default_provider: "openai".to_owned(),
            gemini_default_provider: "gemini".to_owned(),
            remembered_responses: keyrelay_layers::pool::DEFAULT_REMEMBERED_RESPONSES,
            remembered_response_ttl_secs: keyrelay_layers::pool::DEFAULT_RESPONSE_TTL.as_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Requests in flight (streams until their last event) past which new
    /// ones get 503 with `Retry-After`; 0 means no limit. Env
    /// `MAX_CONCURRENT_REQUESTS`.
    pub max_concurrent_requests: usize,
    pub data_dir: String,
    pub state_save_interval_secs: u64,
    pub request_logging: bool,
    /// PEM certificate chain and private key: serve HTTPS (HTTP/1.1 and
    /// HTTP/2 by ALPN) instead of plain HTTP.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout_secs: 10,
            shutdown_grace_secs: 30,
            max_concurrent_requests: 1024,
            data_dir: "data".to_owned(),
            state_save_interval_secs: 30,
            request_logging: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub api_key: Option<ConfigSecret>,
    pub admin_api_key: Option<ConfigSecret>,
    pub global_timeout_secs: u64,
    pub stream_idle_timeout_secs: u64,
    pub max_cooldown_wait_secs: u64,
    pub models_cache_ttl_secs: u64,
    pub daily_reset_utc: String,
    pub metrics_auth: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            admin_api_key: None,
            global_timeout_secs: 600,
            stream_idle_timeout_secs: 120,
            max_cooldown_wait_secs: 60,
            models_cache_ttl_secs: 600,
            daily_reset_utc: "00:00".to_owned(),
            metrics_auth: "auto".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub api_base: Option<String>,
    pub api_keys: ConfigSecrets,
    pub selection: Option<String>,
    pub max_concurrent_per_key: usize,
    pub models: Vec<String>,
    pub ignore_models: Vec<String>,
    pub whitelist_models: Vec<String>,
    pub split_think_tags: bool,
    pub stream_usage: bool,
    /// Keys with settings of their own (`[[providers.<id>.keys]]`), before
    /// the plain `api_keys`.
    pub keys: Vec<KeyConfig>,
    /// Whether the provider serves OpenAI's Responses API itself (default:
    /// only the built-in `openai`): Responses requests then pass through.
    pub responses_api: Option<bool>,
    /// Distinct models learned from successful answers that may label
    /// metrics; beyond it, `other`.
    pub max_model_labels: usize,
    /// `session` (default): requests naming a session prefer the key that
    /// served it last; `none`: balanced by the strategy alone.
    pub affinity: Option<String>,
    /// How long a silent session keeps its key.
    pub affinity_ttl_secs: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            api_base: None,
            api_keys: ConfigSecrets::default(),
            selection: None,
            max_concurrent_per_key: 0,
            models: Vec::new(),
            ignore_models: Vec::new(),
            whitelist_models: Vec::new(),
            split_think_tags: false,
            stream_usage: true,
            responses_api: None,
            keys: Vec::new(),
            max_model_labels: keyrelay_layers::pool::DEFAULT_MAX_MODEL_LABELS,
            affinity: None,
            affinity_ttl_secs: keyrelay_layers::pool::DEFAULT_AFFINITY_TTL.as_secs(),
        }
    }
}

/// One `[[providers.<id>.keys]]` table: a key and how it is used.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key itself...
    pub key: Option<ConfigSecret>,
    /// ...or the variable (of `.env` or the environment) that holds it.
    pub key_env: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub models: Vec<String>,
    pub max_concurrent: Option<usize>,
    /// Requests per minute, tokens per minute, requests per day (none: no limit).
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
    /// USD the key may spend per `budget_period` (none: no budget).
    pub budget_usd: Option<f64>,
    /// `day`, `week`, `month` (default) or `total`, calendar periods in UTC.
    pub budget_period: Option<String>,
}

fn one() -> u32 {
    1
}

/// A secret as written in config: any scalar, kept as a string, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSecret(String);

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

struct ScalarVisitor;

impl de::Visitor<'_> for ScalarVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for ConfigSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(|s| Self(s.trim().to_owned()))
    }
}

/// A list of secrets: a sequence, or one string of comma-separated keys.
#[derive(Clone, Debug, Default)]
pub struct ConfigSecrets(Vec<ConfigSecret>);

impl<'de> Deserialize<'de> for ConfigSecrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            Many(Vec<ConfigSecret>),
            One(ConfigSecret),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::Many(list) => Self(list),
            OneOrMany::One(ConfigSecret(joined)) => {
                Self(joined.split(',').map(|k| ConfigSecret(k.trim().to_owned())).collect())
            }
        })
    }
}

/// Flags that override everything else.
#[derive(Debug, Default, serde::Serialize)]
struct CliOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_logging: Option<bool>,
}

/// Where configuration comes from; tests pass their own.
#[derive(Debug, Default)]
pub struct Sources {
    /// `--config PATH`: must exist. Without it `config.toml` in `working_dir`
    /// is read when present.
    pub config_path: Option<PathBuf>,
    pub working_dir: PathBuf,
    /// The process environment, e.g. `std::env::vars()`.
    pub env: Vec<(String, String)>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    /// `--enable-request-logging` (false: as config and env say).
    pub request_logging: bool,
}

impl Sources {
    pub fn from_cli(cli: &Cli) -> Self {
        Self {
            config_path: cli.config.clone(),
            working_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            host: cli.host.clone(),
            port: cli.port,
            data_dir: cli.data_dir.clone(),
            request_logging: cli.enable_request_logging,
        }
    }
}

impl Settings {
    /// `--tls-cert` and `--tls-key` (clap makes them go together) over
    /// whatever the config said.
    pub fn apply_cli_tls(&mut self, cli: &Cli) {
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            self.tls = Some(TlsFiles { cert: cert.clone(), key: key.clone() });
        }
    }
}

/// One provider, ready for the pool.
#[derive(Debug)]
pub struct ProviderSettings {
    pub provider: Provider,
    pub options: ProviderOptions,
    /// Each key with its settings, in config order (tables first).
    pub keys: Vec<(Secret, KeySettings)>,
    /// Named in config or the environment, not merely built in.
    pub configured: bool,
}

/// PEM files for inbound TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub proxy_key: Option<Secret>,
    pub global_timeout: Duration,
    pub models_cache_ttl: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Proxied requests in flight past which new ones are shed; 0: no limit.
    pub max_concurrent_requests: usize,
    /// Certificate chain and key files, when serving HTTPS.
    pub tls: Option<TlsFiles>,
    pub admin_key: Option<Secret>,
    pub stream_idle_timeout: Duration,
    /// A request waits for a cooling key only when it is back within this.
    pub max_cooldown_wait: Duration,
    /// Time after 00:00 UTC at which daily counters and cooldowns reset.
    pub daily_reset: Duration,
    /// Where the pool's state is kept across restarts.
    pub data_dir: PathBuf,
    pub state_save_interval: Duration,
    /// A directory per request under `data_dir/logs/requests`.
    pub request_logging: bool,
    /// `GET /metrics` without the proxy key.
    pub metrics_open: bool,
    pub providers: Vec<ProviderSettings>,
    /// Where the dialect routes send bare models.
    pub route_defaults: RouteDefaults,
    /// How many response ids keep their key, and for how long.
    pub remembered_responses: (usize, Duration),
    /// The configured client keys (digests only) and their policies.
    pub clients: Vec<(keyrelay_layers::client::KeyDigest, keyrelay_layers::client::ClientPolicy)>,
    /// USD per million tokens by `provider/model`: the shipped table with
    /// config's prices over it.
    pub prices: std::sync::Arc<keyrelay_layers::price::PriceTable>,
    /// The database (ledger, spend, runtime clients, pool state) and the
    /// ledger's retention.
    pub ledger: ledger::LedgerSettings,
    /// Redis, when replicas share their keys' state.
    pub shared: Option<shared::SharedSettings>,
    /// Things worth telling the operator at start (never secrets).
    pub notes: Vec<String>,
}

/// A configuration that cannot run: the message names the key and where it
/// came from.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub fn load(sources: Sources) -> Result<Settings, ConfigError> {
    let dotenv_path = sources.working_dir.join(".env");
    let dotenv = read_dotenv(&dotenv_path)?;
    let vars = env_compat::combine(dotenv, sources.env);
    // Whatever goes wrong, the message must not echo a secret.
    let secrets: Vec<&str> = vars
        .iter()
        .filter(|v| v.name.trim_start_matches("KEYRELAY_").contains("KEY") && v.value.trim().len() >= 4)
        .map(|v| v.value.trim())
        .collect();
    let redact = |message: String| secrets.iter().fold(message, |m, s| m.replace(s, "<redacted>"));

    let config_file = match &sources.config_path {
        Some(path) if !path.exists() => {
            return Err(ConfigError(format!("config file {} does not exist (--config)", path.display())));
        }
        Some(path) => Some(path.clone()),
        None => Some(sources.working_dir.join("config.toml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::new();
    if let Some(path) = &config_file {
        figment = figment.merge(Toml::file_exact(path));
    }
    use env_compat::{Origin, compat, prefixed};
    let overrides = CliOverrides {
        host: sources.host,
        port: sources.port,
        data_dir: sources.data_dir.map(|d| d.to_string_lossy().into_owned()),
        request_logging: sources.request_logging.then_some(true),
    };
    let figment = figment
        .admerge(compat(&vars, Origin::DotEnv))
        .merge(prefixed(&vars, Origin::DotEnv))
        .admerge(compat(&vars, Origin::Process))
        .merge(prefixed(&vars, Origin::Process))
        .merge(Serialized::default("server", overrides));
    let config: Config = figment.extract().map_err(|err| {
        let all: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        ConfigError(redact(format!("invalid configuration: {}", all.join("; "))))
    })?;
    let key_sources = keys::KeySources::from_vars(&vars)?;
    validate(config, &env_compat::key_only_providers(&vars), &key_sources, &sources.working_dir)
        .map_err(|ConfigError(m)| ConfigError(redact(m)))
}

fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let iter =
        dotenvy::from_path_iter(path).map_err(|err| ConfigError(format!("cannot read {}: {err}", path.display())))?;
    iter.enumerate()
        .map(|(i, item)| {
            // dotenvy's parse errors quote the offending line, which may
            // hold a key: name the entry instead.
            item.map_err(|_| {
                ConfigError(format!("{}: entry #{} cannot be parsed as NAME=value", path.display(), i + 1))
            })
        })
        .collect()
}

fn validate(
    config: Config,
    key_only: &BTreeSet<String>,
    key_sources: &keys::KeySources,
    working_dir: &Path,
) -> Result<Settings, ConfigError> {
    let server = &config.server;
    let host = match server.host.trim() {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        host => host.trim_matches(['[', ']']).parse().map_err(|_| {
            ConfigError(format!("server.host: `{host}` is not an IP address (use e.g. 127.0.0.1, 0.0.0.0 or ::1)"))
        })?,
    };
    positive("proxy.global_timeout_secs (GLOBAL_TIMEOUT)", config.proxy.global_timeout_secs)?;
    positive("server.header_read_timeout_secs", server.header_read_timeout_secs)?;
    positive("proxy.stream_idle_timeout_secs", config.proxy.stream_idle_timeout_secs)?;
    positive("server.state_save_interval_secs", server.state_save_interval_secs)?;
    positive("server.max_body_bytes", server.max_body_bytes as u64)?;
    if server.max_header_bytes < 8192 {
        return Err(ConfigError("server.max_header_bytes: must be at least 8192".to_owned()));
    }
    let tls = match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: PathBuf::from(cert), key: PathBuf::from(key) }),
        (None, None) => None,
        _ => {
            return Err(ConfigError(
                "server.tls_cert and server.tls_key (--tls-cert, --tls-key) go together: give both or neither"
                    .to_owned(),
            ));
        }
    };

    let mut notes = Vec::new();
    let mut providers = Vec::new();
    let mut named: BTreeMap<String, ProviderConfig> = config.providers;
    for id in named.keys() {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ConfigError(format!(
                "providers.{id}: a provider id is lowercase letters, digits, `_` and `-`"
            )));
        }
    }
    for id in key_sources.llm_providers() {
        let builtin = providers::BUILTINS.iter().any(|b| b.id == id);
        if !builtin && named.get(id).is_none_or(|p| p.api_base.is_none()) {
            let upper = id.to_ascii_uppercase();
            return Err(ConfigError(format!(
                "LLM_KEYS: provider `{id}` is not built in: set {upper}_API_BASE (or providers.{id}.api_base)"
            )));
        }
    }
    for builtin in providers::BUILTINS {
        let config = named.remove(builtin.id);
        let configured = config.is_some() || key_sources.llm_providers().any(|p| p == builtin.id);
        let config = config.unwrap_or_default();
        let api_base = config.api_base.as_deref().unwrap_or(builtin.api_base);
        let provider = Provider::new(builtin.id, api_base, builtin.dialect)
            .map_err(|err| ConfigError(format!("providers.{}.api_base: {err}", builtin.id)))?;
        providers.push(provider_settings(builtin.id, provider, config, configured, key_sources)?);
    }
    for (id, config) in named {
        let Some(api_base) = config.api_base.clone() else {
            let upper = id.to_ascii_uppercase();
            if key_only.contains(&id) {
                notes.push(format!(
                    "ignoring {upper}_API_KEY*: `{id}` is not a known provider (set {upper}_API_BASE to use it as an OpenAI-compatible one)"
                ));
                continue;
            }
            return Err(ConfigError(format!(
                "providers.{id}: `{id}` is not a built-in provider, so it needs api_base (or {upper}_API_BASE)"
            )));
        };
        let provider = Provider::openai_compatible(&id, &api_base)
            .map_err(|err| ConfigError(format!("providers.{id}.api_base: {err}")))?;
        if provider.api_base().had_userinfo() {
            notes.push(format!(
                "ignoring the credentials written into providers.{id}.api_base: keyrelay sends the provider key"
            ));
        }
        providers.push(provider_settings(&id, provider, config, true, key_sources)?);
    }

    // Relative to the working directory, like `.env` and `config.toml`.
    let data_dir = working_dir.join(&server.data_dir);
    let ledger = ledger::settings(&config.ledger, working_dir, &data_dir)?;
    let shared = shared::settings(&config.shared)?;

    let proxy_key = config.proxy.api_key.filter(|k| !k.0.is_empty()).map(|k| Secret::new(k.0));
    if proxy_key.is_none() && !host.is_loopback() {
        return Err(ConfigError(format!(
            "refusing to listen on {host} without a proxy key: anyone who can reach it could spend your provider keys. \
             Set PROXY_API_KEY (or proxy.api_key), or listen on 127.0.0.1"
        )));
    }
    if proxy_key.is_none() {
        notes.push(format!(
            "no PROXY_API_KEY set: clients on this machine need no key (allowed on loopback {host} only)"
        ));
    }

    let clients = clients::configured(&config.clients, key_sources, proxy_key.as_ref().map(Secret::expose))?;
    Ok(Settings {
        clients,
        listen: SocketAddr::new(host, server.port),
        proxy_key,
        global_timeout: Duration::from_secs(config.proxy.global_timeout_secs),
        models_cache_ttl: Duration::from_secs(config.proxy.models_cache_ttl_secs),
        max_body_bytes: server.max_body_bytes,
        max_header_bytes: server.max_header_bytes,
        header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
        shutdown_grace: Duration::from_secs(server.shutdown_grace_secs),
        max_concurrent_requests: server.max_concurrent_requests,
        tls,
        admin_key: config.proxy.admin_api_key.filter(|k| !k.0.is_empty()).map(|k| Secret::new(k.0)),
        stream_idle_timeout: Duration::from_secs(config.proxy.stream_idle_timeout_secs),
        max_cooldown_wait: Duration::from_secs(config.proxy.max_cooldown_wait_secs),
        daily_reset: parse_time_of_day(&config.proxy.daily_reset_utc)?,
        data_dir,
        state_save_interval: Duration::from_secs(server.state_save_interval_secs),
        request_logging: server.request_logging,
        metrics_open: match config.proxy.metrics_auth.as_str() {
            "auto" => host.is_loopback(),
            "open" => true,
            "required" => false,
            other => {
                return Err(ConfigError(format!(
                    "proxy.metrics_auth: `{other}` is not one of auto (open on loopback, the proxy key otherwise), open, required"
                )));
            }
        },
        route_defaults: route_defaults(&config.routes, &providers, key_sources)?
            .with_aliases(aliases::aliases(&config.models, &providers)?),
        remembered_responses: (
            config.routes.remembered_responses,
            Duration::from_secs(config.routes.remembered_response_ttl_secs),
        ),
        prices: prices::price_table(&config.prices)?,
        providers,
        ledger,
        shared,
        notes,
    })
}

/// The default providers of the dialect routes, each a known provider.
fn route_defaults(
    routes: &RoutesConfig,
    providers: &[ProviderSettings],
    key_sources: &keys::KeySources,
) -> Result<RouteDefaults, ConfigError> {
    let mut defaults = RouteDefaults::default();
    // A bare model an `LLM_KEYS` key is bound to goes to that key's provider.
    for (model, provider) in key_sources.llm_models() {
        defaults = defaults.with_model(model, provider);
    }
    for (key, inbound, id) in [
        ("messages_default_provider", Inbound::Anthropic, &routes.messages_default_provider),
        ("responses_default_provider", Inbound::Responses, &routes.responses_default_provider),
        ("gemini_default_provider", Inbound::Gemini, &routes.gemini_default_provider),
    ] {
        if !providers.iter().any(|p| p.provider.id().as_str() == id) {
            return Err(ConfigError(format!("routes.{key}: `{id}` is not a configured or built-in provider")));
        }
        defaults = defaults.with(inbound, id);
    }
    Ok(defaults)
}

/// `HH:MM` (UTC) as the time since midnight.
fn parse_time_of_day(value: &str) -> Result<Duration, ConfigError> {
    let parsed = value.trim().split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.parse::<u64>().ok()?, m.parse::<u64>().ok()?);
        (h < 24 && m < 60).then(|| Duration::from_secs(h * 3600 + m * 60))
    });
    parsed.ok_or_else(|| {
        ConfigError(format!("proxy.daily_reset_utc: `{value}` is not a time of day like 00:00 or 07:30"))
    })
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 { Err(ConfigError(format!("{key}: must be greater than 0"))) } else { Ok(()) }
}

fn provider_settings(
    id: &str,
    provider: Provider,
    config: ProviderConfig,
    configured: bool,
    key_sources: &keys::KeySources,
) -> Result<ProviderSettings, ConfigError> {
    let selection = match config.selection.as_deref() {
        None => Selection::default(),
        Some(name) => name.parse().map_err(|err| ConfigError(format!("providers.{id}.selection: {err}")))?,
    };
    let affinity = match config.affinity.as_deref() {
        None => Affinity::default(),
        Some(name) => name.parse().map_err(|err| ConfigError(format!("providers.{id}.affinity: {err}")))?,
    };
    positive(&format!("providers.{id}.affinity_ttl_secs"), config.affinity_ttl_secs)?;
    let options = ProviderOptions::new(selection)
        .max_concurrent_per_key(config.max_concurrent_per_key)
        .max_model_labels(config.max_model_labels)
        .affinity(affinity)
        .affinity_ttl(Duration::from_secs(config.affinity_ttl_secs));
    let keys = key_sources.keys_of(id, config.keys, config.api_keys)?;
    let rules = ModelRules::new(&config.ignore_models, &config.whitelist_models);
    let provider = provider
        .with_models(config.models)
        .with_model_rules(rules)
        .with_think_tags_split(config.split_think_tags)
        .with_stream_usage(config.stream_usage);
    // OpenAI's own API serves the Responses API; compatible servers say so.
    let responses_api = config.responses_api.unwrap_or(id == "openai");
    let provider = provider.with_responses_api(responses_api);
    Ok(ProviderSettings { provider, options, keys, configured })
}

#[cfg(test)]
mod tests;
