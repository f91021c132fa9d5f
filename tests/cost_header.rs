//! Prices end to end: `x-keyrelay-cost-usd` on whole answers, priced from
//! the shipped table with config's prices over it, none on streams or
//! unpriced models, and the spend in `keyrelay_cost_usd_total`.

mod support;

use std::collections::BTreeMap;

use keyrelay::config::prices::{PriceConfig, price_table};
use support::{
    PROXY_KEY, chat_body,
    client::{Auth, TestClient, get, post},
    mock::{MockUpstream, Script},
    proxy::{Proxy, openai_env},
};

/// 1000 prompt tokens, 400 of them cached, and 200 completion tokens.
const CACHED_ANSWER: &str = r#"{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}"#;

#[tokio::test]
async fn whole_answers_carry_their_cost_from_the_table_and_the_spend_is_counted() {
    let mock = MockUpstream::start().await;
    // Config's price for gpt-4o-mini replaces the shipped one.
    let overrides = BTreeMap::from([(
        "openai/gpt-4o-mini".to_owned(),
        PriceConfig { input: 2.0, output: 8.0, cached_input: Some(0.5), max_output: None },
    )]);
    let proxy = Proxy::start_with(openai_env(&mock, 1), |settings| {
        settings.prices = price_table(&overrides).unwrap();
    })
    .await;
    let client = TestClient::http1();
    let chat = |model: &str, stream: bool| {
        post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body(model, stream))
    };

    // The mock's answer: 19 prompt tokens, 10 completion tokens.
    let reply = client.fetch(chat("openai/gpt-4o-mini", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-keyrelay-cost-usd"), Some("0.000118"), "19 x 2 + 10 x 8 per million");

    mock.push(Script::respond(200, CACHED_ANSWER).with_header("content-type", "application/json"));
    let reply = client.fetch(chat("openai/gpt-4o-mini", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-keyrelay-cost-usd"), Some("0.003"), "600 x 2 + 400 cached x 0.5 + 200 x 8");

    let reply = client.fetch(chat("openai/gpt-4o-mini", true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-keyrelay-cost-usd"), None, "a stream's cost is known at its end only");

    let reply = client.fetch(chat("openai/model-without-a-price", false)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-keyrelay-cost-usd"), None, "unpriced: no cost, not zero");

    let metrics = client.fetch(get(&proxy.url("/metrics"), Auth::None)).await;
    let text = metrics.text();
    let spent: f64 = text
        .lines()
        .filter(|line| line.starts_with("keyrelay_cost_usd_total{") && line.contains("provider=\"openai\""))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    // The two whole answers (the mock's stream reports no usage).
    assert!((spent - (0.000118 + 0.003)).abs() < 1e-12, "{text}");
    assert!(text.contains("keyrelay_unpriced_requests_total{provider=\"openai\",model=\"model-without-a-price\"} 1"));
    assert!(text.contains("# TYPE keyrelay_cost_usd_total counter"), "{text}");
}

#[tokio::test]
async fn the_shipped_table_prices_a_dated_model_by_its_family() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let reply = TestClient::http1()
        .fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini-2024-07-18", false),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let price = proxy.pool().prices().price("openai", "gpt-4o-mini").expect("shipped").to_owned();
    let expected = (19.0 * price.input + 10.0 * price.output) / 1e6;
    let header: f64 = reply.header("x-keyrelay-cost-usd").expect("priced").parse().unwrap();
    assert!((header - expected).abs() < 1e-8, "{header} against {expected}");
}
