//! `GET /metrics` after mixed traffic: valid Prometheus text that says which
//! key is failing, why and how often, and never a secret.

mod support;

use support::{
    KEY_ONE, KEY_TWO, PROXY_KEY, assert_no_secret, chat_body,
    client::{Auth, TestClient, get, post},
    key_id,
    mock::{MockUpstream, Script},
    proxy::{Proxy, openai_env},
};

/// Checks the text exposition format line by line: comments, then
/// `name{label="value",...} number`.
fn assert_prometheus_text(text: &str) {
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "bad value: {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line}");
        }
    }
}

fn series<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label))).collect()
}

fn value(line: &str) -> f64 {
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn metrics_tell_which_key_fails_why_and_how_often() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();
    mock.always_for(KEY_ONE, Script::rate_limited(Some("120")));
    for stream in [false, true, false, true] {
        let reply = client
            .fetch(post(
                &proxy.url("/v1/chat/completions"),
                Auth::Bearer(PROXY_KEY),
                chat_body("openai/gpt-4o-mini", stream),
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let bad = client.fetch(post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), "not json")).await;
    assert_eq!(bad.status, 400);

    // Loopback bind: open by default.
    let reply = client.fetch(get(&proxy.url("/metrics"), Auth::None)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/plain"));
    let text = reply.text();
    assert_prometheus_text(text);
    assert_no_secret("/metrics", text);

    let (one, two) = (key_id(KEY_ONE), key_id(KEY_TWO));
    let one_label = format!("key=\"{one}\"");
    let two_label = format!("key=\"{two}\"");
    let limited = series(text, "keyrelay_upstream_attempts_total", &[&one_label, "outcome=\"rate_limit\""]);
    assert_eq!(limited.len(), 1, "{text}");
    assert!(value(limited[0]) >= 1.0);
    let served = series(text, "keyrelay_upstream_attempts_total", &[&two_label, "outcome=\"success\""]);
    assert_eq!(served.iter().map(|l| value(l)).sum::<f64>(), 4.0, "{text}");
    let cooling = series(text, "keyrelay_cooldowns_total", &[&one_label, "class=\"rate_limit\""]);
    assert_eq!(cooling.len(), 1, "{text}");
    let state = series(text, "keyrelay_key_state", &[&one_label, "state=\"cooling\""]);
    assert_eq!(state.iter().map(|l| value(l)).collect::<Vec<_>>(), [1.0], "{text}");
    let ok = series(text, "keyrelay_key_state", &[&two_label, "state=\"ok\""]);
    assert_eq!(ok.iter().map(|l| value(l)).collect::<Vec<_>>(), [1.0], "{text}");
    assert!(
        !series(text, "keyrelay_requests_total", &["provider=\"openai\"", "status_class=\"2xx\""]).is_empty(),
        "{text}"
    );
    assert!(
        !series(
            text,
            "keyrelay_requests_total",
            &["provider=\"none\"", "status_class=\"4xx\"", "error_kind=\"invalid_json\""]
        )
        .is_empty(),
        "{text}"
    );
    assert!(!series(text, "keyrelay_time_to_first_byte_seconds_bucket", &["provider=\"openai\""]).is_empty(), "{text}");
    assert!(!series(text, "keyrelay_stream_chunks_total", &["provider=\"openai\""]).is_empty(), "{text}");
    // A model is a label once the upstream accepted it (issue 12: it was
    // `other` until someone called `GET /v1/models`): every successful
    // request and its tokens carry the model's name.
    let named = series(text, "keyrelay_requests_total", &["model=\"gpt-4o-mini\"", "status_class=\"2xx\""]);
    assert_eq!(named.iter().map(|l| value(l)).sum::<f64>(), 4.0, "{text}");
    assert!(series(text, "keyrelay_requests_total", &["model=\"other\"", "status_class=\"2xx\""]).is_empty(), "{text}");
    assert!(!series(text, "keyrelay_tokens_total", &["model=\"gpt-4o-mini\""]).is_empty(), "{text}");
}

#[tokio::test]
async fn metrics_can_require_the_proxy_key() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 1);
    env.push(("KEYRELAY_PROXY__METRICS_AUTH".to_owned(), "required".to_owned()));
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();
    assert_eq!(client.fetch(get(&proxy.url("/metrics"), Auth::None)).await.status, 401);
    assert_eq!(client.fetch(get(&proxy.url("/metrics"), Auth::Bearer(PROXY_KEY))).await.status, 200);
}
