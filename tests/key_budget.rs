//! Upstream keys' budgets through the whole proxy: with a price for the
//! model, a key that spent its budget is left for the next one (the mock
//! records which key served), `/v1/keys` and `/metrics` show it, and with
//! every key over budget the client hears 429 with `Retry-After` at the end
//! of the budget's period, at once.

mod support;

use std::{sync::Arc, time::SystemTime};

use keyrelay::config::Settings;
use keyrelay_layers::{
    budget::{Budget, BudgetPeriod},
    pool::KeySettings,
    price::{Price, PriceTable},
};
use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, TestClient, chat_body, get, keys_by_id, openai_env, post,
};

/// The mock's chat answer reports 19 prompt and 10 completion tokens: at
/// $1000 per million each, $0.029 an answer.
const ANSWER_USD: f64 = 0.029;

/// Prices gpt-4o; KEY_ONE first (priority 0) with $0.05 a month, KEY_TWO
/// after it (priority 1) with $0.03 a month.
fn budgets(settings: &mut Settings) {
    let mut prices = PriceTable::default();
    prices.insert("openai/gpt-4o", Price::new(1000.0, 1000.0));
    settings.prices = Arc::new(prices);
    let openai = settings.providers.iter_mut().find(|p| p.provider.id().as_str() == "openai").unwrap();
    for (secret, key) in &mut openai.keys {
        let month = |usd| Budget::new(usd, BudgetPeriod::Month);
        *key = match secret.expose() {
            KEY_ONE => KeySettings::new().budget(month(0.05)),
            KEY_TWO => KeySettings::new().priority(1).budget(month(0.03)),
            other => panic!("an unexpected key of {} bytes", other.len()),
        };
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn a_key_over_budget_leaves_the_traffic_to_the_next_and_with_none_left_the_client_hears_429() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 2), budgets).await;
    let client = TestClient::http1();
    let chat = || {
        client.fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o", false),
        ))
    };
    for _ in 0..4 {
        let reply = chat().await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let served: Vec<String> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
    // KEY_ONE: $0.029 spent, $0.021 left (admitted), then $0.058: spent.
    // KEY_TWO takes over: $0.029, $0.001 left (admitted), then $0.058.
    assert_eq!(served, [KEY_ONE, KEY_ONE, KEY_TWO, KEY_TWO], "the first key until its budget is spent");

    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    let one = &keys[&mock.key_id(KEY_ONE)];
    assert_eq!((one["state"].as_str(), one["reason"].as_str()), (Some("exhausted"), Some("budget")), "{one}");
    let budget = &one["budget"];
    assert_eq!((budget["limit_usd"].as_f64(), budget["period"].as_str()), (Some(0.05), Some("month")), "{one}");
    assert!((budget["spent_usd"].as_f64().unwrap() - 2.0 * ANSWER_USD).abs() < 1e-9, "{budget}");
    assert_eq!((budget["remaining_usd"].as_f64(), budget["reserved_usd"].as_f64()), (Some(0.0), Some(0.0)));
    let resets_at = BudgetPeriod::Month.end(now_ms()).unwrap();
    assert_eq!(budget["resets_at_unix_ms"].as_u64(), Some(resets_at), "the first of next month, UTC");

    let metrics = client.fetch(get(&proxy.url("/metrics"), Auth::Bearer(PROXY_KEY))).await.text().to_owned();
    let gauge = |secret: &str| {
        let label = format!("key=\"{}\"", mock.key_id(secret));
        let line = metrics.lines().find(|l| l.starts_with("keyrelay_key_budget_remaining_usd{") && l.contains(&label));
        line.unwrap_or_else(|| panic!("no budget gauge for {label}: {metrics}")).rsplit(' ').next().unwrap().to_owned()
    };
    assert_eq!(gauge(KEY_ONE), "0");
    assert_eq!(gauge(KEY_TWO), "0", "spent too, by its last answer");

    let reply = chat().await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded", "{}", reply.text());
    let retry_after: u64 = reply.header("retry-after").expect("Retry-After").parse().unwrap();
    let want = resets_at.saturating_sub(now_ms()).div_ceil(1000);
    assert!(retry_after <= want + 1 && retry_after + 30 >= want, "Retry-After {retry_after}, period ends in {want} s");
    assert!(mock.take_requests().is_empty(), "no key was sent");
}

#[tokio::test]
async fn a_keys_spend_survives_a_restart() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), budgets).await;
    let client = TestClient::http1();
    for _ in 0..2 {
        let url = proxy.url("/v1/chat/completions");
        let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o", false))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(mock.take_requests().len(), 2);
    proxy.stop().await;

    // The same keys and budgets on the same data dir: the ledger's spend
    // table gives KEY_ONE its $0.058 back, so it is still spent.
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), budgets).await;
    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    let one = &keys[&mock.key_id(KEY_ONE)];
    assert_eq!((one["state"].as_str(), one["reason"].as_str()), (Some("exhausted"), Some("budget")), "{one}");
    assert!((one["budget"]["spent_usd"].as_f64().unwrap() - 2.0 * ANSWER_USD).abs() < 1e-9, "{one}");
    let url = proxy.url("/v1/chat/completions");
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o", false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served: Vec<String> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
    assert_eq!(served, [KEY_TWO], "the spent key stays out after the restart");
}
