//! The admin routes, end to end: `POST /v1/keys/{id}/disable|enable|reset`
//! change what the pool does with a key (a disabled key is never used, an
//! enabled one is used again, a reset clears cooldowns and invalid marks and
//! wakes requests waiting for the key), guarded by `ADMIN_API_KEY` when set
//! (the proxy key then gets 403 there but still reads `GET /v1/keys`), else
//! by the proxy key. Unknown key ids are 404.

mod support;

use std::collections::BTreeMap;

use http::Method;
use serde_json::Value;
use support::{
    ADMIN_KEY, Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, assert_no_secret,
    assert_openai_error, chat_body, chat_completion, get, key_id, keys_by_id, openai_env, post, request, within,
};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "openai/gpt-4o-mini";

async fn chat(client: &TestClient, proxy: &Proxy) -> Reply {
    client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false))).await
}

#[track_caller]
fn assert_answered(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), chat_completion("gpt-4o-mini"));
}

/// `POST /v1/keys/{id}/{action}` with `auth`.
async fn act(client: &TestClient, proxy: &Proxy, secret: &str, action: &str, auth: Auth<'_>) -> Reply {
    let path = format!("/v1/keys/{}/{action}", key_id(secret));
    client.fetch(request(Method::POST, &proxy.url(&path), auth)).await
}

/// [`act`] that must succeed: 200 and the key's new status, which is returned.
async fn act_ok(client: &TestClient, proxy: &Proxy, secret: &str, action: &str, auth: Auth<'_>) -> Value {
    let reply = act(client, proxy, secret, action, auth).await;
    assert_eq!(reply.status, 200, "{action}: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret("an admin answer", reply.text());
    let status = reply.json();
    assert_eq!(status["id"], key_id(secret), "{status}");
    status
}

async fn keys(client: &TestClient, proxy: &Proxy) -> BTreeMap<String, Value> {
    keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await
}

fn env_with_admin(mock: &MockUpstream, keys: usize) -> Vec<(String, String)> {
    let mut env = openai_env(mock, keys);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    env
}

#[tokio::test]
async fn disabled_key_is_not_used_until_enabled_again() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();

    // Without ADMIN_API_KEY the proxy key is the admin key, either way it is sent.
    let status = act_ok(&client, &proxy, KEY_ONE, "disable", Auth::Bearer(PROXY_KEY)).await;
    assert_eq!(status["state"], "disabled", "{status}");
    for _ in 0..5 {
        assert_answered(&chat(&client, &proxy).await);
    }
    assert_eq!(mock.keys_seen(), vec![KEY_TWO; 5], "a disabled key is never used");
    let statuses = keys(&client, &proxy).await;
    assert_eq!(statuses[&key_id(KEY_ONE)]["state"], "disabled");
    assert_eq!(statuses[&key_id(KEY_ONE)]["requests"], 0);
    assert_eq!(statuses[&key_id(KEY_TWO)]["state"], "ok");

    let status = act_ok(&client, &proxy, KEY_ONE, "enable", Auth::XApiKey(PROXY_KEY)).await;
    assert_eq!(status["state"], "ok", "{status}");
    assert_answered(&chat(&client, &proxy).await);
    assert_eq!(mock.keys_seen().last().map(String::as_str), Some(KEY_ONE), "enabled, and the least used");
}

#[tokio::test]
async fn every_key_disabled_is_503_and_enabling_one_serves_again() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();
    for key in [KEY_ONE, KEY_TWO] {
        act_ok(&client, &proxy, key, "disable", Auth::Bearer(PROXY_KEY)).await;
    }
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 503, "no_usable_key", "every key is invalid, disabled");
    assert!(mock.requests().is_empty());

    act_ok(&client, &proxy, KEY_TWO, "enable", Auth::Bearer(PROXY_KEY)).await;
    assert_answered(&chat(&client, &proxy).await);
    assert_eq!(mock.keys_seen(), [KEY_TWO]);
}

#[tokio::test]
async fn reset_clears_cooldowns_and_invalid_marks_and_the_key_serves_again() {
    let failures = [
        (Script::rate_limited(Some("600")), "cooling"),
        (Script::insufficient_quota(), "exhausted"),
        (Script::invalid_key(), "invalid"),
    ];
    for (failure, state) in failures {
        let mock = MockUpstream::start().await;
        let proxy = Proxy::start(openai_env(&mock, 2)).await;
        let client = TestClient::http1();
        mock.push_for(KEY_ONE, failure);
        for _ in 0..3 {
            assert_answered(&chat(&client, &proxy).await);
        }
        assert_eq!(mock.requests_with(KEY_ONE).len(), 1, "{state}");
        let before = &keys(&client, &proxy).await[&key_id(KEY_ONE)];
        assert_eq!(before["state"], state, "{before}");

        let after = act_ok(&client, &proxy, KEY_ONE, "reset", Auth::Bearer(PROXY_KEY)).await;
        assert_eq!(after["state"], "ok", "{after}");
        assert_eq!(after["cooldowns"], serde_json::json!([]), "{after}");
        assert!(after["invalid_until_unix_ms"].is_null(), "{after}");
        assert_eq!(after["requests"], 1, "counters are kept: {after}");
        assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)], after, "/v1/keys agrees");

        // Key one is the least used again, and no longer held back.
        assert_answered(&chat(&client, &proxy).await);
        assert_eq!(mock.keys_seen().last().map(String::as_str), Some(KEY_ONE), "{state}: used again after reset");
    }
}

#[tokio::test]
async fn reset_also_enables_a_disabled_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();
    act_ok(&client, &proxy, KEY_ONE, "disable", Auth::Bearer(PROXY_KEY)).await;
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 503, "no_usable_key", "every key is invalid, disabled");
    let status = act_ok(&client, &proxy, KEY_ONE, "reset", Auth::Bearer(PROXY_KEY)).await;
    assert_eq!(status["state"], "ok", "reset returns the key to ok: {status}");
    assert_answered(&chat(&client, &proxy).await);
}

#[tokio::test]
async fn reset_wakes_a_request_waiting_for_the_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();
    // Cooling for 30 s: inside the 60 s deadline, so the request waits.
    mock.push_for(KEY_ONE, Script::rate_limited(Some("30")));
    let waiting = {
        let (client, req) = (client.clone(), post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    };
    support::eventually("the key to cool", || async {
        keys(&client, &proxy).await[&key_id(KEY_ONE)]["state"] == "cooling"
    })
    .await;
    assert!(!waiting.is_finished(), "the request waits for the cooldown");

    act_ok(&client, &proxy, KEY_ONE, "reset", Auth::Bearer(PROXY_KEY)).await;
    // Bounded far below the 30 s cooldown: only the reset can have woken it.
    let reply = within("the waiting request after the reset", waiting).await.unwrap();
    assert_answered(&reply);
    assert_eq!(mock.requests().iter().map(|r| r.answer.as_str()).collect::<Vec<_>>(), ["status:429", "ok"]);
}

#[tokio::test]
async fn with_an_admin_key_the_proxy_key_gets_403_on_admin_routes_but_reads_keys() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(env_with_admin(&mock, 2)).await;
    let client = TestClient::http1();

    for action in ["disable", "enable", "reset"] {
        for auth in [Auth::Bearer(PROXY_KEY), Auth::XApiKey(PROXY_KEY)] {
            let reply = act(&client, &proxy, KEY_ONE, action, auth).await;
            assert_openai_error(&reply, 403, "admin_key_required", "needs the admin key (ADMIN_API_KEY)");
        }
    }
    // Nothing changed.
    for status in keys(&client, &proxy).await.values() {
        assert_eq!(status["state"], "ok", "{status}");
    }

    // The admin key works, sent either way, and reads the key list too.
    let status = act_ok(&client, &proxy, KEY_ONE, "disable", Auth::Bearer(ADMIN_KEY)).await;
    assert_eq!(status["state"], "disabled");
    let status = act_ok(&client, &proxy, KEY_ONE, "enable", Auth::XApiKey(ADMIN_KEY)).await;
    assert_eq!(status["state"], "ok");
    let listed = keys_by_id(&client, &proxy, Auth::Bearer(ADMIN_KEY)).await;
    assert_eq!(listed.len(), 2);

    // The proxy key still proxies.
    assert_answered(&chat(&client, &proxy).await);
}

#[tokio::test]
async fn admin_routes_without_a_key_or_with_a_wrong_one_are_401() {
    for env in [false, true] {
        let mock = MockUpstream::start().await;
        let proxy = Proxy::start(if env { env_with_admin(&mock, 1) } else { openai_env(&mock, 1) }).await;
        let client = TestClient::http1();
        let reply = act(&client, &proxy, KEY_ONE, "disable", Auth::None).await;
        assert_openai_error(&reply, 401, "invalid_api_key", "missing");
        for wrong in ["nope", KEY_ONE] {
            let reply = act(&client, &proxy, KEY_ONE, "disable", Auth::Bearer(wrong)).await;
            assert_openai_error(&reply, 401, "invalid_api_key", "invalid");
        }
        let reply = client.fetch(get(&proxy.url("/v1/keys"), Auth::None)).await;
        assert_openai_error(&reply, 401, "invalid_api_key", "missing");
        assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["state"], "ok", "admin key set: {env}");
    }
}

/// DESIGN: every error has "a clear message naming what to fix". On an
/// admin route guarded by ADMIN_API_KEY, a missing or wrong key is told to
/// send ADMIN_API_KEY (it was once told PROXY_API_KEY, which gets 403 there).
#[tokio::test]
async fn admin_route_401_names_the_admin_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(env_with_admin(&mock, 1)).await;
    let client = TestClient::http1();
    for auth in [Auth::None, Auth::Bearer("nope")] {
        let reply = act(&client, &proxy, KEY_ONE, "disable", auth).await;
        assert_openai_error(&reply, 401, "invalid_api_key", "ADMIN_API_KEY");
    }
}

#[tokio::test]
async fn unknown_key_ids_and_actions_are_404_and_other_methods_405() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(env_with_admin(&mock, 1)).await;
    let client = TestClient::http1();
    let admin = Auth::Bearer(ADMIN_KEY);

    for id in ["openai:00000000", "groq:00000000", "nope", "openai:"] {
        for action in ["disable", "enable", "reset"] {
            let path = format!("/v1/keys/{id}/{action}");
            let reply = client.fetch(request(Method::POST, &proxy.url(&path), admin)).await;
            assert_openai_error(&reply, 404, "key_not_found", &format!("no key with id `{id}`"));
        }
    }
    let id = key_id(KEY_ONE);
    for path in [format!("/v1/keys/{id}/explode"), format!("/v1/keys/{id}")] {
        let reply = client.fetch(request(Method::POST, &proxy.url(&path), admin)).await;
        assert_openai_error(&reply, 404, "unknown_url", "no route for");
        // Routing comes before auth: no key is needed to learn there is no such route.
        let reply = client.fetch(request(Method::POST, &proxy.url(&path), Auth::None)).await;
        assert_openai_error(&reply, 404, "unknown_url", "no route for");
    }
    let reply = client.fetch(get(&proxy.url(&format!("/v1/keys/{id}/disable")), admin)).await;
    assert_openai_error(&reply, 405, "method_not_allowed", "use POST");
    assert_eq!(reply.header("allow"), Some("POST"));

    // The `/v1` prefix is optional here too.
    let reply = client.fetch(request(Method::POST, &proxy.url(&format!("/keys/{id}/disable")), admin)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "disabled");
    // A client that percent-encodes the id's colon names the same key.
    let escaped = id.replace(':', "%3A");
    let reply = client.fetch(request(Method::POST, &proxy.url(&format!("/v1/keys/{escaped}/enable")), admin)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((reply.json()["id"].as_str(), reply.json()["state"].as_str()), (Some(id.as_str()), Some("ok")));
    assert!(mock.requests().is_empty(), "no admin route reaches the upstream");
}
