//! Where a provider's keys come from, with their settings: the
//! `[[providers.<id>.keys]]` tables (a key, or the variable `key_env` that
//! holds it), the plain `api_keys` list and `<P>_API_KEY*` variables, and
//! `LLM_KEYS`, the round-robin proxy's JSON list of
//! `{"api_key", "model", "provider"}` whose keys are each bound to one
//! model.

use std::collections::BTreeMap;

use keyrelay_layers::{
    budget::{Budget, BudgetPeriod},
    pool::{KeySettings, Secret},
};
use serde::Deserialize;

use super::{ConfigError, ConfigSecrets, KeyConfig, env_compat::Var};

/// One `LLM_KEYS` entry: a key of `provider` bound to `model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmKey {
    pub provider: String,
    pub model: String,
    secret: String,
}

#[derive(Deserialize)]
struct LlmKeyEntry {
    api_key: String,
    model: String,
    #[serde(default)]
    provider: Option<String>,
}

/// The variables keys may be read from (`key_env`), and the `LLM_KEYS`
/// entries.
#[derive(Debug, Default)]
pub struct KeySources {
    vars: BTreeMap<String, String>,
    llm_keys: Vec<LlmKey>,
}

impl KeySources {
    /// Reads `LLM_KEYS` (a JSON array) among `vars`; a malformed list is
    /// an error that names the entry, never the key.
    pub fn from_vars(vars: &[Var]) -> Result<Self, ConfigError> {
        let mut llm_keys = Vec::new();
        if let Some(var) = vars.iter().find(|v| v.name == "LLM_KEYS").filter(|v| !v.value.trim().is_empty()) {
            let entries: Vec<serde_json::Value> = serde_json::from_str(&var.value).map_err(|_| {
                ConfigError("LLM_KEYS: not a JSON array of {\"api_key\", \"model\", \"provider\"} objects".to_owned())
            })?;
            for (i, entry) in entries.into_iter().enumerate() {
                let entry: LlmKeyEntry = serde_json::from_value(entry).map_err(|_| {
                    ConfigError(format!(
                        "LLM_KEYS: entry #{} needs string `api_key` and `model` (and `provider`)",
                        i + 1
                    ))
                })?;
                // Without `provider`, the model names it (`openai/gpt-4o`).
                let (provider, model) = match entry.provider {
                    Some(provider) => (provider.trim().to_ascii_lowercase(), entry.model.trim().to_owned()),
                    None => match entry.model.split_once('/') {
                        Some((p, m)) if !p.is_empty() && !m.is_empty() => (p.to_ascii_lowercase(), m.to_owned()),
                        _ => {
                            return Err(ConfigError(format!(
                                "LLM_KEYS: entry #{} has no `provider`, and its model is not `provider/model`",
                                i + 1
                            )));
                        }
                    },
                };
                if provider.is_empty() || model.is_empty() || entry.api_key.trim().is_empty() {
                    return Err(ConfigError(format!("LLM_KEYS: entry #{} has an empty field", i + 1)));
                }
                llm_keys.push(LlmKey { provider, model, secret: entry.api_key.trim().to_owned() });
            }
        }
        let vars = vars.iter().map(|v| (v.name.clone(), v.value.clone())).collect();
        Ok(Self { vars, llm_keys })
    }

    /// The providers `LLM_KEYS` names.
    /// The value of variable `name`, trimmed, when it is set and not empty.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn llm_providers(&self) -> impl Iterator<Item = &str> {
        self.llm_keys.iter().map(|k| k.provider.as_str())
    }

    /// `(model, provider)` of every `LLM_KEYS` key: a bare model of theirs
    /// goes to that provider.
    pub fn llm_models(&self) -> impl Iterator<Item = (&str, &str)> {
        self.llm_keys.iter().map(|k| (k.model.as_str(), k.provider.as_str()))
    }

    /// Provider `id`'s keys, in order: its key tables, its `api_keys`
    /// (and `<P>_API_KEY*` variables), its `LLM_KEYS` entries.
    pub fn keys_of(
        &self,
        id: &str,
        tables: Vec<KeyConfig>,
        plain: ConfigSecrets,
    ) -> Result<Vec<(Secret, KeySettings)>, ConfigError> {
        let mut keys = Vec::new();
        for (i, table) in tables.into_iter().enumerate() {
            let at = format!("providers.{id}.keys[{i}]");
            let secret = match (table.key, table.key_env) {
                (Some(key), None) => key.0,
                (None, Some(name)) => match self.vars.get(&name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                    Some(value) => value.to_owned(),
                    None => return Err(ConfigError(format!("{at}.key_env: variable {name} is not set"))),
                },
                _ => return Err(ConfigError(format!("{at}: give `key` or `key_env`, one of them"))),
            };
            if secret.is_empty() {
                return Err(ConfigError(format!("{at}.key: empty")));
            }
            let mut settings = KeySettings::new().weight(table.weight).priority(table.priority).models(&table.models);
            if let Some(cap) = table.max_concurrent {
                settings = settings.max_concurrent(cap);
            }
            settings = settings.rpm(table.rpm.unwrap_or(0)).tpm(table.tpm.unwrap_or(0)).rpd(table.rpd.unwrap_or(0));
            if let Some(budget) = budget(&at, table.budget_usd, table.budget_period.as_deref())? {
                settings = settings.budget(budget);
            }
            keys.push((Secret::new(secret), settings));
        }
        for key in plain.0.into_iter().filter(|k| !k.0.is_empty()) {
            keys.push((Secret::new(key.0), KeySettings::default()));
        }
        for llm in self.llm_keys.iter().filter(|k| k.provider == id) {
            let settings = KeySettings::new().models(std::slice::from_ref(&llm.model));
            keys.push((Secret::new(llm.secret.as_str()), settings));
        }
        Ok(keys)
    }
}

/// A key table's budget: `budget_usd` (above 0) per `budget_period`
/// (default `month`); errors name the table (`at`).
fn budget(at: &str, usd: Option<f64>, period: Option<&str>) -> Result<Option<Budget>, ConfigError> {
    let Some(usd) = usd else {
        return match period {
            Some(_) => Err(ConfigError(format!("{at}.budget_period: set budget_usd too (the budget in USD)"))),
            None => Ok(None),
        };
    };
    if !(usd.is_finite() && usd > 0.0) {
        return Err(ConfigError(format!("{at}.budget_usd: {usd} is not an amount above 0")));
    }
    let period = match period {
        None => BudgetPeriod::default(),
        Some(period) => period
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|err| ConfigError(format!("{at}.budget_period: {err}")))?,
    };
    Ok(Some(Budget::new(usd, period)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(json: serde_json::Value) -> KeyConfig {
        serde_json::from_value(json).unwrap()
    }

    fn keys(tables: Vec<KeyConfig>) -> Result<Vec<(Secret, KeySettings)>, ConfigError> {
        KeySources::default().keys_of("openai", tables, ConfigSecrets::default())
    }

    #[test]
    fn a_key_table_may_set_a_budget_per_calendar_period() {
        let parsed = keys(vec![
            table(serde_json::json!({"key": "sk-a", "budget_usd": 5, "budget_period": "day"})),
            table(serde_json::json!({"key": "sk-b", "budget_usd": 20.5})),
            table(serde_json::json!({"key": "sk-c"})),
        ])
        .unwrap();
        assert_eq!(parsed[0].1.budget, Some(Budget::new(5.0, BudgetPeriod::Day)));
        assert_eq!(parsed[1].1.budget, Some(Budget::new(20.5, BudgetPeriod::Month)), "month by default");
        assert_eq!(parsed[2].1.budget, None);
    }

    #[test]
    fn a_bad_budget_names_the_key_table_never_the_key() {
        let message = |json| keys(vec![table(json)]).unwrap_err().to_string();
        let bad_period = message(serde_json::json!({"key": "sk-secret", "budget_usd": 5, "budget_period": "year"}));
        assert!(bad_period.contains("providers.openai.keys[0].budget_period"), "{bad_period}");
        assert!(bad_period.contains("day, week, month or total") && !bad_period.contains("sk-secret"), "{bad_period}");
        for usd in [0.0, -1.0] {
            let zero = message(serde_json::json!({"key": "sk-secret", "budget_usd": usd}));
            assert!(zero.contains("providers.openai.keys[0].budget_usd"), "{zero}");
        }
        let alone = message(serde_json::json!({"key": "sk-secret", "budget_period": "week"}));
        assert!(alone.contains("set budget_usd too"), "{alone}");
    }
}
