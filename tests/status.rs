//! The routes beside the proxy: `/v1/models`, `/v1/providers`, `/v1/keys`
//! and `/health`. They answer JSON and never show a secret.

mod support;

use std::collections::BTreeSet;

use keyrelay_layers::{
    pool::{KeyId, Secret},
    provider::ProviderId,
};
use serde_json::Value;
use support::{
    Auth, KEY_ONE, KEY_TWO, LOCAL_KEY, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, assert_no_secret,
    chat_body, closed_port, get, openai_env, post,
};

fn push_env(env: &mut Vec<(String, String)>, name: &str, value: impl Into<String>) {
    env.push((name.to_owned(), value.into()));
}

async fn fetch(client: &TestClient, proxy: &Proxy, path: &str) -> Reply {
    let reply = client.fetch(get(&proxy.url(path), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret(path, reply.text());
    reply
}

fn ids(list: &Value) -> Vec<&str> {
    list["data"].as_array().expect("`data` is a list").iter().map(|m| m["id"].as_str().expect("an id")).collect()
}

#[tokio::test]
async fn models_lists_upstream_and_configured_models_as_provider_ids() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 2);
    push_env(&mut env, "KEYRELAY_PROVIDERS__OPENAI__MODELS", r#"["extra-model"]"#);
    // A second provider whose upstream is down must not break the list.
    push_env(&mut env, "LOCAL_API_BASE", format!("http://127.0.0.1:{}/v1", closed_port()));
    push_env(&mut env, "LOCAL_API_KEY", LOCAL_KEY);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    let reply = fetch(&client, &proxy, "/v1/models").await;
    let list = reply.json();
    assert_eq!(list["object"], "list");
    assert_eq!(
        ids(&list),
        ["openai/extra-model", "openai/gpt-4o-mini", "openai/text-embedding-3-small"],
        "configured models first, then the provider's own list"
    );
    for model in list["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model", "{model}");
        assert_eq!(model["owned_by"], "openai", "{model}");
    }

    let fetched = mock.requests_to("/models");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].method, "GET");
    assert_eq!(fetched[0].path, "/v1/models");
    assert!(
        matches!(fetched[0].bearer(), Some(k) if k == KEY_ONE || k == KEY_TWO),
        "fetched with one of the provider's keys: {:?}",
        fetched[0].bearer()
    );
}

#[tokio::test]
async fn models_list_survives_a_provider_answering_with_an_error() {
    let mock = MockUpstream::start().await;
    mock.push(Script::respond(
        401,
        r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
    ));
    let mut env = openai_env(&mock, 1);
    push_env(&mut env, "KEYRELAY_PROVIDERS__OPENAI__MODELS", r#"["extra-model"]"#);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    let list = fetch(&client, &proxy, "/v1/models").await.json();
    assert_eq!(ids(&list), ["openai/extra-model"], "configured models still listed");
    assert_eq!(mock.requests_to("/models").len(), 1);
}

#[tokio::test]
async fn models_list_is_cached_between_calls() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let first = fetch(&client, &proxy, "/v1/models").await;
    let second = fetch(&client, &proxy, "/v1/models").await;
    assert_eq!(first.body, second.body);
    assert_eq!(mock.requests_to("/models").len(), 1, "the second listing comes from the cache");
}

#[tokio::test]
async fn providers_shows_configured_providers_and_key_counts_without_secrets() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 2);
    let port = closed_port();
    // Userinfo in a base URL is a credential too.
    push_env(&mut env, "LOCAL_API_BASE", format!("http://user:hunter2-SECRET@127.0.0.1:{port}/v1"));
    push_env(&mut env, "LOCAL_API_KEY", LOCAL_KEY);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    let reply = fetch(&client, &proxy, "/v1/providers").await;
    let list = reply.json();
    assert_eq!(list["object"], "list");
    assert_eq!(ids(&list), ["openai", "local"], "{list}");

    let openai = &list["data"][0];
    assert_eq!(openai["api_base"], mock.base());
    assert_eq!(openai["dialect"], "openai");
    assert_eq!(openai["selection"], "least_used");
    assert_eq!(openai["keys"]["total"], 2);
    assert_eq!(openai["in_flight"], 0);

    let local = &list["data"][1];
    assert_eq!(local["api_base"], format!("http://127.0.0.1:{port}/v1"));
    assert_eq!(local["keys"]["total"], 1);
    assert!(!reply.text().contains("hunter2"), "userinfo hidden: {}", reply.text());
}

#[tokio::test]
async fn keys_shows_redacted_ids_and_counters_never_secrets() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();

    let reply = client
        .fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let used = mock.keys_seen()[0].clone();

    let list = fetch(&client, &proxy, "/v1/keys").await.json();
    assert_eq!(list["object"], "list");
    let keys = list["data"].as_array().expect("a key list");
    assert_eq!(keys.len(), 2);

    let id_of = |secret: &str| KeyId::new(&ProviderId::new("openai"), &Secret::new(secret)).as_str().to_owned();
    let shown: BTreeSet<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    let expected: BTreeSet<String> = [id_of(KEY_ONE), id_of(KEY_TWO)].into();
    assert_eq!(shown, expected.iter().map(String::as_str).collect::<BTreeSet<_>>());
    for key in keys {
        let id = key["id"].as_str().unwrap();
        let hex = id.strip_prefix("openai:").expect("`provider:` prefix");
        assert!(
            hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "8 lowercase hex digits: {id}"
        );
        assert_eq!(key["provider"], "openai");
        assert_eq!(key["state"], "ok");
        assert_eq!(key["in_flight"], 0);
        if id == id_of(&used) {
            assert_eq!(key["requests"], 1, "{key}");
            assert!(key["last_used_unix_ms"].as_u64().is_some_and(|ms| ms > 0), "{key}");
        } else {
            assert_eq!(key["requests"], 0, "{key}");
            assert!(key["last_used_unix_ms"].is_null(), "{key}");
        }
    }
}

#[tokio::test]
async fn health_answers_without_a_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let reply = client.fetch(get(&proxy.url("/health"), Auth::None)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn status_routes_accept_the_proxy_key_by_x_api_key_too() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    for path in ["/v1/models", "/v1/providers", "/v1/keys"] {
        let reply = client.fetch(get(&proxy.url(path), Auth::XApiKey(PROXY_KEY))).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_no_secret(path, reply.text());
    }
}
