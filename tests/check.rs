//! `keyrelay check` end to end: the real binary, configured as the server
//! would be (environment), checks every key against mock upstreams of
//! each dialect with that dialect's model list and auth, and tells which
//! keys are usable, never showing a secret.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, GEMINI_KEY_ONE, GEMINI_KEY_TWO, KEY_ONE, KEY_THREE, KEY_TWO, LOCAL_KEY,
    MockUpstream, Script, assert_no_secret,
    binary::{Exited, keyrelay, run_to_exit},
    closed_port, key_id_of,
    mock::{anthropic, gemini},
};

async fn check(env: &[(String, String)], args: &[&str]) -> Exited {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run_to_exit(keyrelay(dir.path(), &env, &[&["check"][..], args].concat())).await;
    assert_no_secret("check's stdout", &out.stdout);
    assert_no_secret("check's stderr", &out.stderr);
    out
}

/// Every verdict, over the three dialects and a provider nobody answers.
struct Pool {
    openai: MockUpstream,
    anthropic: MockUpstream,
    gemini: MockUpstream,
    env: Vec<(String, String)>,
    local_id: String,
}

async fn pool() -> Pool {
    let openai = MockUpstream::start().await;
    openai.always_for(KEY_TWO, Script::invalid_key());
    openai.always_for(KEY_THREE, Script::insufficient_quota());
    let anthropic = MockUpstream::anthropic().await;
    anthropic.always_for(ANTHROPIC_KEY_TWO, anthropic::rate_limited(Some("30")));
    let gemini = MockUpstream::gemini().await;
    gemini.always_for(GEMINI_KEY_TWO, gemini::invalid_key());
    let mut env = Vec::new();
    env.extend(openai.env(3));
    env.extend(anthropic.env(2));
    env.extend(gemini.env(2));
    env.push(("LOCAL_API_BASE".to_owned(), format!("http://127.0.0.1:{}/v1", closed_port())));
    env.push(("LOCAL_API_KEY".to_owned(), LOCAL_KEY.to_owned()));
    Pool { openai, anthropic, gemini, env, local_id: key_id_of("local", LOCAL_KEY) }
}

#[tokio::test]
async fn each_key_gets_its_verdict_and_a_dead_key_fails_the_run() {
    let pool = pool().await;
    let out = check(&pool.env, &["--json", "--concurrency", "3"]).await;
    assert_eq!(out.code, Some(1), "not every key is usable: {}", out.stderr);
    let checks: Vec<Value> = serde_json::from_str(&out.stdout).expect("a JSON array");
    assert_eq!(checks.len(), 8, "{}", out.stdout);
    for c in &checks {
        let fields: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["id", "latency_ms", "message", "provider", "status", "verdict"], "{c}");
        assert!(c["latency_ms"].is_u64(), "{c}");
    }
    let by_id: BTreeMap<&str, &Value> = checks.iter().map(|c| (c["id"].as_str().unwrap(), c)).collect();
    let expect = [
        (pool.openai.key_id(KEY_ONE), "openai", "ok", Some(200u16)),
        (pool.openai.key_id(KEY_TWO), "openai", "invalid", Some(401)),
        (pool.openai.key_id(KEY_THREE), "openai", "no_quota", Some(429)),
        (pool.anthropic.key_id(ANTHROPIC_KEY_ONE), "anthropic", "ok", Some(200u16)),
        (pool.anthropic.key_id(ANTHROPIC_KEY_TWO), "anthropic", "rate_limited", Some(429)),
        (pool.gemini.key_id(GEMINI_KEY_ONE), "gemini", "ok", Some(200u16)),
        (pool.gemini.key_id(GEMINI_KEY_TWO), "gemini", "invalid", Some(400)),
        (pool.local_id.clone(), "local", "unreachable", None),
    ];
    for (id, provider, verdict, status) in &expect {
        let c = by_id.get(id.as_str()).unwrap_or_else(|| panic!("no check of {id}: {}", out.stdout));
        assert_eq!((c["provider"].as_str(), c["verdict"].as_str()), (Some(*provider), Some(*verdict)), "{c}");
        assert_eq!(c["status"].as_u64(), status.map(u64::from), "{c}");
    }
    let message = |id: &str| by_id[id]["message"].as_str().unwrap().to_owned();
    assert_eq!(message(&pool.openai.key_id(KEY_ONE)), "");
    // The mock's 401 echoes the whole key: the check shows it redacted.
    assert!(message(&pool.openai.key_id(KEY_TWO)).starts_with("Incorrect API key provided: [redacted]."));
    assert!(message(&pool.openai.key_id(KEY_THREE)).starts_with("You exceeded your current quota"));
    assert!(message(&pool.local_id).contains("onnect"), "{}", message(&pool.local_id));
    assert!(message(&pool.gemini.key_id(GEMINI_KEY_TWO)).chars().count() <= 83);

    // Each key asked its provider's model list once, with its own auth.
    for (key, i) in [(KEY_ONE, 0), (KEY_TWO, 1), (KEY_THREE, 2)] {
        let seen = pool.openai.requests_with(key);
        assert_eq!(seen.len(), 1, "key #{i}");
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1/models"));
        assert_eq!(seen[0].bearer(), Some(key));
    }
    for key in [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO] {
        let seen = pool.anthropic.requests_with(key);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1/models"));
        assert_eq!(seen[0].header("x-api-key"), Some(key));
        assert_eq!(seen[0].header("anthropic-version"), Some("2023-06-01"));
    }
    for key in [GEMINI_KEY_ONE, GEMINI_KEY_TWO] {
        let seen = pool.gemini.requests_with(key);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1beta/models"));
        assert_eq!(seen[0].header("x-goog-api-key"), Some(key));
        assert!(seen[0].header("authorization").is_none());
    }
}

#[tokio::test]
async fn the_table_names_each_key_by_id_with_its_verdict() {
    let pool = pool().await;
    let out = check(&pool.env, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["key", "provider", "verdict", "latency", "message"]);
    let row = |id: &str| *lines.iter().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id}:\n{}", out.stdout));
    assert!(row(&pool.openai.key_id(KEY_THREE)).contains(" no quota "), "{}", out.stdout);
    assert!(row(&pool.anthropic.key_id(ANTHROPIC_KEY_TWO)).contains(" rate limited "), "{}", out.stdout);
    assert!(row(&pool.gemini.key_id(GEMINI_KEY_ONE)).contains(" ok "), "{}", out.stdout);
    assert!(row(&pool.local_id).contains(" unreachable "), "{}", out.stdout);
    assert!(row(&pool.openai.key_id(KEY_ONE)).contains(" ms"), "{}", out.stdout);
    assert_eq!(lines.last(), Some(&"3 of 8 keys usable"));
    // stderr is a pipe here: no progress bar.
    assert_eq!(out.stderr, "");
}

#[tokio::test]
async fn every_key_usable_exits_zero() {
    let openai = MockUpstream::start().await;
    let out = check(&openai.env(2), &[]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.ends_with("2 of 2 keys usable\n"), "{}", out.stdout);
}

#[tokio::test]
async fn a_provider_that_never_answers_is_unreachable_after_the_timeout() {
    let openai = MockUpstream::start().await;
    openai.always_for(KEY_ONE, Script::Hang);
    let out = check(&openai.env(1), &["--json", "--timeout", "1"]).await;
    assert_eq!(out.code, Some(1));
    let checks: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(checks[0]["verdict"], "unreachable");
    assert_eq!(checks[0]["message"], "no answer within 1s");
}

#[tokio::test]
async fn no_keys_at_all_is_a_failure_that_says_so() {
    let out = check(&[], &[]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no provider keys configured"), "{}", out.stderr);
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn a_server_without_a_model_list_is_checked_with_a_one_token_request() {
    let openai = MockUpstream::start().await;
    // KEY_ONE's model list is a 404; the one-token chat then answers.
    openai.push_for(KEY_ONE, Script::respond(404, r#"{"error":{"message":"Not Found"}}"#));
    // KEY_TWO: the same 404, then the chat says the key is bad.
    openai.push_for(KEY_TWO, Script::respond(404, r#"{"error":{"message":"Not Found"}}"#));
    openai.push_for(KEY_TWO, Script::invalid_key());
    let mut env = openai.env(2);
    env.push(("KEYRELAY_PROVIDERS__OPENAI__MODELS".to_owned(), r#"["gpt-4o-mini"]"#.to_owned()));
    let out = check(&env, &["--json"]).await;
    let checks: Vec<Value> = serde_json::from_str(&out.stdout).expect("a JSON array");
    let verdict = |key: &str| {
        let id = openai.key_id(key);
        checks.iter().find(|c| c["id"] == id.as_str()).map(|c| c["verdict"].clone())
    };
    assert_eq!(verdict(KEY_ONE), Some(Value::from("ok")), "{}", out.stdout);
    assert_eq!(verdict(KEY_TWO), Some(Value::from("invalid")), "{}", out.stdout);
    assert_eq!(out.code, Some(1));
    let chats: Vec<_> = openai.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).collect();
    assert_eq!(chats.len(), 2, "one one-token request per key");
    for chat in chats {
        let body: Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!((body["model"].as_str(), body["max_tokens"].as_u64()), (Some("gpt-4o-mini"), Some(1)));
    }

    // Without a model named, it cannot ask: unknown, and it says what to do.
    openai.take_requests();
    openai.push_for(KEY_ONE, Script::respond(404, r#"{"error":{"message":"Not Found"}}"#));
    let out = check(&openai.env(1), &["--json"]).await;
    let checks: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(checks[0]["verdict"], "unknown");
    assert!(checks[0]["message"].as_str().unwrap().contains("providers.openai.models"), "{}", out.stdout);
}

#[tokio::test]
async fn openrouter_keys_are_checked_on_its_key_route_not_its_public_model_list() {
    let openrouter = MockUpstream::start().await;
    let env = vec![
        ("OPENROUTER_API_BASE".to_owned(), openrouter.base()),
        ("OPENROUTER_API_KEY".to_owned(), KEY_ONE.to_owned()),
    ];
    let out = check(&env, &["--json"]).await;
    let paths: Vec<String> = openrouter.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 1, "{paths:?}\n{}", out.stdout);
    assert!(paths[0].ends_with("/key"), "{paths:?}");
}
