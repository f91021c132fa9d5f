//! `[shared]`: the state several replicas share on Redis (or Valkey).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`); env
    /// `REDIS_URL`. Unset: every replica keeps its own state.
    pub redis_url: Option<String>,
    /// What every key keyrelay writes in Redis starts with.
    pub key_prefix: String,
    /// The longest any Redis call may take before the replica goes on
    /// with its own state.
    pub call_timeout_ms: u64,
    /// How long a concurrency slot is held for a replica that stopped
    /// renewing it (one that died): renewed every third of it while the
    /// request runs.
    pub slot_lease_secs: u64,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self { redis_url: None, key_prefix: "keyrelay:".to_owned(), call_timeout_ms: 250, slot_lease_secs: 30 }
    }
}

/// The validated `[shared]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// Holds a password, maybe: never shown (see `Debug`).
    pub redis_url: String,
    pub key_prefix: String,
    pub call_timeout: Duration,
    pub slot_lease: Duration,
}

impl std::fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSettings")
            .field("redis_url", &"[redacted]")
            .field("key_prefix", &self.key_prefix)
            .field("call_timeout", &self.call_timeout)
            .field("slot_lease", &self.slot_lease)
            .finish()
    }
}

pub fn settings(config: &SharedConfig) -> Result<Option<SharedSettings>, ConfigError> {
    let Some(url) = config.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("valkey://")) {
        return Err(ConfigError("shared.redis_url (REDIS_URL): give a redis:// or rediss:// URL".to_owned()));
    }
    if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}', ' ']) {
        return Err(ConfigError(
            "shared.key_prefix: a non-empty prefix without braces or spaces (braces are keyrelay's hash tags)"
                .to_owned(),
        ));
    }
    if config.call_timeout_ms == 0 {
        return Err(ConfigError("shared.call_timeout_ms: must be at least 1".to_owned()));
    }
    if config.slot_lease_secs == 0 {
        return Err(ConfigError("shared.slot_lease_secs: must be at least 1".to_owned()));
    }
    Ok(Some(SharedSettings {
        redis_url: url.replacen("valkey://", "redis://", 1),
        key_prefix: config.key_prefix.clone(),
        call_timeout: Duration::from_millis(config.call_timeout_ms),
        slot_lease: Duration::from_secs(config.slot_lease_secs),
    }))
}
