//! Client keys through a reload of the real binary: configured clients
//! change with `config.toml`, a kept client keeps its windows, runtime
//! clients stay.

mod support;

use serde_json::json;
use support::{
    ADMIN_KEY, MockUpstream, PROXY_KEY, TestClient,
    binary::{keyrelay, start},
    client::{Auth, assert_openai_error, get, post, request},
    eventually,
};
use tempfile::TempDir;

const CI_KEY: &str = "kr-ci-bot-SECRET-client-7777";
const NEW_KEY: &str = "kr-newcomer-SECRET-client-9999";

fn chat() -> String {
    json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[tokio::test]
async fn a_reload_changes_configured_clients_keeps_their_state_and_the_runtime_ones() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "PROXY_API_KEY={PROXY_KEY}\nADMIN_API_KEY={ADMIN_KEY}\nOPENAI_API_BASE={}\nOPENAI_API_KEY_1=sk-test-SECRET-one-1111\n",
            mock.base()
        ),
    )
    .unwrap();
    let config = |clients: &str| std::fs::write(dir.path().join("config.toml"), clients).unwrap();
    config(&format!("[[clients]]\nname = \"ci-bot\"\nkey = \"{CI_KEY}\"\nrpm = 2\n"));
    let running = start(keyrelay(dir.path(), &[], &["--port", "0"])).await;
    let client = TestClient::http1();
    let chat_url = running.url("/v1/chat/completions");

    // Two requests fill ci-bot's minute; a runtime client is made.
    for _ in 0..2 {
        assert_eq!(client.fetch(post(&chat_url, Auth::Bearer(CI_KEY), chat())).await.status, 200);
    }
    let made = client
        .fetch(post(
            &running.url("/v1/admin/clients"),
            Auth::Bearer(ADMIN_KEY),
            json!({"name": "notebook"}).to_string(),
        ))
        .await;
    let runtime_key = made.json()["key"].as_str().unwrap().to_owned();

    // The configuration keeps ci-bot (now allowed 3 a minute) and adds a newcomer.
    config(&format!(
        "[[clients]]\nname = \"ci-bot\"\nkey = \"{CI_KEY}\"\nrpm = 3\n\n[[clients]]\nname = \"newcomer\"\nkey = \"{NEW_KEY}\"\n"
    ));
    let reload =
        client.fetch(request(http::Method::POST, &running.url("/v1/admin/reload"), Auth::Bearer(ADMIN_KEY))).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(client.fetch(post(&chat_url, Auth::Bearer(NEW_KEY), chat())).await.status, 200);
    // ci-bot's minute carried over: one more fits, then its new limit.
    assert_eq!(client.fetch(post(&chat_url, Auth::Bearer(CI_KEY), chat())).await.status, 200);
    let over = client.fetch(post(&chat_url, Auth::Bearer(CI_KEY), chat())).await;
    assert_openai_error(&over, 429, "rate_limit_exceeded", "3 requests per minute");
    assert_eq!(client.fetch(post(&chat_url, Auth::Bearer(&runtime_key), chat())).await.status, 200);

    // Removed from the configuration: refused at once, like any unknown key.
    config(&format!("[[clients]]\nname = \"newcomer\"\nkey = \"{NEW_KEY}\"\n"));
    running.signal("HUP");
    eventually("ci-bot gone after SIGHUP", || {
        let (client, url) = (client.clone(), chat_url.clone());
        async move { client.fetch(post(&url, Auth::Bearer(CI_KEY), chat())).await.status == 401 }
    })
    .await;
    assert_eq!(client.fetch(post(&chat_url, Auth::Bearer(&runtime_key), chat())).await.status, 200);
    let listed = client.fetch(get(&running.url("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY))).await.json();
    let names: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["newcomer", "notebook"]);

    let exited = running.terminate().await;
    support::assert_no_secret("the binary's output", &format!("{}{}", exited.stdout, exited.stderr));
    assert!(!exited.stderr.contains(&runtime_key), "a made key never reaches the log");
}
