//! The usage ledger: every finished request on a proxied route leaves
//! exactly one row in the data dir's database, whole or streamed,
//! answered, failed upstream or refused by the proxy itself, with its
//! route, provider, model, key id, status, outcome and tokens. Rows are
//! read after the proxy shut down, which commits what its writer queued.

mod support;

use serde_json::{Value, json};
use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, assert_no_secret, chat_body,
    key_id, openai_env, post, stream_events,
};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "openai/gpt-4o-mini";

/// Awaits `reply`, stops the proxy (whose data dir the test keeps), and
/// returns the one ledger row it left
/// (checked: the answer's request id, no secret, a plausible time).
async fn the_row_of(proxy: Proxy, reply: impl std::future::Future<Output = Reply>) -> (Reply, Value) {
    let reply = reply.await;
    let data_dir = proxy.data_dir().to_path_buf();
    proxy.stop().await;
    let rows = support::store::ledger_rows(&data_dir);
    assert_eq!(rows.len(), 1, "one row per request: {rows:#?}");
    let row = rows.into_iter().next().unwrap();
    assert_no_secret("a ledger row", &row.to_string());
    assert_eq!(Some(row["request_id"].as_str().unwrap()), reply.header("x-request-id"), "{row}");
    let now = support::store::now_ms();
    let at = row["unix_ms"].as_i64().unwrap();
    assert!(at <= now && at > now - 60_000, "arrival time in ms: {row}");
    assert!(row["duration_ms"].as_i64().unwrap() >= 0, "{row}");
    (reply, row)
}

/// A row of a request made with the proxy key names the default client.
///
/// `null` is accepted until Auth names the proxy key's client (the client
/// keys work); then this should want exactly `"default"`.
#[track_caller]
fn assert_proxy_key_client(row: &Value) {
    assert_eq!(row["client"], "default", "{row}");
}

/// The columns that say what happened. `outcome` is how the response's
/// body ended (`completed`: delivered whole, whatever its status).
fn summary(row: &Value) -> Value {
    json!({
        "route": row["route"],
        "provider": row["provider"],
        "model": row["model"],
        "key_id": row["key_id"],
        "status": row["status"],
        "outcome": row["outcome"],
        "error_code": row["error_code"],
        "attempts": row["attempts"],
        "tokens": [row["tokens_in"], row["tokens_out"], row["tokens_cached"]],
    })
}

#[tokio::test]
async fn a_whole_answer_leaves_one_row_with_its_key_and_tokens() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    let client = TestClient::http1();
    let request = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
    let (reply, row) = the_row_of(proxy, request).await;
    assert_proxy_key_client(&row);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        summary(&row),
        json!({
            "route": "chat/completions", "provider": "openai", "model": "gpt-4o-mini",
            "key_id": key_id(KEY_ONE), "status": 200, "outcome": "completed", "error_code": null,
            "attempts": 1, "tokens": [19, 10, 0],
        })
    );
    assert!(row["ttfb_ms"].is_i64(), "{row}");
    // The shipped price of gpt-4o-mini: $0.15 / $0.60 per million tokens.
    assert_eq!(row["unpriced"], 0, "{row}");
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!((cost - (19.0 * 0.15 + 10.0 * 0.60) / 1e6).abs() < 1e-12, "{row}");
}

#[tokio::test]
async fn a_streamed_answer_leaves_one_row_with_the_streams_usage() {
    let mock = MockUpstream::start().await;
    let mut events = stream_events("gpt-4o-mini");
    let usage = json!({
        "id": "chatcmpl-usage", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49,
                  "prompt_tokens_details": {"cached_tokens": 32}},
    });
    events.insert(events.len() - 1, format!("data: {usage}\n\n"));
    mock.push(Script::events(events));
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    let client = TestClient::http1();
    let request = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true)));
    let (reply, row) = the_row_of(proxy, request).await;
    assert_proxy_key_client(&row);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("[DONE]"), "the whole stream: {}", reply.text());
    assert_eq!(
        summary(&row),
        json!({
            "route": "chat/completions", "provider": "openai", "model": "gpt-4o-mini",
            "key_id": key_id(KEY_ONE), "status": 200, "outcome": "completed", "error_code": null,
            "attempts": 1, "tokens": [42, 7, 32],
        })
    );
}

#[tokio::test]
async fn an_upstream_failure_leaves_one_row_naming_the_last_key_tried() {
    let mock = MockUpstream::start().await;
    for key in [KEY_ONE, KEY_TWO] {
        mock.always_for(key, Script::server_error(500));
    }
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    let client = TestClient::http1();
    let request = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
    let (reply, row) = the_row_of(proxy, request).await;
    assert_proxy_key_client(&row);
    assert_eq!(reply.status, 502, "{}", reply.text());
    let last = mock.requests().last().and_then(|r| r.key.clone()).expect("the upstream was tried");
    assert_eq!(row["key_id"], key_id(&last), "{row}");
    assert_eq!(row["attempts"].as_i64(), Some(mock.requests().len() as i64), "{row}");
    let mut summary = summary(&row);
    summary.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "key_id" | "attempts" | "error_code"));
    assert_eq!(
        summary,
        json!({
            "route": "chat/completions", "provider": "openai", "model": "gpt-4o-mini",
            "status": 502, "outcome": "completed", "tokens": [0, 0, 0],
        })
    );
    assert_eq!(row["cost_usd"], Value::Null);
    assert_eq!(row["unpriced"], 0, "no usage: not unpriced either");
}

#[tokio::test]
async fn a_request_with_a_wrong_proxy_key_leaves_one_row_without_a_client() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    let client = TestClient::http1();
    let request = client.fetch(post(&proxy.url(CHAT), Auth::Bearer("not-the-key"), chat_body(MODEL, false)));
    let (reply, row) = the_row_of(proxy, request).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(mock.requests().is_empty());
    assert_eq!(row["client"], Value::Null, "refused before its key was known: {row}");
    assert_eq!(
        summary(&row),
        json!({
            "route": "chat/completions", "provider": null, "model": null,
            "key_id": null, "status": 401, "outcome": "completed", "error_code": "invalid_api_key",
            "attempts": 0, "tokens": [0, 0, 0],
        })
    );
}

#[tokio::test]
async fn a_bad_body_leaves_one_row_of_its_client() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    let client = TestClient::http1();
    let request = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), "{\"model\": "));
    let (reply, row) = the_row_of(proxy, request).await;
    assert_proxy_key_client(&row);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(mock.requests().is_empty());
    assert_eq!(
        summary(&row),
        json!({
            "route": "chat/completions", "provider": null, "model": null,
            "key_id": null, "status": 400, "outcome": "completed", "error_code": reply.json()["error"]["code"],
            "attempts": 0, "tokens": [0, 0, 0],
        })
    );
}

#[tokio::test]
async fn status_routes_leave_no_row_and_rows_accumulate_across_restarts() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let client = TestClient::http1();
    for run in 1..=2 {
        let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
        for _ in 0..3 {
            let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false))).await;
            assert_eq!(reply.status, 200);
        }
        let health = client.fetch(support::get(&proxy.url("/health"), Auth::None)).await;
        assert_eq!(health.status, 200);
        let models = client.fetch(support::get(&proxy.url("/v1/models"), Auth::Bearer(PROXY_KEY))).await;
        assert_eq!(models.status, 200);
        proxy.stop().await;
        let rows = support::store::ledger_rows(data.path());
        assert_eq!(rows.len(), 3 * run, "proxied requests only: {rows:#?}");
        assert!(rows.iter().all(|r| r["route"] == "chat/completions"));
    }
}
