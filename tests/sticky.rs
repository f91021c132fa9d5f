//! Session stickiness through the whole proxy: a conversation that names
//! itself (keyrelay's `x-session-id`, Claude Code's `metadata.user_id`,
//! Codex's `session_id` header) stays on one key turn after turn, where its
//! prompt cache is; it moves when that key is rate limited, and stays on the
//! new key; a request without a signal is balanced as before.

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy,
    TestClient, chat_body, dialect_env, mock::anthropic, post,
};

const CHAT: &str = "/v1/chat/completions";

/// A chat turn, with `x-session-id` when `session` is given.
async fn chat_turn(proxy: &Proxy, client: &TestClient, session: Option<&str>) {
    let mut req = post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o", false));
    if let Some(session) = session {
        req.headers_mut().insert("x-session-id", session.parse().unwrap());
    }
    let reply = client.fetch(req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// The key of each request the mock saw since the last call.
fn keys_since(mock: &MockUpstream) -> Vec<String> {
    mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect()
}

fn tally(keys: &[String]) -> BTreeMap<&str, usize> {
    let mut tally = BTreeMap::new();
    for key in keys {
        *tally.entry(key.as_str()).or_default() += 1;
    }
    tally
}

#[tokio::test]
async fn an_openai_conversation_with_x_session_id_stays_on_one_of_three_keys() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(dialect_env(&[&mock], 3)).await;
    let client = TestClient::http1();
    for _ in 0..6 {
        chat_turn(&proxy, &client, Some("conversation-a")).await;
    }
    let seen = keys_since(&mock);
    assert_eq!(tally(&seen).len(), 1, "least_used would have spread six turns over three keys: {seen:?}");
    let home = seen[0].clone();

    // Requests without a signal are balanced: they go to the idle keys.
    for _ in 0..4 {
        chat_turn(&proxy, &client, None).await;
    }
    let unsigned = keys_since(&mock);
    let others: Vec<&str> = [KEY_ONE, KEY_TWO, KEY_THREE].into_iter().filter(|&k| k != home).collect();
    assert_eq!(tally(&unsigned), others.iter().map(|&k| (k, 2)).collect(), "{unsigned:?}");

    // The conversation is still where it was, and a second one has its own key.
    chat_turn(&proxy, &client, Some("conversation-a")).await;
    assert_eq!(keys_since(&mock), [home.as_str()]);
    chat_turn(&proxy, &client, Some("conversation-b")).await;
    chat_turn(&proxy, &client, Some("conversation-b")).await;
    let b = keys_since(&mock);
    assert!(b[0] == b[1] && b[0] != home, "{b:?}");
}

/// A Claude Code turn: a bare model, and the session in `metadata.user_id`.
fn claude_code_turn(turn: usize) -> String {
    json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": format!("Turn {turn}: fix the bug.")}],
        "metadata": {"user_id": "user_5dd07c33da27e6d2968d94ea20bf47a7b090b6b158b82328d54da2909a108e84_account__session_d2e70091-3007-41a3-a916-cb8b0d3098de"}
    })
    .to_string()
}

#[tokio::test]
async fn a_claude_code_conversation_stays_on_one_anthropic_key_and_moves_for_good_on_a_429() {
    let mock = MockUpstream::anthropic().await;
    let proxy = Proxy::start(dialect_env(&[&mock], 2)).await;
    let client = TestClient::http1();
    let turn = |n: usize| {
        let mut req = post(&proxy.url("/v1/messages"), Auth::XApiKey(PROXY_KEY), claude_code_turn(n));
        req.headers_mut().insert("anthropic-version", "2023-06-01".parse().unwrap());
        client.fetch(req)
    };
    for n in 0..4 {
        assert_eq!(turn(n).await.status, 200);
    }
    let seen = keys_since(&mock);
    assert_eq!(tally(&seen).len(), 1, "{seen:?}");
    let home = seen[0].clone();
    let other = if home == ANTHROPIC_KEY_ONE { ANTHROPIC_KEY_TWO } else { ANTHROPIC_KEY_ONE };

    // Its key is rate limited: the turn is retried on the other key...
    mock.push_for(&home, anthropic::rate_limited(Some("60")));
    let reply = turn(4).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(keys_since(&mock), [home.clone(), other.to_owned()]);
    // ...and the conversation stays there, even once its old key is back.
    let reset = format!("/v1/keys/{}/reset", mock.key_id(&home));
    assert_eq!(client.fetch(post(&proxy.url(&reset), Auth::Bearer(PROXY_KEY), "")).await.status, 200);
    for n in 5..8 {
        assert_eq!(turn(n).await.status, 200);
    }
    assert_eq!(keys_since(&mock), [other; 3]);
}

#[tokio::test]
async fn a_codex_conversation_named_by_its_session_id_header_stays_on_one_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(dialect_env(&[&mock], 3)).await;
    let client = TestClient::http1();
    for turn in 0..4 {
        let body = json!({"model": "gpt-5-codex", "input": format!("turn {turn}"), "store": false}).to_string();
        let mut req = post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body);
        req.headers_mut().insert("session_id", "0199a213-81c0-7800-8aa1-bbab2a035a53".parse().unwrap());
        let reply = client.fetch(req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let seen = keys_since(&mock);
    assert_eq!(tally(&seen).len(), 1, "{seen:?}");
}
