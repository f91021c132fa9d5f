//! `POST /v1/token-count`: `{model, messages}` -> `{"token_count": N,
//! "method": "exact" | "estimate", ...}`. Exact for OpenAI-family models,
//! checked against tiktoken's own chat count (the OpenAI cookbook's
//! formula); an estimate for Anthropic and Gemini models; OpenAI-shaped
//! errors for bad input; the proxy key required; no upstream involved.

mod support;

use serde_json::{Value, json};
use support::{
    Auth, MockUpstream, PROXY_KEY, Proxy, Reply, TestClient, assert_no_secret, assert_openai_error, keys_by_id,
    mock::{MockUpstream as DialectMock, dialect_env},
    openai_env, post, request,
};
use tiktoken_rs::{ChatCompletionRequestMessage, CoreBPE, FunctionCall, num_tokens_from_messages};

const COUNT: &str = "/v1/token-count";

/// An OpenAI mock plus Anthropic and Gemini ones, one key each.
async fn setup() -> (MockUpstream, DialectMock, DialectMock, Proxy, TestClient) {
    let openai = MockUpstream::start().await;
    let ant = DialectMock::anthropic().await;
    let gem = DialectMock::gemini().await;
    let mut env = dialect_env(&[&ant, &gem], 1);
    env.extend(openai_env(&openai, 1).into_iter().filter(|(k, _)| k != "PROXY_API_KEY"));
    let proxy = Proxy::start(env).await;
    (openai, ant, gem, proxy, TestClient::http1())
}

async fn count(client: &TestClient, proxy: &Proxy, body: &Value) -> Reply {
    client.fetch(post(&proxy.url(COUNT), Auth::Bearer(PROXY_KEY), body.to_string())).await
}

/// A successful count: checks the answer's shape and returns it.
#[track_caller]
fn counted(reply: &Reply, model: &str, method: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secret("a token count", reply.text());
    let body = reply.json();
    assert_eq!(body["model"], model, "{body}");
    assert_eq!(body["method"], method, "{body}");
    assert!(body["token_count"].is_u64(), "{body}");
    body
}

fn tokens(value: &Value) -> usize {
    value["token_count"].as_u64().expect("token_count") as usize
}

/// The OpenAI cookbook's example conversation: system prompts with names,
/// a user turn, an assistant turn.
fn conversation() -> Value {
    json!([
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
        {"role": "assistant", "content": "Ça marche — 日本語もOK 👍"}
    ])
}

/// `messages` as tiktoken's chat counter takes them.
fn for_tiktoken(messages: &Value) -> Vec<ChatCompletionRequestMessage> {
    messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatCompletionRequestMessage {
            role: m["role"].as_str().unwrap().to_owned(),
            content: m["content"].as_str().map(str::to_owned),
            name: m["name"].as_str().map(str::to_owned),
            tool_calls: m["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| FunctionCall {
                    name: c["function"]["name"].as_str().unwrap().to_owned(),
                    arguments: c["function"]["arguments"].as_str().unwrap().to_owned(),
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

fn bpe_tokens(bpe: &CoreBPE, text: &str) -> usize {
    bpe.encode_with_special_tokens(text).len()
}

#[tokio::test]
async fn openai_models_are_counted_exactly_as_tiktoken_counts_a_chat() {
    let (_openai, _, _, proxy, client) = setup().await;
    let messages = conversation();
    for (model, encoding) in [
        ("gpt-4o", "O200kBase"),
        ("gpt-4o-mini", "O200kBase"),
        ("gpt-4.1", "O200kBase"),
        ("gpt-4", "Cl100kBase"),
        ("gpt-3.5-turbo", "Cl100kBase"),
    ] {
        let id = format!("openai/{model}");
        let body = counted(&count(&client, &proxy, &json!({"model": id, "messages": messages})).await, &id, "exact");
        assert_eq!(body["encoding"], encoding, "{model}: {body}");
        let expected = num_tokens_from_messages(model, &for_tiktoken(&messages)).expect("tiktoken counts it");
        assert_eq!(tokens(&body), expected, "{model}: as tiktoken counts it");
    }

    // And by hand, for gpt-4o: 3 per message, 1 per name, 3 to prime the reply.
    let bpe = tiktoken_rs::o200k_base_singleton();
    let by_hand = 3 + messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().map_or(0, |n| 1 + bpe_tokens(bpe, n));
            3 + bpe_tokens(bpe, m["role"].as_str().unwrap()) + bpe_tokens(bpe, m["content"].as_str().unwrap()) + name
        })
        .sum::<usize>();
    let body = count(&client, &proxy, &json!({"model": "openai/gpt-4o", "messages": messages})).await.json();
    assert_eq!(tokens(&body), by_hand);
    assert!((60..200).contains(&by_hand), "a plausible count for five short messages: {by_hand}");
}

#[tokio::test]
async fn more_text_and_more_messages_count_more() {
    let (_openai, _, _, proxy, client) = setup().await;
    for model in ["openai/gpt-4o", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"] {
        let mut last = 0;
        for words in [1, 2, 8, 64, 512] {
            let text = vec!["hello"; words].join(" ");
            let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
            let n = tokens(&count(&client, &proxy, &body).await.json());
            assert!(n > last, "{model}: {words} words counted {n}, no more than fewer words ({last})");
            last = n;
        }
        let one = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let two =
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]});
        let (one, two) =
            (tokens(&count(&client, &proxy, &one).await.json()), tokens(&count(&client, &proxy, &two).await.json()));
        assert!(two >= one + 4, "{model}: a message costs its overhead, role and text: {one} -> {two}");
    }
}

#[tokio::test]
async fn tool_calls_are_counted() {
    let (_openai, _, _, proxy, client) = setup().await;
    let plain = json!([{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": ""}]);
    let mut with_call = plain.clone();
    let arguments = r#"{"city": "Paris", "unit": "celsius"}"#;
    with_call[1]["tool_calls"] =
        json!([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]);
    let plain = tokens(&count(&client, &proxy, &json!({"model": "openai/gpt-4o", "messages": plain})).await.json());
    let reply = count(&client, &proxy, &json!({"model": "openai/gpt-4o", "messages": with_call})).await;
    let called = tokens(&counted(&reply, "openai/gpt-4o", "exact"));
    let bpe = tiktoken_rs::o200k_base_singleton();
    let call = bpe_tokens(bpe, "get_weather") + bpe_tokens(bpe, arguments);
    assert!((plain + call..=plain + call + 1).contains(&called), "{plain} + {call} for the call, got {called}");
}

#[tokio::test]
async fn other_providers_and_unknown_models_get_an_estimate() {
    let (_openai, _, _, proxy, client) = setup().await;
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(10);
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]);
    let chars = "Be brief.".len() + text.len();
    for model in ["anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash", "openai/my-fine-tuned-llama"] {
        let body =
            counted(&count(&client, &proxy, &json!({"model": model, "messages": messages})).await, model, "estimate");
        assert!(body["encoding"].is_null(), "{body}");
        let n = tokens(&body);
        assert!((chars / 4..=chars / 4 + 20).contains(&n), "{model}: about 4 characters a token: {n} for {chars}");
    }

    // An image cannot be counted exactly, even for an OpenAI model.
    let image = json!([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]}]);
    let body = counted(
        &count(&client, &proxy, &json!({"model": "openai/gpt-4o", "messages": image})).await,
        "openai/gpt-4o",
        "estimate",
    );
    let text_only = json!([{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]);
    let exact = counted(
        &count(&client, &proxy, &json!({"model": "openai/gpt-4o", "messages": text_only})).await,
        "openai/gpt-4o",
        "exact",
    );
    assert!(tokens(&body) > tokens(&exact), "the image adds tokens: {body} vs {exact}");
}

#[tokio::test]
async fn bad_requests_are_openai_shaped_client_errors() {
    let (_openai, _, _, proxy, client) = setup().await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"messages": messages}).to_string(), "missing_model", "model"),
        (json!({"model": "gpt-4o", "messages": messages}).to_string(), "invalid_model", "gpt-4o"),
        (json!({"model": "nosuch/gpt-4o", "messages": messages}).to_string(), "unknown_provider", "nosuch"),
        ("{not json".to_owned(), "invalid_json", ""),
    ];
    for (body, code, words) in cases {
        let reply = client.fetch(post(&proxy.url(COUNT), Auth::Bearer(PROXY_KEY), body.clone())).await;
        assert_openai_error(&reply, 400, code, words);
    }
    let reply = client.fetch(request(http::Method::GET, &proxy.url(COUNT), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 405, "{}", reply.text());
}

#[tokio::test]
async fn the_proxy_key_is_required_and_no_upstream_is_asked() {
    let (openai, ant, gem, proxy, client) = setup().await;
    let body = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for auth in [Auth::None, Auth::Bearer("wrong-key"), Auth::XApiKey("wrong-key")] {
        let reply = client.fetch(post(&proxy.url(COUNT), auth, body.clone())).await;
        assert_openai_error(&reply, 401, "invalid_api_key", "");
    }
    let reply = client.fetch(post(&proxy.url(COUNT), Auth::XApiKey(PROXY_KEY), body.clone())).await;
    counted(&reply, "openai/gpt-4o", "exact");
    for model in ["anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        counted(&count(&client, &proxy, &body).await, model, "estimate");
    }
    assert!(openai.requests().is_empty() && ant.requests().is_empty() && gem.requests().is_empty());
    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    assert!(keys.values().all(|k| k["requests"] == 0), "counting charges no key: {keys:?}");
}

#[tokio::test]
async fn counting_needs_no_key_of_the_provider() {
    // Only Anthropic has keys; OpenAI and Gemini are built in without any.
    let ant = DialectMock::anthropic().await;
    let proxy = Proxy::start(dialect_env(&[&ant], 1)).await;
    let client = TestClient::http1();
    for (model, method) in [("openai/gpt-4o", "exact"), ("gemini/gemini-2.5-flash", "estimate")] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let n = tokens(&counted(&count(&client, &proxy, &body).await, model, method));
        assert!((7..=10).contains(&n), "{model}: one short message: {n}");
    }
    assert!(ant.requests().is_empty());
}
