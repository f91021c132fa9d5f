//! `[models."<alias>"]`: one model name for clients, tried at each target
//! in turn (`targets = ["openai/gpt-4o", "openrouter/openai/gpt-4o"]`).
//!
//! Each target is `provider/model` of a configured or built-in provider
//! (split at the first `/`, as requests are). An alias may not look like
//! `provider/model` of a provider: that name already routes to it, and
//! shadowing it would send a client who names a provider somewhere else.
//! A bare alias may share its name with an upstream model (`gpt-4o` for
//! `openai/gpt-4o` and its mirrors): that is the usual way to add a
//! fallback to a model clients already send.

use std::collections::BTreeMap;

use keyrelay_layers::parse::{AliasTarget, Aliases};
use serde::Deserialize;

use super::{ConfigError, ProviderSettings};

/// One `[models."<alias>"]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// `provider/model`, in the order they are tried.
    pub targets: Vec<String>,
}

/// Checks every alias against the providers and builds the library's map.
pub fn aliases(models: &BTreeMap<String, AliasConfig>, providers: &[ProviderSettings]) -> Result<Aliases, ConfigError> {
    let known = |id: &str| providers.iter().any(|p| p.provider.id().as_str() == id);
    let names = || providers.iter().map(|p| p.provider.id().as_str()).collect::<Vec<_>>().join(", ");
    let mut aliases = Aliases::new();
    for (alias, config) in models {
        if alias.trim().is_empty() {
            return Err(ConfigError("models: an alias needs a name".to_owned()));
        }
        if let Some((prefix, _)) = alias.split_once('/')
            && known(prefix)
        {
            return Err(ConfigError(format!(
                "models.\"{alias}\": an alias may not look like `provider/model` of provider `{prefix}`, which that \
                 name already reaches; choose another name"
            )));
        }
        if config.targets.is_empty() {
            return Err(ConfigError(format!(
                "models.\"{alias}\".targets: give at least one target, as `provider/model`"
            )));
        }
        let mut targets = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            let split = target.trim().split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty());
            let Some((provider, model)) = split else {
                return Err(ConfigError(format!(
                    "models.\"{alias}\".targets: `{target}` is not `provider/model` (e.g. `openai/gpt-4o`)"
                )));
            };
            if !known(provider) {
                return Err(ConfigError(format!(
                    "models.\"{alias}\".targets: `{target}` names provider `{provider}`, which is not configured or \
                     built in (known: {})",
                    names()
                )));
            }
            targets.push(AliasTarget::new(provider, model));
        }
        aliases = aliases.with(alias, targets);
    }
    Ok(aliases)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::{Sources, load};

    fn load_toml(toml: &str, env: &[(&str, &str)]) -> Result<super::super::Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.toml"), toml).unwrap();
        load(Sources {
            working_dir: dir.path().to_path_buf(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Sources::default()
        })
        .map_err(|err| err.to_string())
    }

    #[test]
    fn aliases_reach_the_route_defaults_in_order() {
        let toml = r#"
            [models."gpt-4o"]
            targets = ["openai/gpt-4o", "openrouter/openai/gpt-4o"]
            [models.fast]
            targets = ["local/llama-3", "groq/llama-3.3-70b-versatile"]
        "#;
        let s = load_toml(toml, &[("LOCAL_API_BASE", "http://127.0.0.1:11434/v1")]).unwrap();
        let aliases = s.route_defaults.aliases();
        let targets: Vec<_> =
            aliases.get("gpt-4o").unwrap().iter().map(|t| format!("{}/{}", t.provider, t.model)).collect();
        assert_eq!(targets, ["openai/gpt-4o", "openrouter/openai/gpt-4o"]);
        assert_eq!(aliases.get("fast").unwrap()[0].provider.as_str(), "local");
    }

    #[test]
    fn bad_aliases_are_refused_with_the_reason() {
        for (toml, expected) in [
            (
                r#"[models."openai/gpt-4o"]
                targets = ["openrouter/openai/gpt-4o"]"#,
                "may not look like `provider/model` of provider `openai`",
            ),
            (
                r#"[models.fast]
                targets = []"#,
                "at least one target",
            ),
            (
                r#"[models.fast]
                targets = ["gpt-4o"]"#,
                "`gpt-4o` is not `provider/model`",
            ),
            (
                r#"[models.fast]
                targets = ["nowhere/gpt-4o"]"#,
                "provider `nowhere`, which is not configured or built in",
            ),
            (
                r#"[models.fast]
                target = ["openai/gpt-4o"]"#,
                "unknown field",
            ),
        ] {
            let message = load_toml(toml, &[]).unwrap_err();
            assert!(message.contains(expected), "{toml}: {message}");
        }
        // A slash is fine when its prefix is no provider.
        assert!(load_toml("[models.\"team/fast\"]\ntargets = [\"openai/gpt-4o\"]", &[]).is_ok());
    }
}
