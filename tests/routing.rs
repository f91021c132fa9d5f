//! Routing through the whole stack: keys bound to models (`LLM_KEYS`, the
//! round-robin proxies' `.env`), and priority tiers (free keys first).

mod support;

use keyrelay_layers::pool::{KeySettings, Secret};
use serde_json::json;
use support::{Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, chat_body, post};

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn llm_keys_bind_each_key_to_its_model_and_route_bare_models() {
    let mock = MockUpstream::start().await;
    let llm_keys = json!([
        {"api_key": KEY_ONE, "model": "gpt-4o-mini", "provider": "openai"},
        {"api_key": KEY_TWO, "model": "gpt-4.1", "provider": "openai"},
    ]);
    let env = vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("OPENAI_API_BASE".to_owned(), mock.base()),
        ("LLM_KEYS".to_owned(), llm_keys.to_string()),
    ];
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();
    for (model, key) in [("gpt-4o-mini", KEY_ONE), ("gpt-4.1", KEY_TWO), ("openai/gpt-4o-mini", KEY_ONE)] {
        for _ in 0..3 {
            let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(model, false))).await;
            assert_eq!(reply.status, 200, "{model}: {}", reply.text());
            let seen = mock.requests().pop().unwrap();
            assert_eq!(seen.key.as_deref(), Some(key), "{model}");
            assert_eq!(seen.model().as_deref(), Some(model.trim_start_matches("openai/")));
        }
    }
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/o3", false))).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "model_not_allowed");
}

#[tokio::test]
async fn the_free_tier_serves_first_and_the_paid_key_only_when_it_cannot() {
    let mock = MockUpstream::start().await;
    let env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()), ("OPENAI_API_BASE".to_owned(), mock.base())];
    let proxy = Proxy::start_with(env, |settings| {
        let openai = settings.providers.iter_mut().find(|p| p.provider.id().as_str() == "openai").unwrap();
        openai.keys =
            vec![(Secret::new(KEY_ONE), KeySettings::new()), (Secret::new(KEY_TWO), KeySettings::new().priority(1))];
        openai.configured = true;
    })
    .await;
    let client = TestClient::http1();
    let ask = || client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false)));
    for _ in 0..4 {
        assert_eq!(ask().await.status, 200);
    }
    assert_eq!(mock.keys_seen(), [KEY_ONE; 4], "least used would have spread them; the tier keeps them");
    // The free key is rate limited: the paid one takes over, once.
    mock.push_for(KEY_ONE, Script::rate_limited(Some("60")));
    assert_eq!(ask().await.status, 200);
    assert_eq!(mock.keys_seen()[4..], [KEY_ONE, KEY_TWO]);
    assert_eq!(ask().await.status, 200);
    assert_eq!(mock.keys_seen().last().map(String::as_str), Some(KEY_TWO), "while the free key cools");
}
