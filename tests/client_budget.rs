//! A client's budget end to end, under concurrent load: the maximum cost
//! reserved when a request is admitted, the real cost charged when it ends,
//! never more than one request past the budget; and the ledger rows of a
//! client's requests, refused ones included.

mod support;

use http::StatusCode;
use serde_json::{Value, json};
use support::{
    ADMIN_KEY, KEY_ONE, MockUpstream, Proxy, Script, Valve,
    client::{Auth, TestClient, assert_openai_error, get, post},
    dialect_env, within,
};

const CI_KEY: &str = "kr-ci-bot-SECRET-client-7777";
const BUDGET: f64 = 0.01;
/// $100 per million tokens, in and out: the mock's answer (19 prompt and
/// 10 completion tokens) costs $0.0029.
const COST: f64 = 29.0 * 100.0 / 1e6;

fn config() -> String {
    format!(
        r#"
[[clients]]
name = "ci-bot"
key = "{CI_KEY}"
models = ["openai/gpt-4o-mini"]
budget_usd = {BUDGET}
budget_period = "total"

[prices."openai/gpt-4o-mini"]
input = 100.0
output = 100.0
"#
    )
}

fn body() -> String {
    json!({"model": "openai/gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

/// What one request reserves: its prompt estimate (body length / 4) and
/// its `max_tokens`, at $100 per million.
fn reservation() -> f64 {
    ((body().len() / 4) as f64 + 20.0) * 100.0 / 1e6
}

#[tokio::test]
async fn concurrent_requests_stop_at_the_budget_with_at_most_one_request_over() {
    let mock = MockUpstream::start().await;
    let mut env = dialect_env(&[&mock], 1);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with_config(env, &config(), Some(data.path())).await;
    let client = TestClient::http1();
    let url = proxy.url("/v1/chat/completions");

    // Wave one: twenty at once while the upstream holds every answer. Only
    // as many as the reservations leave room for get through.
    let valve = Valve::new();
    mock.always_for(KEY_ONE, Script::Hold(valve.clone()));
    let wave: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.fetch(post(&url, Auth::Bearer(CI_KEY), body())).await })
        })
        .collect();
    let admitted = (BUDGET / reservation()).ceil() as usize;
    assert!(admitted >= 2, "the test needs a budget of a few requests: {admitted}");
    support::eventually("the admitted requests to reach the upstream", || async { mock.requests().len() == admitted })
        .await;
    valve.open();
    let mut statuses = Vec::new();
    for reply in wave {
        let reply = within("a wave request", reply).await.unwrap();
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_openai_error(&reply, 429, "budget_exceeded", "client `ci-bot` has spent its budget of $0.01");
            assert!(reply.header("retry-after").is_none(), "a total budget never resets");
        }
        statuses.push(reply.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, admitted, "{statuses:?}");
    assert_eq!(mock.requests().len(), admitted, "refused requests reach no upstream key");
    mock.clear_for(KEY_ONE);

    // Then one at a time until refused: the spend may pass the budget by
    // one request's cost at most.
    let mut served = admitted;
    loop {
        let reply = client.fetch(post(&url, Auth::Bearer(CI_KEY), body())).await;
        if reply.status != StatusCode::OK {
            assert_openai_error(&reply, 429, "budget_exceeded", "ci-bot");
            break;
        }
        served += 1;
        assert!(served < 20, "the budget never stopped the client");
    }
    let spent = served as f64 * COST;
    assert!((BUDGET..BUDGET + COST).contains(&spent), "spent {spent} for a budget of {BUDGET}");

    let listed = client.fetch(get(&proxy.url("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY))).await.json();
    let ci = &listed["data"][0];
    assert_eq!(ci["name"], "ci-bot");
    let budget = &ci["budget"];
    assert!((budget["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9, "{budget}");
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
    assert_eq!(budget["remaining_usd"], 0.0, "{budget}");
    assert_eq!(budget["period"], "total");

    // The metrics say the same, by client.
    let metrics = client.fetch(get(&proxy.url("/metrics"), Auth::None)).await;
    let text = metrics.text();
    let value = |prefix: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(r#"keyrelay_client_budget_remaining_usd{client="ci-bot"}"#), 0.0);
    let cost = value(r#"keyrelay_cost_usd_total{client="ci-bot",provider="openai",model="gpt-4o-mini"}"#);
    assert!((cost - spent).abs() < 1e-9, "{cost} vs {spent}");
    let refused = text
        .lines()
        .filter(|l| l.starts_with("keyrelay_requests_total{") && l.contains(r#"client="ci-bot""#))
        .filter(|l| l.contains(r#"error_kind="budget_exceeded""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(refused as usize, 20 - admitted + 1, "{text}");

    // The ledger: a row for every request, each with the client's name;
    // the served with their key, tokens and cost, the refused with why.
    proxy.stop().await;
    let rows = support::store::ledger_rows(data.path());
    assert_eq!(rows.len(), 20 + served - admitted + 1, "one row per request");
    assert!(rows.iter().all(|r| r["client"] == "ci-bot"), "{rows:?}");
    let (served_rows, refused): (Vec<&Value>, Vec<&Value>) = rows.iter().partition(|r| r["status"] == 200);
    assert_eq!(served_rows.len(), served);
    for row in served_rows {
        assert_eq!(row["key_id"], support::key_id(KEY_ONE), "{row}");
        assert_eq!((row["tokens_in"].as_i64(), row["tokens_out"].as_i64()), (Some(19), Some(10)), "{row}");
        assert!((row["cost_usd"].as_f64().unwrap() - COST).abs() < 1e-12, "{row}");
    }
    for row in refused {
        assert_eq!((row["status"].as_i64(), row["error_code"].as_str()), (Some(429), Some("budget_exceeded")), "{row}");
        assert_eq!(row["key_id"], Value::Null, "no key was spent: {row}");
        assert_eq!(row["cost_usd"], Value::Null, "{row}");
    }
    let spend = support::store::rows(
        &support::store::open(data.path()),
        "SELECT usd FROM spend WHERE kind = 'client' AND name = 'ci-bot' AND period = 'total'",
    );
    assert!((spend[0]["usd"].as_f64().unwrap() - spent).abs() < 1e-9, "{spend:?}");

    // A restart remembers the spend: still refused.
    let mut env = dialect_env(&[&mock], 1);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    let proxy = Proxy::start_with_config(env, &config(), Some(data.path())).await;
    let reply = client.fetch(post(&proxy.url("/v1/chat/completions"), Auth::Bearer(CI_KEY), body())).await;
    assert_openai_error(&reply, 429, "budget_exceeded", "ci-bot");
}
