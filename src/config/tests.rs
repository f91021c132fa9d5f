use std::{fs, path::Path};

use super::*;

fn sources(dir: &Path, env: &[(&str, &str)]) -> Sources {
    Sources {
        config_path: None,
        working_dir: dir.to_path_buf(),
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        host: None,
        port: None,
        data_dir: None,
        request_logging: false,
    }
}

fn keys_of(settings: &Settings, id: &str) -> Vec<String> {
    let p = settings.providers.iter().find(|p| p.provider.id().as_str() == id).unwrap();
    p.keys.iter().map(|(k, _)| k.expose().to_owned()).collect()
}

fn err(sources: Sources) -> String {
    load(sources).unwrap_err().to_string()
}

#[test]
fn defaults_need_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(dir.path(), &[])).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
    // The OpenAI SDK's own wait: a long generation is not cut (issue 12).
    assert_eq!(s.global_timeout, Duration::from_secs(600));
    assert_eq!(s.max_body_bytes, 16 * 1024 * 1024);
    assert!(s.proxy_key.is_none());
    assert!(s.notes.iter().any(|n| n.contains("no PROXY_API_KEY")));
    assert!(s.providers.iter().all(|p| p.keys.is_empty() && !p.configured));
}

#[test]
fn env_conventions_of_key_rotating_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(
        dir.path(),
        &[
            ("PROXY_API_KEY", "pk"),
            ("OPENAI_API_KEY_2", "sk-2"),
            ("OPENAI_API_KEY_1", "sk-1"),
            ("OPENAI_API_KEY", "sk-0"),
            ("OPENAI_API_BASE", "http://127.0.0.1:11434/v1"),
            ("NVIDIA_NIM_API_KEY_a", "nv"),
            ("GLOBAL_TIMEOUT", "90"),
        ],
    ))
    .unwrap();
    assert_eq!(s.proxy_key.as_ref().map(Secret::expose), Some("pk"));
    assert_eq!(keys_of(&s, "openai"), ["sk-0", "sk-1", "sk-2"]);
    assert_eq!(keys_of(&s, "nvidia_nim"), ["nv"]);
    let openai = s.providers.iter().find(|p| p.provider.id().as_str() == "openai").unwrap();
    assert_eq!(openai.provider.api_base().to_string(), "http://127.0.0.1:11434/v1");
    assert!(openai.configured);
    assert_eq!(s.global_timeout, Duration::from_secs(90));
}

#[test]
fn an_unknown_provider_with_a_base_is_a_custom_openai_compatible_one() {
    let dir = tempfile::tempdir().unwrap();
    let s =
        load(sources(dir.path(), &[("LOCAL_API_BASE", "http://127.0.0.1:8080/v1"), ("LOCAL_API_KEY", "x")])).unwrap();
    assert_eq!(keys_of(&s, "local"), ["x"]);
}

#[test]
fn stray_key_variables_are_ignored_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(dir.path(), &[("WANDB_API_KEY", "w-secret"), ("ANTHROPIC_API_KEY", "a-secret")])).unwrap();
    assert!(s.providers.iter().all(|p| p.provider.id().as_str() != "wandb"));
    assert_eq!(keys_of(&s, "anthropic"), ["a-secret"], "anthropic is a built-in provider");
    let notes = s.notes.join("\n");
    assert!(notes.contains("WANDB_API_KEY") && !notes.contains("ANTHROPIC"), "{notes}");
    assert!(!notes.contains("w-secret") && !notes.contains("a-secret"));
}

#[test]
fn precedence_file_then_dotenv_then_environment_then_cli() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.toml"),
        "[server]\nport = 9001\nhost = \"127.0.0.1\"\n[proxy]\nglobal_timeout_secs = 10\nmodels_cache_ttl_secs = 5\n\
         [providers.openai]\napi_keys = [\"file-key\", \"shared-key\"]\nselection = \"round_robin\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join(".env"),
        "KEYRELAY_SERVER__PORT=9002\nGLOBAL_TIMEOUT=20\nOPENAI_API_KEY_1=dotenv-key\nOPENAI_API_KEY_2=shared-key\nKEYRELAY_PROXY__MODELS_CACHE_TTL_SECS=7\n",
    )
    .unwrap();
    let mut src = sources(dir.path(), &[("GLOBAL_TIMEOUT", "30"), ("OPENAI_API_KEY_3", "env-key")]);
    let s = load(sources(dir.path(), &[("GLOBAL_TIMEOUT", "30"), ("OPENAI_API_KEY_3", "env-key")])).unwrap();
    assert_eq!(s.listen.port(), 9002, ".env beats the file");
    assert_eq!(s.global_timeout, Duration::from_secs(30), "the environment beats .env");
    assert_eq!(s.models_cache_ttl, Duration::from_secs(7));
    // Keys from every source add up; the same secret twice counts once in the pool.
    let openai = s.providers.iter().find(|p| p.provider.id().as_str() == "openai").unwrap();
    assert_eq!(openai.options.selection, Selection::RoundRobin);
    let mut keys = keys_of(&s, "openai");
    keys.sort();
    keys.dedup();
    assert_eq!(keys, ["dotenv-key", "env-key", "file-key", "shared-key"]);

    src.port = Some(9003);
    src.host = Some("::1".to_owned());
    let s = load(src).unwrap();
    assert_eq!(s.listen.to_string(), "[::1]:9003", "CLI flags beat everything");
}

#[test]
fn an_explicit_config_path_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = sources(dir.path(), &[]);
    src.config_path = Some(dir.path().join("missing.toml"));
    assert!(err(src).contains("missing.toml"));
}

#[test]
fn unknown_keys_are_rejected_naming_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.toml"), "[server]\nprot = 1\n").unwrap();
    let message = err(sources(dir.path(), &[]));
    assert!(message.contains("prot") && message.contains("config.toml"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let message = err(sources(dir.path(), &[("KEYRELAY_PROXY__NOPE", "1")]));
    assert!(message.contains("nope") && message.contains("environment"), "{message}");
}

#[test]
fn bad_values_name_the_variable_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let message = err(sources(dir.path(), &[("KEYRELAY_SERVER__PORT", "notaport")]));
    assert!(message.contains("KEYRELAY_SERVER__PORT") && message.contains("process environment"), "{message}");

    fs::write(dir.path().join(".env"), "GLOBAL_TIMEOUT=soon\n").unwrap();
    let message = err(sources(dir.path(), &[]));
    assert!(message.contains("GLOBAL_TIMEOUT") && message.contains(".env"), "{message}");

    let message = err(sources(dir.path(), &[("GLOBAL_TIMEOUT", "0")]));
    assert!(message.contains("global_timeout_secs"), "{message}");
}

#[test]
fn validation_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (env, needle) in [
        (("OPENAI_API_BASE", "api.openai.com/v1"), "providers.openai.api_base"),
        (("KEYRELAY_PROVIDERS__OPENAI__SELECTION", "fastest"), "providers.openai.selection"),
        (("KEYRELAY_SERVER__HOST", "my-host"), "server.host"),
        (("KEYRELAY_PROVIDERS__MYSTERY__MODELS", "[\"a\"]"), "providers.mystery"),
    ] {
        let message = err(sources(dir.path(), &[env]));
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn refuses_a_public_bind_without_a_proxy_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = sources(dir.path(), &[]);
    src.host = Some("0.0.0.0".to_owned());
    assert!(err(src).contains("PROXY_API_KEY"));
    let mut src = sources(dir.path(), &[("PROXY_API_KEY", "pk")]);
    src.host = Some("0.0.0.0".to_owned());
    assert!(load(src).is_ok());
}

#[test]
fn secrets_are_never_echoed_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A key list given where a table is expected must not be quoted back.
    let message = err(sources(
        dir.path(),
        &[("OPENAI_API_KEY_1", "sk-SECRET-abc"), ("KEYRELAY_PROVIDERS__OPENAI", "sk-SECRET-abc")],
    ));
    assert!(!message.contains("sk-SECRET-abc"), "{message}");
    fs::write(dir.path().join(".env"), "OPENAI_API_KEY_1='sk-SECRET-unterminated\n").unwrap();
    let message = err(sources(dir.path(), &[]));
    assert!(!message.contains("sk-SECRET"), "{message}");
}

#[test]
fn numeric_looking_secrets_stay_strings() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(dir.path(), &[("KEYRELAY_PROXY__API_KEY", "12345"), ("OPENAI_API_KEY", "true")])).unwrap();
    assert_eq!(s.proxy_key.as_ref().map(Secret::expose), Some("12345"));
    assert_eq!(keys_of(&s, "openai"), ["true"]);
}

#[test]
fn the_shipped_examples_load() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.toml"), include_str!("../../config.toml.example")).unwrap();
    fs::write(dir.path().join(".env"), include_str!("../../.env.example")).unwrap();
    let s = load(sources(dir.path(), &[])).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(s.proxy_key.as_ref().map(Secret::expose), Some("change-me"));
    assert_eq!(keys_of(&s, "openai"), ["sk-...", "sk-..."]);
}

#[test]
fn the_example_config_documents_every_key() {
    let example = include_str!("../../config.toml.example");
    for key in [
        "host",
        "port",
        "max_body_bytes",
        "max_header_bytes",
        "header_read_timeout_secs",
        "shutdown_grace_secs",
        "max_concurrent_requests",
        "tls_cert",
        "tls_key",
        "data_dir",
        "state_save_interval_secs",
        "request_logging",
        "api_key",
        "admin_api_key",
        "global_timeout_secs",
        "stream_idle_timeout_secs",
        "models_cache_ttl_secs",
        "daily_reset_utc",
        "max_concurrent_per_key",
        "ignore_models",
        "whitelist_models",
        "split_think_tags",
        "stream_usage",
        "metrics_auth",
        "api_base",
        "api_keys",
        "selection",
        "models",
        "targets",
        "name",
        "key_env",
        "rpm",
        "tpm",
        "max_parallel",
        "budget_usd",
        "budget_period",
        "input",
        "output",
        "cached_input",
        "max_output",
        "retention_days",
        "url",
        "redis_url",
        "key_prefix",
        "call_timeout_ms",
        "slot_lease_secs",
    ] {
        assert!(example.contains(&format!("{key} =")), "config.toml.example lacks `{key}`");
    }
}

#[test]
fn resilience_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(
        dir.path(),
        &[
            ("ADMIN_API_KEY", "admin"),
            ("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI", "3"),
            ("KEYRELAY_PROXY__DAILY_RESET_UTC", "07:30"),
            ("KEYRELAY_PROXY__STREAM_IDLE_TIMEOUT_SECS", "5"),
            ("KEYRELAY_SERVER__DATA_DIR", "state"),
        ],
    ))
    .unwrap();
    assert_eq!(s.admin_key.as_ref().map(Secret::expose), Some("admin"));
    let openai = s.providers.iter().find(|p| p.provider.id().as_str() == "openai").unwrap();
    assert_eq!(openai.options.max_concurrent_per_key, 3);
    assert_eq!(s.daily_reset, Duration::from_secs(7 * 3600 + 30 * 60));
    assert_eq!(s.stream_idle_timeout, Duration::from_secs(5));
    assert_eq!(s.data_dir, dir.path().join("state"), "relative to the working directory");

    let message = err(sources(dir.path(), &[("KEYRELAY_PROXY__DAILY_RESET_UTC", "25:00")]));
    assert!(message.contains("daily_reset_utc"), "{message}");
}

#[test]
fn model_filters_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = load(sources(dir.path(), &[("IGNORE_MODELS_OPENAI", " * "), ("WHITELIST_MODELS_OPENAI", "gpt-4o*, o1 ,")]))
        .unwrap();
    let openai = s.providers.iter().find(|p| p.provider.id().as_str() == "openai").unwrap();
    let rules = openai.provider.model_rules();
    assert!(rules.check("gpt-4o-mini").is_ok() && rules.check("o1").is_ok());
    assert_eq!(rules.check("o1-preview"), Err("*"));
}

#[test]
fn request_logging_from_file_env_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!load(sources(dir.path(), &[])).unwrap().request_logging);
    assert!(load(sources(dir.path(), &[("KEYRELAY_SERVER__REQUEST_LOGGING", "true")])).unwrap().request_logging);
    let mut flag = sources(dir.path(), &[]);
    flag.request_logging = true;
    assert!(load(flag).unwrap().request_logging);
    fs::write(dir.path().join("config.toml"), "[server]\nrequest_logging = true\n").unwrap();
    assert!(load(sources(dir.path(), &[])).unwrap().request_logging);
}

#[test]
fn max_concurrent_requests_from_env_and_zero_means_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load(sources(dir.path(), &[])).unwrap().max_concurrent_requests, 1024, "the default");
    let s = load(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS", "0")])).unwrap();
    assert_eq!(s.max_concurrent_requests, 0, "0 is accepted: no limit");
    let s = load(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS", " 64 ")])).unwrap();
    assert_eq!(s.max_concurrent_requests, 64);

    // Not the per-key cap, and the per-key cap is not this.
    let s = load(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI", "3")])).unwrap();
    assert_eq!(s.max_concurrent_requests, 1024);
    let s = load(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS", "7")])).unwrap();
    assert!(s.providers.iter().all(|p| p.options.max_concurrent_per_key == 0));

    // Like the other compatibility variables: `.env` under the process
    // environment, both over the config file, and errors name the variable.
    fs::write(dir.path().join("config.toml"), "[server]\nmax_concurrent_requests = 10\n").unwrap();
    assert_eq!(load(sources(dir.path(), &[])).unwrap().max_concurrent_requests, 10);
    fs::write(dir.path().join(".env"), "MAX_CONCURRENT_REQUESTS=20\n").unwrap();
    assert_eq!(load(sources(dir.path(), &[])).unwrap().max_concurrent_requests, 20);
    let s = load(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS", "30")])).unwrap();
    assert_eq!(s.max_concurrent_requests, 30);
    let message = err(sources(dir.path(), &[("MAX_CONCURRENT_REQUESTS", "lots")]));
    assert!(message.contains("MAX_CONCURRENT_REQUESTS"), "{message}");
}

#[test]
fn key_tables_bring_settings_and_read_key_env() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.toml"),
        r#"
[providers.openai]
api_keys = ["sk-plain"]

[[providers.openai.keys]]
key_env = "OPENAI_PAID_KEY"
weight = 3
priority = 1
models = ["gpt-4o*"]
max_concurrent = 4
rpm = 500
tpm = 200000
rpd = 10000

[[providers.openai.keys]]
key = "sk-free"
"#,
    )
    .unwrap();
    let s = load(sources(dir.path(), &[("OPENAI_PAID_KEY", "sk-paid")])).unwrap();
    assert_eq!(keys_of(&s, "openai"), ["sk-paid", "sk-free", "sk-plain"], "tables first, then api_keys");
    let openai = s.providers.iter().find(|p| p.provider.id().as_str() == "openai").unwrap();
    let paid = &openai.keys[0].1;
    assert_eq!((paid.weight, paid.priority, paid.max_concurrent), (3, 1, Some(4)));
    assert_eq!((paid.rpm, paid.tpm, paid.rpd), (Some(500), Some(200_000), Some(10_000)));
    assert!(paid.serves("gpt-4o-mini") && !paid.serves("o3"));
    assert!(openai.keys[1].1.is_default());

    let missing = err(sources(dir.path(), &[]));
    assert!(missing.contains("providers.openai.keys[0].key_env") && missing.contains("OPENAI_PAID_KEY"), "{missing}");
    fs::write(dir.path().join("config.toml"), "[[providers.openai.keys]]\nweight = 2\n").unwrap();
    assert!(err(sources(dir.path(), &[])).contains("give `key` or `key_env`"));
}

#[test]
fn llm_keys_bind_each_key_to_its_model_and_route_bare_models() {
    let dir = tempfile::tempdir().unwrap();
    let llm_keys = r#"[{"api_key": "sk-a", "model": "gpt-4o-mini", "provider": "openai"},
                       {"api_key": "gsk-b", "model": "llama-3.3-70b-versatile", "provider": "groq"},
                       {"api_key": "sk-c", "model": "openai/gpt-4.1"}]"#;
    let s = load(sources(dir.path(), &[("LLM_KEYS", llm_keys), ("OPENAI_API_KEY", "sk-plain")])).unwrap();
    assert_eq!(keys_of(&s, "openai"), ["sk-plain", "sk-a", "sk-c"]);
    assert_eq!(keys_of(&s, "groq"), ["gsk-b"]);
    let groq = s.providers.iter().find(|p| p.provider.id().as_str() == "groq").unwrap();
    assert!(groq.configured);
    assert!(groq.keys[0].1.serves("llama-3.3-70b-versatile") && !groq.keys[0].1.serves("gpt-4o-mini"));
    let expected = RouteDefaults::default()
        .with_model("gpt-4o-mini", "openai")
        .with_model("llama-3.3-70b-versatile", "groq")
        .with_model("gpt-4.1", "openai");
    assert_eq!(s.route_defaults, expected);

    for (bad, says) in [
        ("not json", "not a JSON array"),
        (r#"[{"api_key": "sk-secret-1"}]"#, "entry #1"),
        (r#"[{"api_key": "sk-secret-1", "model": "gpt-4o"}]"#, "no `provider`"),
        (r#"[{"api_key": "sk-secret-1", "model": "m", "provider": "nowhere"}]"#, "NOWHERE_API_BASE"),
    ] {
        let message = err(sources(dir.path(), &[("LLM_KEYS", bad)]));
        assert!(message.contains(says), "{bad}: {message}");
        assert!(!message.contains("sk-secret"), "no key in the message: {message}");
    }
}

#[test]
fn session_affinity_per_provider() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("config.toml"),
        "[providers.openai]\naffinity = \"none\"\n[providers.anthropic]\naffinity_ttl_secs = 600\n",
    )
    .unwrap();
    let s = load(sources(dir.path(), &[])).unwrap();
    let options = |id: &str| s.providers.iter().find(|p| p.provider.id().as_str() == id).unwrap().options;
    assert_eq!(options("openai").affinity, Affinity::None);
    assert_eq!((options("anthropic").affinity, options("anthropic").affinity_ttl), (Affinity::Session, secs(600)));
    assert_eq!(options("gemini").affinity_ttl, secs(3600), "the default");
    for (env, needle) in [
        (("KEYRELAY_PROVIDERS__OPENAI__AFFINITY", "sticky"), "providers.openai.affinity"),
        (("KEYRELAY_PROVIDERS__OPENAI__AFFINITY_TTL_SECS", "0"), "providers.openai.affinity_ttl_secs"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let message = err(sources(dir.path(), &[env]));
        assert!(message.contains(needle), "{needle}: {message}");
    }
    let example = include_str!("../../config.toml.example");
    for key in ["affinity", "affinity_ttl_secs"] {
        assert!(example.contains(&format!("{key} =")), "config.toml.example lacks `{key}`");
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn client_tables_give_named_keys_with_models_limits_and_budgets() {
    use keyrelay_layers::{budget::BudgetPeriod, client::key_digest};
    let dir = tempfile::tempdir().unwrap();
    let client = |extra: &str| format!("[[clients]]\nname = \"ci-bot\"\nkey_env = \"CI_BOT_KEY\"\n{extra}\n");
    fs::write(
        dir.path().join("config.toml"),
        client(
            "models = [\"openai/gpt-4o-mini\"]\nrpm = 60\ntpm = 100000\nmax_parallel = 4\nbudget_usd = 25.0\nbudget_period = \"month\"",
        ) + "[[clients]]\nname = \"notebook\"\nkey = \"kr-notebook-0123456789\"\n",
    )
    .unwrap();
    let env = [("CI_BOT_KEY", "kr-ci-0123456789abcdef"), ("PROXY_API_KEY", "pk-0123456789abcdef")];
    let s = load(sources(dir.path(), &env)).unwrap();
    assert_eq!(s.clients.len(), 2);
    let (digest, ci) = &s.clients[0];
    assert_eq!(*digest, key_digest("kr-ci-0123456789abcdef"));
    assert_eq!(&*ci.name, "ci-bot");
    assert_eq!((ci.rpm, ci.tpm, ci.max_parallel), (Some(60), Some(100_000), Some(4)));
    let budget = ci.budget.unwrap();
    assert_eq!((budget.limit_usd, budget.period), (25.0, BudgetPeriod::Month));
    assert!(ci.allows("openai", "gpt-4o-mini", None) && !ci.allows("openai", "gpt-4o", None));
    assert!(s.clients[1].1.budget.is_none() && s.clients[1].1.allows("any", "model", None));

    for (toml, says) in [
        (client("budget_period = \"fortnight\"\nbudget_usd = 1"), "clients[0].budget_period"),
        (client("budget_period = \"day\""), "needs budget_usd"),
        (client("rpm = 0"), "clients[0].rpm"),
        (client("colour = \"red\""), "unknown field"),
        (client("") + &client(""), "named twice"),
        ("[[clients]]\nname = \"default\"\nkey = \"kr-0123456789abcdef\"\n".to_owned(), "reserved"),
        ("[[clients]]\nname = \"x\"\nkey = \"short\"\n".to_owned(), "at least 16"),
        ("[[clients]]\nname = \"x\"\nkey = \"pk-0123456789abcdef\"\n".to_owned(), "cannot be the proxy key"),
    ] {
        fs::write(dir.path().join("config.toml"), toml).unwrap();
        let message = err(sources(dir.path(), &env));
        assert!(message.contains(says), "{says}: {message}");
        assert!(!message.contains("kr-ci-0123456789abcdef"), "never the key: {message}");
    }
    fs::write(dir.path().join("config.toml"), client("")).unwrap();
    assert!(err(sources(dir.path(), &[])).contains("clients[0].key_env: variable CI_BOT_KEY is not set"));
}
