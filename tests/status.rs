//! The routes beside the proxy: `/v1/models`, `/v1/models/{id}`,
//! `/v1/providers`, `/v1/keys` and `/health`. They answer JSON and never
//! show a secret.

mod support;

use std::collections::BTreeSet;

use http::Method;
use keyrelay_layers::{
    pool::{KeyId, Secret},
    provider::ProviderId,
};
use serde_json::{Value, json};
use support::{
    Auth, KEY_ONE, KEY_TWO, LOCAL_KEY, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, assert_no_secret,
    assert_openai_error, chat_body, closed_port, get, openai_env, post, request,
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

/// The `client.models.retrieve(...)` setup: openai at the mock with a
/// configured model and a deny list, and openrouter (same mock) with a model
/// whose name holds a slash.
async fn retrieve_setup() -> (MockUpstream, Proxy, TestClient) {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 1);
    push_env(&mut env, "KEYRELAY_PROVIDERS__OPENAI__MODELS", r#"["extra-model"]"#);
    push_env(&mut env, "IGNORE_MODELS_OPENAI", "text-embedding-*");
    push_env(&mut env, "OPENROUTER_API_BASE", mock.base());
    push_env(&mut env, "OPENROUTER_API_KEY", LOCAL_KEY);
    push_env(&mut env, "KEYRELAY_PROVIDERS__OPENROUTER__MODELS", r#"["meta-llama/llama-3-70b"]"#);
    let proxy = Proxy::start(env).await;
    (mock, proxy, TestClient::http1())
}

#[tokio::test]
async fn models_retrieve_answers_the_model_object_however_the_slash_is_sent() {
    let (_mock, proxy, client) = retrieve_setup().await;
    for (path, id, owner) in [
        // The OpenAI SDKs percent-encode the id; other clients send it raw.
        ("/v1/models/openai%2Fgpt-4o-mini", "openai/gpt-4o-mini", "openai"),
        ("/v1/models/openai%2fgpt-4o-mini", "openai/gpt-4o-mini", "openai"),
        ("/v1/models/openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai"),
        ("/models/openai/extra-model", "openai/extra-model", "openai"),
        ("/v1/models/openrouter/meta-llama/llama-3-70b", "openrouter/meta-llama/llama-3-70b", "openrouter"),
        ("/v1/models/openrouter%2Fmeta-llama%2Fllama-3-70b", "openrouter/meta-llama/llama-3-70b", "openrouter"),
        ("/v1/models/openrouter/meta-llama%2Fllama-3-70b/", "openrouter/meta-llama/llama-3-70b", "openrouter"),
    ] {
        let reply = fetch(&client, &proxy, path).await;
        assert_eq!(reply.json(), json!({ "id": id, "object": "model", "created": 0, "owned_by": owner }), "{path}");
    }

    // Every model the list shows can be retrieved as the list shows it.
    let list = fetch(&client, &proxy, "/v1/models").await.json();
    for model in list["data"].as_array().unwrap() {
        let path = format!("/v1/models/{}", model["id"].as_str().unwrap().replace('/', "%2F"));
        assert_eq!(&fetch(&client, &proxy, &path).await.json(), model, "{path}");
    }
}

#[tokio::test]
async fn models_retrieve_of_an_unknown_blocked_or_malformed_id_is_404_model_not_found() {
    let (_mock, proxy, client) = retrieve_setup().await;
    for (path, named) in [
        ("/v1/models/openai%2Fnope", "openai/nope"),
        ("/v1/models/gpt-4o-mini", "gpt-4o-mini"),
        ("/v1/models/nope/gpt-4o-mini", "nope/gpt-4o-mini"),
        // Denied by IGNORE_MODELS_OPENAI: the list does not show it either.
        ("/v1/models/openai/text-embedding-3-small", "openai/text-embedding-3-small"),
        // Escapes that do not decode are no model's id, never a 500.
        ("/v1/models/openai%2", "openai%2"),
        ("/v1/models/openai%ZZgpt", "openai%ZZgpt"),
        ("/v1/models/openai%FF", "openai%FF"),
    ] {
        let reply = client.fetch(get(&proxy.url(path), Auth::Bearer(PROXY_KEY))).await;
        assert_openai_error(&reply, 404, "model_not_found", &format!("`{named}`"));
        assert_openai_error(&reply, 404, "model_not_found", "GET /v1/models");
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error", "{path}");
    }
}

#[tokio::test]
async fn models_retrieve_takes_the_auth_of_the_list_and_only_get() {
    let (mock, proxy, client) = retrieve_setup().await;
    let url = proxy.url("/v1/models/openai%2Fgpt-4o-mini");
    let reply = client.fetch(get(&url, Auth::None)).await;
    assert_openai_error(&reply, 401, "invalid_api_key", "");
    let reply = client.fetch(get(&url, Auth::Bearer("not-the-key"))).await;
    assert_openai_error(&reply, 401, "invalid_api_key", "");
    assert!(mock.requests_to("/models").is_empty(), "refused before the catalog is read");

    let reply = client.fetch(get(&url, Auth::XApiKey(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client.fetch(request(Method::POST, &url, Auth::Bearer(PROXY_KEY))).await;
    assert_openai_error(&reply, 405, "method_not_allowed", "use GET");
    assert_eq!(reply.header("allow"), Some("GET"));
}
