//! Client keys end to end: configured (`[[clients]]`) and made at run time
//! (`/v1/admin/clients`), on every route and in every header the proxy key
//! works in; their model lists and limits; revocation and restarts.

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::{
    ADMIN_KEY, MockUpstream, PROXY_KEY, Proxy, Script, Valve,
    client::{Auth, TestClient, assert_openai_error, get, post, request},
    dialect_env, within,
};

const CI_KEY: &str = "kr-ci-bot-SECRET-client-7777";
const APP_KEY: &str = "kr-app-SECRET-client-8888";

fn config() -> String {
    format!(
        r#"
[[clients]]
name = "ci-bot"
key = "{CI_KEY}"
models = ["openai/gpt-4o-mini", "anthropic/*"]

[[clients]]
name = "app"
key_env = "APP_CLIENT_KEY"
max_parallel = 1
rpm = 3
"#
    )
}

fn env(mocks: &[&MockUpstream]) -> Vec<(String, String)> {
    let mut env = dialect_env(mocks, 2);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    env.push(("APP_CLIENT_KEY".to_owned(), APP_KEY.to_owned()));
    env
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn a_configured_client_key_works_in_every_header_and_route_the_proxy_key_does() {
    let (openai, anthropic, gemini) =
        (MockUpstream::start().await, MockUpstream::anthropic().await, MockUpstream::gemini().await);
    let proxy = Proxy::start_with_config(env(&[&openai, &anthropic, &gemini]), &config(), None).await;
    let client = TestClient::http1();
    let url = proxy.url("/v1/chat/completions");
    for auth in [Auth::Bearer(CI_KEY), Auth::XApiKey(CI_KEY), Auth::GoogKey(CI_KEY)] {
        let reply = client.fetch(post(&url, auth, chat("openai/gpt-4o-mini"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{auth:?}: {}", reply.text());
    }
    let query = proxy.url(&format!("/v1/chat/completions?key={CI_KEY}"));
    assert_eq!(client.fetch(post(&query, Auth::None, chat("openai/gpt-4o-mini"))).await.status, StatusCode::OK);
    // Anthropic's Messages route, with the client key as Claude Code sends it.
    let messages =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let reply = client.fetch(post(&proxy.url("/v1/messages"), Auth::XApiKey(CI_KEY), messages.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(anthropic.requests().iter().all(|r| !format!("{:?}", r.headers).contains(CI_KEY)), "never forwarded");
    // The model list is for clients too.
    assert_eq!(client.fetch(get(&proxy.url("/v1/models"), Auth::Bearer(CI_KEY))).await.status, StatusCode::OK);
    // A model outside its list: 403, before any upstream key is spent.
    let before = openai.requests().len();
    let reply = client.fetch(post(&url, Auth::Bearer(CI_KEY), chat("openai/gpt-4o"))).await;
    assert_openai_error(&reply, 403, "model_not_allowed", "client `ci-bot` may not use model `openai/gpt-4o`");
    let gemini_body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let reply = client.fetch(post(&proxy.url(path), Auth::GoogKey(CI_KEY), gemini_body)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(openai.requests().len(), before);
    // Never the operator's routes.
    for (method, path) in
        [(Method::GET, "/v1/keys"), (Method::GET, "/v1/admin/clients"), (Method::POST, "/v1/admin/reload")]
    {
        let reply = client.fetch(request(method, &proxy.url(path), Auth::Bearer(CI_KEY))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}: {}", reply.text());
    }
    // An unknown key is still refused; the proxy key still works, for everything.
    let reply = client.fetch(post(&url, Auth::Bearer("kr-unknown-key-0000000"), chat("openai/gpt-4o"))).await;
    assert_openai_error(&reply, 401, "invalid_api_key", "invalid proxy API key");
    assert_eq!(client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat("openai/gpt-4o"))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_clients_parallel_and_rpm_limits_answer_429_with_retry_after() {
    let openai = MockUpstream::start().await;
    let proxy = Proxy::start_with_config(env(&[&openai]), &config(), None).await;
    let client = TestClient::http1();
    let url = proxy.url("/v1/chat/completions");
    let valve = Valve::new();
    openai.push(Script::Hold(valve.clone()));
    let held = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.fetch(post(&url, Auth::Bearer(APP_KEY), chat("openai/gpt-4o"))).await }
    });
    support::eventually("the first request to reach the upstream", || async { openai.requests().len() == 1 }).await;
    let second = client.fetch(post(&url, Auth::Bearer(APP_KEY), chat("openai/gpt-4o"))).await;
    assert_openai_error(&second, 429, "rate_limit_exceeded", "1 requests in flight (max_parallel)");
    assert!(second.header("retry-after").is_some());
    // Other clients are not held back by this one's limit.
    assert_eq!(client.fetch(post(&url, Auth::Bearer(CI_KEY), chat("openai/gpt-4o-mini"))).await.status, StatusCode::OK);
    valve.open();
    assert_eq!(within("the held request", held).await.unwrap().status, StatusCode::OK);
    // rpm = 3: the held request counts, the refused one does not; two
    // more fit, the next is refused.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.fetch(post(&url, Auth::Bearer(APP_KEY), chat("openai/gpt-4o"))).await);
    }
    assert_eq!(statuses[0].status, StatusCode::OK);
    assert_eq!(statuses[1].status, StatusCode::OK);
    assert_openai_error(&statuses[2], 429, "rate_limit_exceeded", "3 requests per minute (rpm)");
    let retry: u64 = statuses[2].header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn runtime_clients_are_made_listed_revoked_and_survive_a_restart() {
    let openai = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with_config(env(&[&openai]), &config(), Some(data.path())).await;
    let client = TestClient::http1();
    let admin = |path: &str| proxy.url(path);
    let made = client
        .fetch(post(
            &admin("/v1/admin/clients"),
            Auth::Bearer(ADMIN_KEY),
            json!({"name": "notebook", "models": ["openai/*"], "rpm": 100, "budget_usd": 5, "budget_period": "day"})
                .to_string(),
        ))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kr-") && key.len() > 40, "{key}");
    assert_eq!(made["key_prefix"], &key[..10]);
    let second = client
        .fetch(post(&admin("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY), json!({"name": "scratch"}).to_string()))
        .await;
    let scratch_key = second.json()["key"].as_str().unwrap().to_owned();
    // The same name twice, a reserved name, a bad field: refused clearly.
    let again = client
        .fetch(post(&admin("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY), json!({"name": "notebook"}).to_string()))
        .await;
    assert_openai_error(&again, 409, "client_conflict", "already exists");
    for (body, says) in [
        (json!({"name": "default"}), "reserved"),
        (json!({"name": "x", "rpm": "fast"}), "invalid client"),
        (json!({"name": "x", "colour": "red"}), "unknown field"),
        (json!({"name": "x", "budget_period": "fortnight"}), "budget_period"),
        (json!({"name": "x", "expires_at": "tomorrow"}), "expires_at"),
    ] {
        let reply = client.fetch(post(&admin("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY), body.to_string())).await;
        assert_openai_error(&reply, 400, "invalid_client", says);
    }
    // The proxy key cannot make clients; a client key cannot either.
    let reply = client
        .fetch(post(&admin("/v1/admin/clients"), Auth::Bearer(PROXY_KEY), json!({"name": "y"}).to_string()))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply =
        client.fetch(post(&admin("/v1/admin/clients"), Auth::Bearer(&key), json!({"name": "y"}).to_string())).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let url = proxy.url("/v1/chat/completions");
    assert_eq!(client.fetch(post(&url, Auth::Bearer(&key), chat("openai/gpt-4o"))).await.status, StatusCode::OK);
    let refused = client.fetch(post(&url, Auth::Bearer(&key), chat("anthropic/claude-sonnet-4-5"))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let listed = client.fetch(get(&admin("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY))).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(!listed.text().contains(&key) && !listed.text().contains(&scratch_key), "never a key: {}", listed.text());
    support::assert_no_secret("the client list", listed.text());
    let list = listed.json();
    let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app", "ci-bot", "notebook", "scratch"]);
    let notebook = &list["data"][2];
    assert_eq!(notebook["origin"], "runtime");
    assert_eq!(notebook["key_prefix"], &key[..10]);
    assert_eq!(notebook["budget"]["limit_usd"], 5.0);
    assert_eq!(notebook["budget"]["period"], "day");
    assert_eq!(list["data"][1]["origin"], "config");
    assert_eq!(list["data"][1]["models"], json!(["openai/gpt-4o-mini", "anthropic/*"]));

    // Revoked: refused at once, like any unknown key; the other stays.
    let gone =
        client.fetch(request(Method::DELETE, &admin("/v1/admin/clients/scratch"), Auth::Bearer(ADMIN_KEY))).await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.text());
    let reply = client.fetch(post(&url, Auth::Bearer(&scratch_key), chat("openai/gpt-4o"))).await;
    assert_openai_error(&reply, 401, "invalid_api_key", "invalid");
    let missing =
        client.fetch(request(Method::DELETE, &admin("/v1/admin/clients/scratch"), Auth::Bearer(ADMIN_KEY))).await;
    assert_openai_error(&missing, 404, "client_not_found", "scratch");
    let configured =
        client.fetch(request(Method::DELETE, &admin("/v1/admin/clients/ci-bot"), Auth::Bearer(ADMIN_KEY))).await;
    assert_openai_error(&configured, 409, "client_conflict", "[[clients]]");

    // A restart on the same data dir: the made client works, the revoked one does not.
    proxy.stop().await;
    let proxy = Proxy::start_with_config(env(&[&openai]), &config(), Some(data.path())).await;
    let url = proxy.url("/v1/chat/completions");
    assert!(proxy.notes().iter().any(|n| n.contains("restored 1 client key")), "{:?}", proxy.notes());
    assert_eq!(client.fetch(post(&url, Auth::Bearer(&key), chat("openai/gpt-4o"))).await.status, StatusCode::OK);
    let reply = client.fetch(post(&url, Auth::Bearer(&scratch_key), chat("openai/gpt-4o"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Only hashes in the database.
    let db = std::fs::read(data.path().join("keyrelay.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(&key) && !db.contains(&scratch_key), "the store holds no key");
}
