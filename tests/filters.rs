//! Per-provider model allow and deny lists (`IGNORE_MODELS_<P>`,
//! `WHITELIST_MODELS_<P>`): a blocked model is refused with 403
//! `model_not_allowed` naming the pattern, before any key is chosen, so the
//! upstream never sees it and no key is charged; `/v1/models` leaves it out.

mod support;

use serde_json::{Value, json};
use support::{
    Auth, MockUpstream, PROXY_KEY, Proxy, Reply, TestClient, assert_no_secret, assert_openai_error, get, keys_by_id,
    mock::{MockUpstream as DialectMock, dialect_env},
    openai_env, post,
};

const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

async fn chat(client: &TestClient, proxy: &Proxy, model: &str, stream: bool) -> Reply {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "stream": stream});
    client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), body.to_string())).await
}

async fn model_ids(client: &TestClient, proxy: &Proxy) -> Vec<String> {
    let reply = client.fetch(get(&proxy.url("/v1/models"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_no_secret("/v1/models", reply.text());
    let mut ids: Vec<String> =
        reply.json()["data"].as_array().expect("data").iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    ids.sort_unstable();
    ids
}

/// Every key's request count, summed: blocked requests must not count.
async fn requests_charged(client: &TestClient, proxy: &Proxy) -> u64 {
    keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await.values().map(|k| k["requests"].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn ignore_everything_but_a_whitelist_exposes_only_the_whitelist() {
    let mock = MockUpstream::start().await;
    let env = with(openai_env(&mock, 2), &[("IGNORE_MODELS_OPENAI", "*"), ("WHITELIST_MODELS_OPENAI", "gpt-4o*")]);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    for model in ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/GPT-4o-2024-08-06"] {
        let reply = chat(&client, &proxy, model, false).await;
        assert_eq!(reply.status, 200, "{model} is whitelisted: {}", reply.text());
    }
    for stream in [false, true] {
        let reply = chat(&client, &proxy, "openai/o1", stream).await;
        assert_openai_error(&reply, 403, "model_not_allowed", "ignore pattern `*`");
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("`o1`") && message.contains("IGNORE_MODELS_OPENAI"), "{message}");
    }
    let embed = json!({"model": "openai/text-embedding-3-small", "input": "hello"});
    let reply = client.fetch(post(&proxy.url(EMBEDDINGS), Auth::Bearer(PROXY_KEY), embed.to_string())).await;
    assert_openai_error(&reply, 403, "model_not_allowed", "text-embedding-3-small");

    let models: Vec<String> = mock.requests_to("/chat/completions").iter().filter_map(|r| r.model()).collect();
    assert_eq!(models, ["gpt-4o-mini", "gpt-4o", "GPT-4o-2024-08-06"], "blocked models never reach the upstream");
    assert!(mock.requests_to("/embeddings").is_empty());
    assert_eq!(requests_charged(&client, &proxy).await, 3, "no key is charged for a blocked model");

    // The upstream lists gpt-4o-mini and text-embedding-3-small.
    assert_eq!(model_ids(&client, &proxy).await, ["openai/gpt-4o-mini"], "the list is filtered the same way");
}

#[tokio::test]
async fn ignore_patterns_are_globs_over_the_whole_name_and_the_first_match_is_named() {
    let mock = MockUpstream::start().await;
    let env = with(openai_env(&mock, 1), &[("IGNORE_MODELS_OPENAI", " *-preview* , o1? ,text-embedding-*")]);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    for (model, pattern) in [("o1-preview", "*-preview*"), ("GPT-4O-PREVIEW-X", "*-preview*"), ("o1x", "o1?")] {
        let reply = chat(&client, &proxy, &format!("openai/{model}"), false).await;
        assert_openai_error(&reply, 403, "model_not_allowed", &format!("ignore pattern `{pattern}`"));
    }
    // `?` is one character and the glob covers the whole name.
    for model in ["o1", "o1-mini", "gpt-4o-mini", "preview"] {
        let reply = chat(&client, &proxy, &format!("openai/{model}"), false).await;
        assert_eq!(reply.status, 200, "{model} is not blocked: {}", reply.text());
    }
    assert_eq!(mock.requests().iter().filter(|r| r.path.ends_with("/chat/completions")).count(), 4);
    assert_eq!(model_ids(&client, &proxy).await, ["openai/gpt-4o-mini"]);
}

#[tokio::test]
async fn a_whitelist_alone_restricts_nothing() {
    let mock = MockUpstream::start().await;
    let env = with(openai_env(&mock, 1), &[("WHITELIST_MODELS_OPENAI", "gpt-4o*")]);
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();
    for model in ["openai/o1", "openai/gpt-4o-mini"] {
        let reply = chat(&client, &proxy, model, false).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
    }
    assert_eq!(model_ids(&client, &proxy).await, ["openai/gpt-4o-mini", "openai/text-embedding-3-small"]);
}

#[tokio::test]
async fn rules_are_per_provider_and_apply_to_translated_providers_too() {
    let openai = MockUpstream::start().await;
    let ant = DialectMock::anthropic().await;
    let gem = DialectMock::gemini().await;
    let mut env = dialect_env(&[&ant, &gem], 1);
    env.extend(openai_env(&openai, 1).into_iter().filter(|(k, _)| k != "PROXY_API_KEY"));
    let env = with(
        env,
        &[
            ("IGNORE_MODELS_GEMINI", "*embedding*"),
            ("IGNORE_MODELS_ANTHROPIC", "*"),
            ("WHITELIST_MODELS_ANTHROPIC", "claude-sonnet-*"),
        ],
    );
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    let embed = json!({"model": "gemini/gemini-embedding-001", "input": "hello"});
    let reply = client.fetch(post(&proxy.url(EMBEDDINGS), Auth::Bearer(PROXY_KEY), embed.to_string())).await;
    assert_openai_error(&reply, 403, "model_not_allowed", "ignore pattern `*embedding*`");
    let reply = chat(&client, &proxy, "anthropic/claude-haiku-4-5", true).await;
    assert_openai_error(&reply, 403, "model_not_allowed", "IGNORE_MODELS_ANTHROPIC");
    for model in ["gemini/gemini-2.5-flash", "anthropic/claude-sonnet-4-5", "openai/o1"] {
        let reply = chat(&client, &proxy, model, false).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
    }
    assert!(gem.requests().iter().all(|r| !r.path.contains("embedding")), "{:?}", gem.log());
    let sent: Vec<Value> = ant.requests().iter().filter(|r| r.path == "/v1/messages").map(|r| r.json()).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "claude-sonnet-4-5");

    assert_eq!(
        model_ids(&client, &proxy).await,
        [
            "anthropic/claude-sonnet-4-5-20250929",
            "gemini/gemini-2.5-flash",
            "gemini/gemini-2.5-pro",
            "openai/gpt-4o-mini",
            "openai/text-embedding-3-small",
        ]
    );
}
