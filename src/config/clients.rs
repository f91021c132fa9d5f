//! `[[clients]]`: client keys from the configuration, each with a name,
//! its models, limits and budget (see `keyrelay_layers::client`).

use std::collections::BTreeSet;

use keyrelay_layers::{
    budget::{Budget, BudgetPeriod},
    client::{ClientPolicy, KeyDigest, key_digest},
    ledger::DEFAULT_CLIENT,
};
use serde::{Deserialize, Serialize};

use super::{ConfigError, ConfigSecret, keys::KeySources};

/// One `[[clients]]` table: a name, the key (or the variable `key_env`
/// that holds it), and the [`ClientLimits`] fields. (Not a flattened
/// `ClientLimits`: serde cannot deny unknown fields through `flatten`.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    pub key: Option<ConfigSecret>,
    pub key_env: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
    pub budget_usd: Option<f64>,
    pub budget_period: Option<String>,
}

impl ClientConfig {
    fn limits(&self) -> ClientLimits {
        ClientLimits {
            models: self.models.clone(),
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel: self.max_parallel,
            budget_usd: self.budget_usd,
            budget_period: self.budget_period.clone(),
        }
    }
}

/// What a client may do: shared by `[[clients]]` and the body of
/// `POST /v1/admin/clients` (and stored as JSON for runtime clients).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimits {
    /// Globs over `provider/model`, bare models and aliases; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
}

impl ClientLimits {
    /// The policy of client `name`, or what is wrong with these limits
    /// (`at` names where they came from).
    pub fn policy(&self, name: &str, at: &str) -> Result<ClientPolicy, String> {
        check_name(name).map_err(|why| format!("{at}.name: {why}"))?;
        let mut policy = ClientPolicy::new(name).models(&self.models);
        for (field, value) in [("rpm", self.rpm), ("tpm", self.tpm), ("max_parallel", self.max_parallel)] {
            if value == Some(0) {
                return Err(format!("{at}.{field}: must be at least 1 (leave it out for no limit)"));
            }
        }
        if let Some(rpm) = self.rpm {
            policy = policy.rpm(rpm);
        }
        if let Some(tpm) = self.tpm {
            policy = policy.tpm(tpm);
        }
        if let Some(max) = self.max_parallel {
            policy = policy.max_parallel(max);
        }
        let period = match &self.budget_period {
            Some(period) => Some(period.parse::<BudgetPeriod>().map_err(|why| format!("{at}.budget_period: {why}"))?),
            None => None,
        };
        match (self.budget_usd, period) {
            (Some(usd), period) if usd.is_finite() && usd >= 0.0 => {
                policy = policy.budget(Budget::new(usd, period.unwrap_or_default()));
            }
            (Some(_), _) => return Err(format!("{at}.budget_usd: must be a number of dollars, 0 or more")),
            (None, Some(_)) => return Err(format!("{at}.budget_period: needs budget_usd")),
            (None, None) => {}
        }
        Ok(policy)
    }
}

/// A client name: what logs, metrics and reports show, and the admin
/// route's path segment.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a client name is 1 to 64 characters".to_owned());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("`{name}`: a client name is letters, digits, `-`, `_` and `.`"));
    }
    if name == DEFAULT_CLIENT || name == "none" {
        return Err(format!("`{name}` is reserved (it names requests made with the proxy key)"));
    }
    Ok(())
}

/// The configured clients, each with its key's digest.
pub fn configured(
    clients: &[ClientConfig],
    key_sources: &KeySources,
    proxy_key: Option<&str>,
) -> Result<Vec<(KeyDigest, ClientPolicy)>, ConfigError> {
    let (mut names, mut digests) = (BTreeSet::new(), BTreeSet::new());
    let mut out = Vec::with_capacity(clients.len());
    for (i, client) in clients.iter().enumerate() {
        let at = format!("clients[{i}]");
        let policy = client.limits().policy(&client.name, &at).map_err(ConfigError)?;
        let key = match (&client.key, &client.key_env) {
            (Some(key), None) => key.0.trim().to_owned(),
            (None, Some(name)) => key_sources
                .var(name)
                .ok_or_else(|| ConfigError(format!("{at}.key_env: variable {name} is not set")))?
                .to_owned(),
            _ => return Err(ConfigError(format!("{at}: give `key` or `key_env`, one of them"))),
        };
        if key.len() < 16 {
            return Err(ConfigError(format!("{at}.key: a client key must be at least 16 characters")));
        }
        if proxy_key == Some(key.as_str()) {
            return Err(ConfigError(format!("{at}: a client key cannot be the proxy key")));
        }
        if !names.insert(client.name.clone()) {
            return Err(ConfigError(format!("{at}.name: `{}` is named twice", client.name)));
        }
        let digest = key_digest(&key);
        if !digests.insert(digest) {
            return Err(ConfigError(format!("{at}: its key is another client's too")));
        }
        out.push((digest, policy));
    }
    Ok(out)
}
