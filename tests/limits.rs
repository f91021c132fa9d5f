//! Limits learned from the provider's own headers, through the whole
//! proxy: an answer that says its key has nothing left for the model keeps
//! the next requests off that key until the reset, so they never meet the
//! 429 the provider (here the mock) would send; `/v1/keys` shows what was
//! learned.

mod support;

use serde_json::json;
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient,
    chat_body, dialect_env, keys_by_id,
    mock::{anthropic, openai},
    post,
};

/// The key of each request the mock saw since the last call.
fn keys_since(mock: &MockUpstream) -> Vec<String> {
    mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect()
}

#[tokio::test]
async fn openai_saying_no_requests_remain_keeps_the_next_requests_off_that_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(dialect_env(&[&mock], 2)).await;
    let client = TestClient::http1();
    let chat = || {
        client.fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o", false),
        ))
    };
    // The first answer, whichever key it comes from, says the key is spent
    // for a minute.
    mock.push(
        Script::respond(200, openai::chat_completion("gpt-4o"))
            .with_header("x-ratelimit-limit-requests", "3")
            .with_header("x-ratelimit-remaining-requests", "0")
            .with_header("x-ratelimit-reset-requests", "1m0s")
            .with_header("x-ratelimit-remaining-tokens", "149984")
            .with_header("x-ratelimit-reset-tokens", "1m"),
    );
    assert_eq!(chat().await.status, 200);
    let spent = keys_since(&mock).remove(0);
    let other = if spent == KEY_ONE { KEY_TWO } else { KEY_ONE };
    // As it said: the mock would now answer that key 429.
    mock.always_for(&spent, Script::rate_limited(Some("60")));
    for _ in 0..4 {
        let reply = chat().await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // least_used would have sent two of the four to the spent key.
    assert_eq!(keys_since(&mock), [other; 4], "no request met the 429");

    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    let learned = &keys[&mock.key_id(&spent)]["learned"];
    assert_eq!(learned[0]["model"], "gpt-4o", "{learned}");
    assert_eq!(learned[0]["requests_remaining"], 0);
    assert_eq!(learned[0]["tokens_remaining"], 149_984, "{learned}");
    assert!(learned[0]["requests_reset_unix_ms"].as_u64().is_some(), "{learned}");
    assert_eq!(keys[&mock.key_id(other)]["learned"], json!([]));

    // And for the scraper: what each key has left, while before its reset.
    let text = client.fetch(support::get(&proxy.url("/metrics"), Auth::Bearer(PROXY_KEY))).await.text().to_owned();
    let spent_label = format!("key=\"{}\"", mock.key_id(&spent));
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("keyrelay_key_learned_remaining{")
                && l.contains(&spent_label)
                && l.contains("kind=\"requests\"")
        })
        .unwrap_or_else(|| panic!("no learned gauge for the spent key: {text}"));
    assert!(line.ends_with(" 0"), "{line}");
}

#[tokio::test]
async fn anthropic_saying_no_output_tokens_remain_keeps_the_next_requests_off_that_key() {
    let mock = MockUpstream::anthropic().await;
    let proxy = Proxy::start(dialect_env(&[&mock], 2)).await;
    let client = TestClient::http1();
    let message = || {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 256,
            "messages": [{"role": "user", "content": "Say hello"}]
        });
        let mut req = post(&proxy.url("/v1/messages"), Auth::XApiKey(PROXY_KEY), body.to_string());
        req.headers_mut().insert("anthropic-version", "2023-06-01".parse().unwrap());
        client.fetch(req)
    };
    // Far in the future: believed for a day at most, longer than this test.
    let reset = "2099-01-01T00:00:00Z";
    mock.push(
        Script::respond(200, anthropic::message_text())
            .with_header("anthropic-ratelimit-requests-remaining", "49")
            .with_header("anthropic-ratelimit-requests-reset", reset)
            .with_header("anthropic-ratelimit-output-tokens-remaining", "0")
            .with_header("anthropic-ratelimit-output-tokens-reset", reset),
    );
    assert_eq!(message().await.status, 200);
    let spent = keys_since(&mock).remove(0);
    let other = if spent == ANTHROPIC_KEY_ONE { ANTHROPIC_KEY_TWO } else { ANTHROPIC_KEY_ONE };
    mock.always_for(&spent, anthropic::rate_limited(Some("60")));
    for _ in 0..4 {
        let reply = message().await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(keys_since(&mock), [other; 4], "no request met the 429");

    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    let learned = &keys[&mock.key_id(&spent)]["learned"][0];
    assert_eq!((&learned["requests_remaining"], &learned["tokens_remaining"]), (&json!(49), &json!(0)), "{learned}");
}
