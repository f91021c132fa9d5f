//! Model aliases through the whole stack: `fast` is OpenAI's `gpt-4o-mini`
//! first and Groq's `llama-3.3-70b-versatile` (a second OpenAI-compatible
//! mock) when OpenAI's pool cannot serve; every answer says where it went.

mod support;

use std::time::Duration;

use keyrelay_layers::parse::AliasTarget;
use support::{
    Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, assert_no_secret, chat_body,
    get, key_id, key_id_of, openai_env, post,
};

const CHAT: &str = "/v1/chat/completions";
const GROQ_MODEL: &str = "llama-3.3-70b-versatile";

/// OpenAI (two keys) and Groq (one key), each on its own mock, and the
/// alias `fast` over both.
async fn start() -> (Proxy, MockUpstream, MockUpstream) {
    let (openai, groq) = (MockUpstream::start().await, MockUpstream::start().await);
    let mut env = openai_env(&openai, 2);
    env.push(("GROQ_API_BASE".to_owned(), groq.base()));
    env.push(("GROQ_API_KEY".to_owned(), KEY_THREE.to_owned()));
    let proxy = Proxy::start_with(env, |settings| {
        let targets = [AliasTarget::new("openai", "gpt-4o-mini"), AliasTarget::new("groq", GROQ_MODEL)];
        let aliases = keyrelay_layers::parse::Aliases::new().with("fast", targets);
        settings.route_defaults = settings.route_defaults.clone().with_aliases(aliases);
        // A rate limited pool is not waited for: the alias moves on.
        settings.max_cooldown_wait = Duration::from_secs(1);
    })
    .await;
    (proxy, openai, groq)
}

fn groq_key() -> String {
    key_id_of("groq", KEY_THREE)
}

#[tokio::test]
async fn every_answer_says_which_model_and_key_served_it() {
    let (proxy, openai, _groq) = start().await;
    let client = TestClient::http1();
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o", false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-keyrelay-model"), Some("openai/gpt-4o"));
    let key = reply.header("x-keyrelay-key").expect("the key header");
    assert!([key_id(KEY_ONE), key_id(KEY_TWO)].iter().any(|id| id == key), "{key}");
    assert_eq!(openai.keys_seen(), [if key == key_id(KEY_ONE) { KEY_ONE } else { KEY_TWO }]);
    for (name, value) in &reply.headers {
        assert_no_secret(name.as_str(), value.to_str().unwrap_or_default());
    }
    // A stream's head says it too, and so does an error about the request.
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", true))).await;
    assert_eq!((reply.status.as_u16(), reply.header("x-keyrelay-model")), (200, Some("openai/gpt-4o-mini")));
    openai.push(Script::client_error());
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", false))).await;
    assert_eq!((reply.status.as_u16(), reply.header("x-keyrelay-model")), (400, Some("openai/gpt-4o-mini")));
    assert!(reply.header("x-keyrelay-key").is_some());
}

#[tokio::test]
async fn an_alias_moves_to_its_next_target_when_every_key_is_rate_limited() {
    let (proxy, openai, groq) = start().await;
    for key in [KEY_ONE, KEY_TWO] {
        openai.always_for(key, Script::rate_limited(Some("60")));
    }
    let client = TestClient::http1();
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-keyrelay-model"), Some("groq/llama-3.3-70b-versatile"));
    assert_eq!(reply.header("x-keyrelay-key"), Some(groq_key().as_str()));
    let mut tried = openai.keys_seen();
    tried.sort();
    assert_eq!(tried, [KEY_ONE, KEY_TWO], "each OpenAI key once, then the alias moved on");
    let served = groq.requests_to("/chat/completions");
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].model().as_deref(), Some(GROQ_MODEL), "the body's model is the target's");

    // While OpenAI's keys cool, the next request goes straight through to Groq.
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", true))).await;
    assert_eq!((reply.status.as_u16(), reply.header("x-keyrelay-model")), (200, Some("groq/llama-3.3-70b-versatile")));
    assert_eq!(openai.keys_seen().len(), 2);

    // The metrics name the provider that served, and count the move.
    let text = client.fetch(support::get(&proxy.url("/metrics"), Auth::Bearer(PROXY_KEY))).await.text().to_owned();
    let has = |name: &str, labels: &[&str]| {
        text.lines().any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
    };
    assert!(has("keyrelay_requests_total", &["provider=\"groq\"", "status_class=\"2xx\""]), "{text}");
    assert!(has("keyrelay_fallbacks_total", &["from=\"openai\"", "to=\"groq\""]), "{text}");
}

#[tokio::test]
async fn an_alias_moves_to_its_next_target_when_every_key_is_invalid_on_the_dialect_routes_too() {
    let (proxy, openai, groq) = start().await;
    for key in [KEY_ONE, KEY_TWO] {
        openai.always_for(key, Script::invalid_key());
    }
    let client = TestClient::http1();
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-keyrelay-model"), Some("groq/llama-3.3-70b-versatile"));
    // Anthropic's Messages API takes the alias too (translated for Groq).
    let messages = r#"{"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello"}]}"#;
    let reply = client.fetch(post(&proxy.url("/v1/messages"), Auth::Bearer(PROXY_KEY), messages)).await;
    assert_eq!((reply.status.as_u16(), reply.header("x-keyrelay-model")), (200, Some("groq/llama-3.3-70b-versatile")));
    assert_eq!(reply.json()["type"], "message", "{}", reply.text());
    let served = groq.requests_to("/chat/completions");
    assert_eq!(served.len(), 2);
    assert!(served.iter().all(|r| r.model().as_deref() == Some(GROQ_MODEL)));
}

#[tokio::test]
async fn an_alias_with_no_target_left_answers_with_the_last_pools_error() {
    let (proxy, openai, groq) = start().await;
    for key in [KEY_ONE, KEY_TWO] {
        openai.always_for(key, Script::invalid_key());
    }
    groq.always_for(KEY_THREE, Script::rate_limited(Some("60")));
    let client = TestClient::http1();
    let reply = client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("fast", false))).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("`groq`"), "{}", reply.text());
}

#[tokio::test]
async fn aliases_are_listed_with_the_models() {
    let (proxy, _openai, _groq) = start().await;
    let client = TestClient::http1();
    let reply = client.fetch(get(&proxy.url("/v1/models"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let list = reply.json();
    let fast: Vec<_> = list["data"].as_array().unwrap().iter().filter(|m| m["id"] == "fast").collect();
    assert_eq!(fast.len(), 1, "{list}");
    assert_eq!((fast[0]["object"].as_str(), fast[0]["owned_by"].as_str()), (Some("model"), Some("keyrelay")));
    assert!(
        list["data"].as_array().unwrap().iter().any(|m| m["id"].as_str().is_some_and(|id| id.starts_with("openai/")))
    );
    let reply = client.fetch(get(&proxy.url("/v1/models/fast"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!((reply.status.as_u16(), reply.json()["id"].as_str()), (200, Some("fast")));
}
