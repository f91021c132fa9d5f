//! Environment variables as figment providers, in the conventions of
//! existing key-rotating proxies' `.env` files plus `KEYRELAY_<SECTION>__<KEY>`.
//!
//! - `PROXY_API_KEY` -> `proxy.api_key`; `GLOBAL_TIMEOUT` -> `proxy.global_timeout_secs`
//! - `REDIS_URL` -> `shared.redis_url`
//! - `MAX_CONCURRENT_REQUESTS` -> `server.max_concurrent_requests` (not to be
//!   confused with `MAX_CONCURRENT_REQUESTS_PER_KEY_<P>`, below)
//! - `MAX_CONCURRENT_REQUESTS_PER_KEY_<P>` -> `providers.<p>.max_concurrent_per_key`
//! - `<P>_API_KEY`, `<P>_API_KEY_<ANY>` -> `providers.<p>.api_keys` (appended)
//! - `<P>_API_BASE` -> `providers.<p>.api_base`
//! - `KEYRELAY_SERVER__PORT=9000` -> `server.port`, and so on for any key
//!
//! Values are kept apart by origin (`.env` file or process environment) so
//! that an error names where the bad value came from.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use figment::{
    Metadata, Profile, Provider,
    value::{Dict, Map, Value},
};

const PREFIX: &str = "KEYRELAY_";

/// Where a variable's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    DotEnv,
    Process,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Self::DotEnv => ".env file",
            Self::Process => "process environment",
        }
    }
}

/// One variable after `.env` and process environment were combined: the
/// process environment wins per name.
#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub value: String,
    pub origin: Origin,
}

pub fn combine(dotenv: Vec<(String, String)>, process: Vec<(String, String)>) -> Vec<Var> {
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    for (origin, list) in [(Origin::DotEnv, dotenv), (Origin::Process, process)] {
        for (name, value) in list {
            vars.insert(name.clone(), Var { name, value, origin });
        }
    }
    vars.into_values().collect()
}

/// What a compatibility variable sets.
#[derive(Debug, PartialEq, Eq)]
enum Compat {
    ProxyKey,
    GlobalTimeout,
    MaxConcurrentRequests,
    ProviderKey(String),
    ProviderBase(String),
    AdminKey,
    MaxConcurrentPerKey(String),
    IgnoreModels(String),
    WhitelistModels(String),
    RedisUrl,
}

fn provider_id(prefix: &str) -> Option<String> {
    let valid = !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !prefix.starts_with('_')
        && !prefix.ends_with('_')
        && !matches!(prefix, "PROXY" | "ADMIN")
        && !prefix.starts_with("KEYRELAY");
    valid.then(|| prefix.to_ascii_lowercase())
}

fn classify(name: &str) -> Option<Compat> {
    match name {
        "PROXY_API_KEY" => return Some(Compat::ProxyKey),
        "GLOBAL_TIMEOUT" => return Some(Compat::GlobalTimeout),
        // Matched whole, so the per-key variables below never land here.
        "MAX_CONCURRENT_REQUESTS" => return Some(Compat::MaxConcurrentRequests),
        "ADMIN_API_KEY" => return Some(Compat::AdminKey),
        "REDIS_URL" => return Some(Compat::RedisUrl),
        _ => {}
    }
    if let Some(provider) = name.strip_prefix("MAX_CONCURRENT_REQUESTS_PER_KEY_") {
        return provider_id(provider).map(Compat::MaxConcurrentPerKey);
    }
    if let Some(provider) = name.strip_prefix("IGNORE_MODELS_") {
        return provider_id(provider).map(Compat::IgnoreModels);
    }
    if let Some(provider) = name.strip_prefix("WHITELIST_MODELS_") {
        return provider_id(provider).map(Compat::WhitelistModels);
    }
    if let Some(prefix) = name.strip_suffix("_API_BASE") {
        return provider_id(prefix).map(Compat::ProviderBase);
    }
    let at = name.find("_API_KEY")?;
    let rest = &name[at + "_API_KEY".len()..];
    if !(rest.is_empty() || (rest.len() > 1 && rest.starts_with('_'))) {
        return None;
    }
    provider_id(&name[..at]).map(Compat::ProviderKey)
}

/// `a, b*,c` as a list of patterns (spaces around commas trimmed).
fn globs(value: &str) -> Value {
    let list: Vec<Value> =
        value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| Value::from(p.to_owned())).collect();
    Value::from(list)
}

/// `OPENAI_API_KEY` before `_1`, `_2` before `_10`, then the rest by name.
fn key_order(a: &str, b: &str) -> Ordering {
    let number = |s: &str| s.rsplit('_').next().and_then(|n| n.parse::<u64>().ok());
    let bare = |s: &str| s.ends_with("_API_KEY");
    bare(b).cmp(&bare(a)).then_with(|| match (number(a), number(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    })
}

/// A figment provider over a set of variables, which interpolates key paths
/// back to variable names in error messages.
#[derive(Debug)]
pub struct VarsProvider {
    name: String,
    dict: Dict,
    var_names: Arc<BTreeMap<String, String>>,
}

impl Provider for VarsProvider {
    fn metadata(&self) -> Metadata {
        let var_names = self.var_names.clone();
        Metadata::named(self.name.clone()).interpolater(move |_: &Profile, keys: &[&str]| {
            let path = keys.join(".");
            var_names.get(&path).cloned().unwrap_or(path)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Compatibility variables of one origin; merge with `admerge`, so that keys
/// append to the config file's.
pub fn compat(vars: &[Var], origin: Origin) -> VarsProvider {
    let mut dict = Dict::new();
    let mut var_names = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<&Var>> = BTreeMap::new();
    for var in vars.iter().filter(|v| v.origin == origin) {
        let value = var.value.trim();
        if value.is_empty() {
            continue;
        }
        let (path, value) = match classify(&var.name) {
            Some(Compat::ProxyKey) => (vec!["proxy".to_owned(), "api_key".to_owned()], Value::from(value.to_owned())),
            Some(Compat::GlobalTimeout) => (
                vec!["proxy".to_owned(), "global_timeout_secs".to_owned()],
                value.parse::<Value>().expect("infallible"),
            ),
            Some(Compat::MaxConcurrentRequests) => (
                vec!["server".to_owned(), "max_concurrent_requests".to_owned()],
                value.parse::<Value>().expect("infallible"),
            ),
            Some(Compat::RedisUrl) => {
                (vec!["shared".to_owned(), "redis_url".to_owned()], Value::from(value.to_owned()))
            }
            Some(Compat::ProviderBase(p)) => {
                (vec!["providers".to_owned(), p, "api_base".to_owned()], Value::from(value.to_owned()))
            }
            Some(Compat::AdminKey) => {
                (vec!["proxy".to_owned(), "admin_api_key".to_owned()], Value::from(value.to_owned()))
            }
            Some(Compat::MaxConcurrentPerKey(p)) => (
                vec!["providers".to_owned(), p, "max_concurrent_per_key".to_owned()],
                value.parse::<Value>().expect("infallible"),
            ),
            Some(Compat::IgnoreModels(p)) => {
                (vec!["providers".to_owned(), p, "ignore_models".to_owned()], globs(value))
            }
            Some(Compat::WhitelistModels(p)) => {
                (vec!["providers".to_owned(), p, "whitelist_models".to_owned()], globs(value))
            }
            Some(Compat::ProviderKey(p)) => {
                keys.entry(p).or_default().push(var);
                continue;
            }
            None => continue,
        };
        var_names.insert(path.join("."), var.name.clone());
        insert(&mut dict, &path, value);
    }
    for (provider, mut vars) in keys {
        vars.sort_by(|a, b| key_order(&a.name, &b.name));
        let path = vec!["providers".to_owned(), provider.clone(), "api_keys".to_owned()];
        var_names.insert(path.join("."), format!("{}_API_KEY*", provider.to_ascii_uppercase()));
        let list: Vec<Value> = vars.iter().map(|v| Value::from(v.value.trim().to_owned())).collect();
        insert(&mut dict, &path, Value::from(list));
    }
    VarsProvider { name: format!("{} (compatibility variables)", origin.name()), dict, var_names: Arc::new(var_names) }
}

/// `KEYRELAY_<SECTION>__<KEY>` variables of one origin; merge with `merge`.
pub fn prefixed(vars: &[Var], origin: Origin) -> VarsProvider {
    let mut dict = Dict::new();
    let mut var_names = BTreeMap::new();
    for var in vars.iter().filter(|v| v.origin == origin) {
        let Some(rest) = var.name.strip_prefix(PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        let is_secret = path.last().is_some_and(|k| k == "api_key" || k == "api_keys");
        // Secrets stay strings even when they look like numbers or booleans.
        let value = match var.value.parse::<Value>().expect("infallible") {
            list @ Value::Array(..) if is_secret => list,
            _ if is_secret => Value::from(var.value.clone()),
            parsed => parsed,
        };
        var_names.insert(path.join("."), var.name.clone());
        insert(&mut dict, &path, value);
    }
    VarsProvider { name: format!("{} variable", origin.name()), dict, var_names: Arc::new(var_names) }
}

/// Providers named only by `<P>_API_KEY*` variables: if such a provider is
/// unknown and has no base URL, its variables were probably meant for some
/// other tool, and are ignored with a note instead of failing the start.
pub fn key_only_providers(vars: &[Var]) -> BTreeSet<String> {
    let mut keyed = BTreeSet::new();
    let mut other = BTreeSet::new();
    for var in vars {
        match classify(&var.name) {
            Some(Compat::ProviderKey(p)) => {
                keyed.insert(p);
            }
            Some(Compat::ProviderBase(p)) => {
                other.insert(p);
            }
            _ => {}
        }
        if let Some(rest) = var.name.strip_prefix("KEYRELAY_PROVIDERS__")
            && let Some((p, _)) = rest.split_once("__")
        {
            other.insert(p.to_ascii_lowercase());
        }
    }
    keyed.difference(&other).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_conventional_names() {
        let p = |s: &str| Some(s.to_owned());
        assert_eq!(classify("PROXY_API_KEY"), Some(Compat::ProxyKey));
        assert_eq!(classify("GLOBAL_TIMEOUT"), Some(Compat::GlobalTimeout));
        assert_eq!(classify("MAX_CONCURRENT_REQUESTS"), Some(Compat::MaxConcurrentRequests));
        assert_eq!(classify("OPENAI_API_KEY"), p("openai").map(Compat::ProviderKey));
        assert_eq!(classify("OPENAI_API_KEY_1"), p("openai").map(Compat::ProviderKey));
        assert_eq!(classify("NVIDIA_NIM_API_KEY_backup"), p("nvidia_nim").map(Compat::ProviderKey));
        assert_eq!(classify("LOCAL_API_BASE"), p("local").map(Compat::ProviderBase));
        assert_eq!(classify("ADMIN_API_KEY"), Some(Compat::AdminKey));
        assert_eq!(classify("IGNORE_MODELS_OPENAI"), p("openai").map(Compat::IgnoreModels));
        assert_eq!(classify("WHITELIST_MODELS_NVIDIA_NIM"), p("nvidia_nim").map(Compat::WhitelistModels));
        assert_eq!(
            classify("MAX_CONCURRENT_REQUESTS_PER_KEY_NVIDIA_NIM"),
            p("nvidia_nim").map(Compat::MaxConcurrentPerKey)
        );
        for other in [
            "OPENAI_API_KEYS",
            "OPENAI_API_KEY_",
            "_API_KEY",
            "HOME",
            "KEYRELAY_X_API_KEY",
            "open-ai_API_KEY",
            "MAX_CONCURRENT_REQUESTS_",
            "MAX_CONCURRENT_REQUESTS_PER_KEY_",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }

    #[test]
    fn orders_keys_naturally() {
        let mut names = vec!["X_API_KEY_10", "X_API_KEY_b", "X_API_KEY_2", "X_API_KEY", "X_API_KEY_1", "X_API_KEY_a"];
        names.sort_by(|a, b| key_order(a, b));
        assert_eq!(names, ["X_API_KEY", "X_API_KEY_1", "X_API_KEY_2", "X_API_KEY_10", "X_API_KEY_a", "X_API_KEY_b"]);
    }

    #[test]
    fn process_environment_wins_per_name() {
        let vars = combine(
            vec![("A".into(), "dotenv".into()), ("B".into(), "dotenv".into())],
            vec![("A".into(), "process".into())],
        );
        let a = vars.iter().find(|v| v.name == "A").unwrap();
        assert_eq!((a.value.as_str(), a.origin), ("process", Origin::Process));
        assert_eq!(vars.iter().find(|v| v.name == "B").unwrap().origin, Origin::DotEnv);
    }

    #[test]
    fn key_only_providers_exclude_those_with_a_base() {
        let vars = combine(
            vec![],
            vec![
                ("WANDB_API_KEY".into(), "x".into()),
                ("LOCAL_API_KEY".into(), "x".into()),
                ("LOCAL_API_BASE".into(), "http://127.0.0.1:1/v1".into()),
            ],
        );
        assert_eq!(key_only_providers(&vars).into_iter().collect::<Vec<_>>(), ["wandb"]);
    }
}
