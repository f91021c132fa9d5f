//! The dashboard's data routes end to end (issue 17): requests through the
//! proxy land in the usage ledger, and `GET /v1/ui/series` and
//! `/v1/ui/recent` answer them back, bucketed and newest first, with the
//! same auth as `/v1/keys`.

mod support;

use serde_json::Value;
use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, assert_openai_error, chat_body,
    eventually, get, key_id, openai_env, post,
};

async fn chat(client: &TestClient, proxy: &Proxy) -> u16 {
    let url = proxy.url("/v1/chat/completions");
    client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await.status.as_u16()
}

async fn data(client: &TestClient, proxy: &Proxy, path: &str) -> Value {
    let reply = client.fetch(get(&proxy.url(path), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

#[tokio::test]
async fn series_and_recent_answer_what_the_ledger_recorded() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();
    // Two answered; one the client's own fault (400), not retried.
    for _ in 0..2 {
        assert_eq!(chat(&client, &proxy).await, 200);
    }
    mock.push(Script::client_error());
    assert_eq!(chat(&client, &proxy).await, 400);

    // Rows reach the ledger in batches, a few ms after their request.
    eventually("three ledger rows", || async {
        data(&client, &proxy, "/v1/ui/recent").await["requests"].as_array().map_or(0, Vec::len) == 3
    })
    .await;
    let recent = data(&client, &proxy, "/v1/ui/recent?limit=3").await;
    let recent = recent["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(recent[0]["status"], 400, "newest first: {recent:?}");
    assert_eq!(recent[0]["error_code"], Value::Null, "the provider's own error, passed through");
    assert_eq!(recent[2]["status"], 200);
    for row in &recent {
        assert_eq!(row["client"], "default");
        assert_eq!(row["route"], "chat/completions", "the inbound route, as the ledger names it");
        assert_eq!(row["model"], "gpt-4o-mini");
        let key = row["key"].as_str().expect("a key served it");
        assert!([key_id(KEY_ONE), key_id(KEY_TWO)].iter().any(|id| id == key), "{key}");
        assert_eq!(row["attempts"], 1);
    }
    let limited = data(&client, &proxy, "/v1/ui/recent?limit=1").await;
    assert_eq!(limited["requests"].as_array().map(Vec::len), Some(1));

    for window in ["1h", "24h"] {
        let series = data(&client, &proxy, &format!("/v1/ui/series?window={window}")).await;
        assert_eq!(series["window"], window);
        let step = series["step_secs"].as_i64().expect("a step");
        assert_eq!(step, if window == "1h" { 60 } else { 900 });
        let buckets = series["buckets"].as_array().expect("buckets");
        let requests: u64 = buckets.iter().map(|b| b["requests"].as_u64().unwrap_or_default()).sum();
        let errors: u64 = buckets.iter().filter_map(|b| b["errors"]["client_error"].as_u64()).sum();
        let tokens: u64 = buckets.iter().map(|b| b["tokens_in"].as_u64().unwrap_or_default()).sum();
        assert_eq!((requests, errors), (3, 1), "{window}: {buckets:?}");
        assert!(tokens > 0, "the answers' usage is counted");
        let (start, end) = (series["start_unix_ms"].as_i64().unwrap(), series["end_unix_ms"].as_i64().unwrap());
        for bucket in buckets {
            let t = bucket["t_unix_ms"].as_i64().expect("a time");
            assert!(start <= t && t < end && t % (step * 1000) == 0, "{bucket}");
            assert_eq!(bucket["provider"], "openai");
            assert_eq!(bucket["client"], "default");
        }
    }
}

#[tokio::test]
async fn the_data_routes_take_the_status_key_and_name_a_bad_parameter() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();
    for path in ["/v1/ui/series", "/v1/ui/recent"] {
        let reply = client.fetch(get(&proxy.url(path), Auth::None)).await;
        assert_openai_error(&reply, 401, "invalid_api_key", "");
        // Nothing was sent yet: empty, not an error.
        let empty = data(&client, &proxy, path).await;
        assert!(empty["buckets"].as_array().or(empty["requests"].as_array()).is_some_and(Vec::is_empty), "{empty}");
    }
    for (path, param) in [
        ("/v1/ui/series?window=7d", "window"),
        ("/v1/ui/recent?limit=5000", "limit"),
        ("/v1/ui/recent?since=1h", "since"),
    ] {
        let reply = client.fetch(get(&proxy.url(path), Auth::Bearer(PROXY_KEY))).await;
        assert_openai_error(&reply, 400, "invalid_query", &format!("`{param}`"));
    }
    let post_reply = client.fetch(post(&proxy.url("/v1/ui/series"), Auth::Bearer(PROXY_KEY), "{}")).await;
    assert_eq!(post_reply.status, 405);
}
