//! Resilience through the whole stack: the mock upstream fails per pool key
//! (429 with and without a hint, 402 and `insufficient_quota`, 401, 5xx,
//! closed and reset connections, a hang, a stream that breaks or stalls, a
//! 400) and each scenario checks what the client gets (status, OpenAI error
//! shape and code, `Retry-After`), which keys the upstream saw, and what
//! `GET /v1/keys` says about every key afterwards.
//!
//! Nothing here waits for a real cooldown: hints are long and the tests
//! read the cooldowns off `/v1/keys`; the few real waits (one short cooldown,
//! which the pool stretches to its 1 s minimum, and deadlines of 100-200 ms)
//! are short, and every wait is bounded.
//!
//! Over 600 lines on purpose: the scenarios share one setup and one way of
//! reading `/v1/keys`, and each test file is a binary of its own to link.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use support::{
    Auth, Gate, INVALID_REQUEST, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Reply, Script, SseReader,
    TestClient, Then, Valve, assert_no_secret, assert_openai_error, chat_body, chat_completion, eventually, key_id,
    keys_by_id, openai_env, post, stream_events, within,
};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "openai/gpt-4o-mini";
/// The model as the upstream and `/v1/keys` name it.
const UPSTREAM_MODEL: &str = "gpt-4o-mini";

async fn setup(keys: usize) -> (MockUpstream, Proxy, TestClient) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, keys)).await;
    (mock, proxy, TestClient::http1())
}

async fn chat_as(client: &TestClient, proxy: &Proxy, model: &str, stream: bool) -> Reply {
    client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(model, stream))).await
}

async fn chat(client: &TestClient, proxy: &Proxy) -> Reply {
    chat_as(client, proxy, MODEL, false).await
}

/// A successful non-streaming answer: 200 and the mock's body, untouched.
#[track_caller]
fn assert_answered(reply: &Reply, upstream_model: &str) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), chat_completion(upstream_model));
}

async fn keys(client: &TestClient, proxy: &Proxy) -> BTreeMap<String, Value> {
    keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await
}

/// The status of the pool key `secret` in a `/v1/keys` map.
#[track_caller]
fn status<'a>(keys: &'a BTreeMap<String, Value>, secret: &str) -> &'a Value {
    keys.get(&key_id(secret)).unwrap_or_else(|| panic!("no status for {}: {keys:?}", key_id(secret)))
}

/// `status["cooldowns"]` as a list.
fn cooldowns(status: &Value) -> &Vec<Value> {
    status["cooldowns"].as_array().unwrap_or_else(|| panic!("`cooldowns` is a list: {status}"))
}

/// The one cooldown of a key, for `model`, with `reason`; returns its
/// remaining seconds.
#[track_caller]
fn only_cooldown(status: &Value, model: &str, reason: &str) -> u64 {
    let list = cooldowns(status);
    assert_eq!(list.len(), 1, "one cooldown: {status}");
    assert_eq!(list[0]["model"], model, "{status}");
    assert_eq!(list[0]["reason"], reason, "{status}");
    let until = list[0]["until_unix_ms"].as_u64().expect("until_unix_ms");
    let remaining = list[0]["remaining_secs"].as_u64().expect("remaining_secs");
    let now = now_unix_ms();
    let shown = until.saturating_sub(now) / 1000;
    assert!(shown.abs_diff(remaining) <= 2, "until_unix_ms and remaining_secs agree: {status} (now {now})");
    remaining
}

/// A healthy key: `ok`, no cooldown, not invalid, nothing in flight.
#[track_caller]
fn assert_healthy(status: &Value) {
    assert_eq!(status["state"], "ok", "{status}");
    assert!(cooldowns(status).is_empty(), "no cooldown: {status}");
    assert!(status["invalid_until_unix_ms"].is_null(), "{status}");
    assert_eq!(status["in_flight"], 0, "{status}");
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Seconds from now until the next 00:00 UTC (the default daily reset).
fn secs_to_utc_midnight() -> u64 {
    // The harness moves the daily reset twelve hours from the test's start.
    support::secs_to_daily_reset()
}

/// An HTTP date (IMF-fixdate), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[test]
fn http_dates_are_formatted_like_rfc_9110() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
}

/// Whether `a` and `b` (seconds until a daily reset) agree within `slack`,
/// also across midnight.
fn same_reset(a: u64, b: u64, slack: u64) -> bool {
    let diff = a.abs_diff(b) % 86_400;
    diff <= slack || diff >= 86_400 - slack
}

/// The `Retry-After` header in whole seconds.
#[track_caller]
fn retry_after(reply: &Reply) -> u64 {
    let value = reply.header("retry-after").unwrap_or_else(|| panic!("a Retry-After header: {:?}", reply.headers));
    value.parse().unwrap_or_else(|_| panic!("Retry-After in seconds: {value:?}"))
}

/// The answers the mock gave `key`, in order.
fn answers(mock: &MockUpstream, key: &str) -> Vec<String> {
    mock.requests_with(key).into_iter().map(|r| r.answer).collect()
}

// ---- rate limits -----------------------------------------------------------

#[tokio::test]
async fn rate_limited_key_cools_for_its_retry_after_and_only_for_that_model() {
    let (mock, proxy, client) = setup(2).await;
    mock.push_for(KEY_ONE, Script::rate_limited(Some("120")));

    for _ in 0..10 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    // Key one was chosen once (it would be again, as the least used, were
    // it not cooling), answered 429, and was never sent another request.
    assert_eq!(answers(&mock, KEY_ONE), ["status:429"], "key one is left alone while cooling");
    assert_eq!(answers(&mock, KEY_TWO), vec!["ok"; 10]);

    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_eq!(one["state"], "cooling", "{one}");
    let remaining = only_cooldown(one, UPSTREAM_MODEL, "rate_limit");
    assert!(support::near_capped(remaining, 120, 10), "cooling for the 120 s the provider asked: {one}");
    assert_eq!(one["requests"], 1, "{one}");
    assert_eq!(one["today"]["failures_rate_limit"], 1, "{one}");
    assert_eq!(one["today"]["successes"], 0, "{one}");
    assert_eq!(one["in_flight"], 0, "{one}");
    let two = status(&keys, KEY_TWO);
    assert_healthy(two);
    assert_eq!(two["requests"], 10, "{two}");
    assert_eq!(two["today"]["successes"], 10, "{two}");

    // The cooldown is for (key, model): another model still uses key one,
    // the least used.
    assert_answered(&chat_as(&client, &proxy, "openai/gpt-4o", false).await, "gpt-4o");
    let seen = mock.requests_with(KEY_ONE);
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[1].model().as_deref(), seen[1].answer.as_str()), (Some("gpt-4o"), "ok"));
    let keys = self::keys(&client, &proxy).await;
    only_cooldown(status(&keys, KEY_ONE), UPSTREAM_MODEL, "rate_limit");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let (mock, proxy, client) = setup(2).await;
    let at = http_date(now_unix_ms() / 1000 + 300);
    mock.push_for(KEY_ONE, Script::rate_limited(Some(&at)));
    for _ in 0..3 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:429"]);
    let keys = keys(&client, &proxy).await;
    let remaining = only_cooldown(status(&keys, KEY_ONE), UPSTREAM_MODEL, "rate_limit");
    assert!(support::near_capped(remaining, 300, 10), "until the date given: {remaining} s");
}

#[tokio::test]
async fn stream_request_rotates_before_its_200_goes_out() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::rate_limited(Some("120")));
    for _ in 0..3 {
        let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true))).await;
        assert_eq!(res.status(), 200);
        let events: Vec<String> =
            SseReader::new(res.into_body()).rest().await.iter().map(|e| format!("{e}\n\n")).collect();
        assert_eq!(events, stream_events(UPSTREAM_MODEL), "the whole stream, from key two");
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:429"]);
    assert_eq!(answers(&mock, KEY_TWO), vec!["ok"; 3]);
}

#[tokio::test]
async fn rate_limit_without_a_hint_cools_for_ten_seconds() {
    let (mock, proxy, client) = setup(2).await;
    mock.push_for(KEY_ONE, Script::rate_limited(None));
    for _ in 0..4 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:429"]);
    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_eq!(one["state"], "cooling", "{one}");
    let remaining = only_cooldown(one, UPSTREAM_MODEL, "rate_limit");
    assert!((8..=10).contains(&remaining), "the first rung of the ladder is 10 s: {one}");
    assert_healthy(status(&keys, KEY_TWO));
}

#[tokio::test]
async fn only_key_cooling_briefly_is_waited_for_inside_the_deadline() {
    let (mock, proxy, client) = setup(1).await;
    // OpenAI's own reset header, in its Go-style duration (the pool keeps a
    // key away at least 1 s whatever the hint, so this waits about 1 s).
    mock.push_for(KEY_ONE, Script::rate_limited(None).with_header("x-ratelimit-reset-requests", "200ms"));

    let reply = within("the request to wait out the short cooldown", chat(&client, &proxy)).await;
    assert_answered(&reply, UPSTREAM_MODEL);
    let seen = mock.requests_with(KEY_ONE);
    assert_eq!(seen.iter().map(|r| r.answer.as_str()).collect::<Vec<_>>(), ["status:429", "ok"]);
    // A lower bound only: the key was not tried again before its cooldown ended.
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(200), "tried again after {gap:?}, inside its 200 ms cooldown");

    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_healthy(one);
    assert_eq!(one["today"]["failures_rate_limit"], 1, "{one}");
    assert_eq!(one["today"]["successes"], 1, "{one}");
}

#[tokio::test]
async fn every_key_rate_limited_past_the_deadline_is_429_with_the_earliest_retry_after() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::rate_limited(Some("300")));
    mock.always_for(KEY_TWO, Script::rate_limited(Some("600")));

    let reply = chat(&client, &proxy).await;
    assert_openai_error(
        &reply,
        429,
        "rate_limit_exceeded",
        "every key of provider `openai` is cooling down for model `gpt-4o-mini`",
    );
    let after = retry_after(&reply);
    assert!(support::near_capped(after, 300, 10), "Retry-After names when the first key frees: {after}");
    assert_eq!(mock.requests().len(), 2, "each key tried once");

    // While they cool, requests are refused at once, without a call upstream.
    for stream in [false, true] {
        let reply = chat_as(&client, &proxy, MODEL, stream).await;
        assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
        assert!(support::near_capped(retry_after(&reply), 300, 10));
    }
    assert_eq!(mock.requests().len(), 2);

    let keys = keys(&client, &proxy).await;
    for key in [KEY_ONE, KEY_TWO] {
        let s = status(&keys, key);
        assert_eq!(s["state"], "cooling", "{s}");
        only_cooldown(s, UPSTREAM_MODEL, "rate_limit");
        assert_eq!(s["in_flight"], 0, "{s}");
    }
}

/// DESIGN: when every key is cooling past the deadline the request "fails at
/// once with 429 and Retry-After set to when the first key frees". With three
/// or more keys rate limited within 10 s the pool also pauses the provider
/// for 10 s; that pause must not hide the keys' own, longer cooldowns (it
/// once did: `Retry-After: 10`, or with a longer deadline a 10 s wait for
/// a 429 anyway).
#[tokio::test]
async fn every_key_of_three_rate_limited_is_429_with_when_the_first_key_frees() {
    let mock = MockUpstream::start().await;
    // A deadline shorter than the provider pause, so nothing waits.
    let proxy = Proxy::start_with(openai_env(&mock, 3), |s| s.global_timeout = Duration::from_secs(5)).await;
    let client = TestClient::http1();
    for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
        mock.always_for(key, Script::rate_limited(Some("300")));
    }

    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    assert_eq!(mock.requests().len(), 3, "each key tried once");
    let after = retry_after(&reply);
    assert!(support::near_capped(after, 300, 10), "Retry-After names when the first key frees (~300 s), not {after} s");
}

#[tokio::test]
async fn three_keys_rate_limited_at_once_pause_the_provider_for_every_model() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 3), |s| s.global_timeout = Duration::from_secs(5)).await;
    let client = TestClient::http1();
    for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
        mock.push_for(key, Script::rate_limited(Some("300")));
    }
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    assert_eq!(mock.requests().len(), 3);

    // Every key failed on one model only, but three at once means the limit
    // is the provider's: another model waits out the short pause too
    // (longer than this deadline), without burning a key.
    let reply = chat_as(&client, &proxy, "openai/gpt-4o", false).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    let after = retry_after(&reply);
    assert!((1..=10).contains(&after), "Retry-After at the end of the pause: {after}");
    assert_eq!(mock.requests().len(), 3, "no key is tried while the provider is paused");
}

// ---- quota -------------------------------------------------------------------

#[tokio::test]
async fn quota_failures_mark_the_key_exhausted_until_the_daily_reset() {
    for (script, what) in [(Script::payment_required(), "402"), (Script::insufficient_quota(), "insufficient_quota")] {
        let (mock, proxy, client) = setup(2).await;
        mock.push_for(KEY_ONE, script);
        for _ in 0..4 {
            assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
        }
        assert_eq!(mock.requests_with(KEY_ONE).len(), 1, "{what}: key one left alone once out of quota");

        let keys = keys(&client, &proxy).await;
        let one = status(&keys, KEY_ONE);
        assert_eq!(one["state"], "exhausted", "{what}: {one}");
        let remaining = only_cooldown(one, UPSTREAM_MODEL, "quota");
        assert!(same_reset(remaining, secs_to_utc_midnight(), 5), "{what}: exhausted until 00:00 UTC: {one}");
        assert_eq!(one["today"]["failures_quota"], 1, "{what}: {one}");
        assert_healthy(status(&keys, KEY_TWO));
    }
}

#[tokio::test]
async fn every_key_out_of_quota_is_429_with_retry_after_at_the_daily_reset() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::insufficient_quota());
    mock.always_for(KEY_TWO, Script::payment_required());

    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    assert!(same_reset(retry_after(&reply), secs_to_utc_midnight(), 5), "Retry-After at the daily reset");
    assert_eq!(mock.requests().len(), 2);

    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    assert_eq!(mock.requests().len(), 2, "no call upstream while every key is out of quota");
    let keys = keys(&client, &proxy).await;
    for key in [KEY_ONE, KEY_TWO] {
        assert_eq!(status(&keys, key)["state"], "exhausted");
    }
}

/// A key out of quota for a model stays so until the reset, even when a
/// request sent to it before the quota ran out comes back with a plain 429
/// rate limit afterwards (the shorter rate-limit cooldown once replaced the
/// quota one: `/v1/keys` said `cooling` for 10 s instead of `exhausted`, and
/// the key was tried again long before its quota returned).
#[tokio::test]
async fn quota_cooldown_is_not_shortened_by_a_late_rate_limit_answer() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| s.global_timeout = Duration::from_secs(5)).await;
    let client = TestClient::http1();
    let valve = Valve::new();
    mock.push_for(KEY_ONE, Script::HoldThen(valve.clone(), Box::new(Script::rate_limited(None))));
    mock.push_for(KEY_ONE, Script::insufficient_quota());

    // The first request is out with the key when the second finds its quota gone.
    let early = {
        let (client, req) = (client.clone(), post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    };
    eventually("the first request held upstream", || async { mock.in_flight(KEY_ONE) == 1 }).await;
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    let keys_now = keys(&client, &proxy).await;
    assert_eq!(status(&keys_now, KEY_ONE)["state"], "exhausted");

    // Now the early request's answer: a plain rate limit.
    valve.open();
    let reply = within("the early request", early).await.unwrap();
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    let keys_now = keys(&client, &proxy).await;
    let one = status(&keys_now, KEY_ONE);
    assert_eq!(one["state"], "exhausted", "still out of quota: {one}");
    let remaining = only_cooldown(one, UPSTREAM_MODEL, "quota");
    assert!(same_reset(remaining, secs_to_utc_midnight(), 5), "until the daily reset: {one}");
    assert!(same_reset(retry_after(&reply), secs_to_utc_midnight(), 5), "Retry-After at the reset");
}

// ---- credentials ---------------------------------------------------------------

#[tokio::test]
async fn refused_key_is_marked_invalid_and_never_chosen_again_for_any_model() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::invalid_key());

    for model in ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4o-mini", "openai/o3-mini"] {
        let reply = chat_as(&client, &proxy, model, false).await;
        assert_answered(&reply, model.strip_prefix("openai/").unwrap());
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:401"], "one 401, then never again, whatever the model");
    assert_eq!(mock.requests_with(KEY_TWO).len(), 4);

    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_eq!(one["state"], "invalid", "{one}");
    let until = one["invalid_until_unix_ms"].as_u64().unwrap_or_else(|| panic!("invalid until: {one}"));
    let left = until.saturating_sub(now_unix_ms()) / 1000;
    assert!((290..=300).contains(&left), "the first invalid cooldown is 5 min: {left} s");
    assert_eq!(one["today"]["failures_credential"], 1, "{one}");
    assert_healthy(status(&keys, KEY_TWO));
}

#[tokio::test]
async fn every_key_invalid_is_503_no_usable_key() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::invalid_key());
    mock.always_for(KEY_TWO, Script::invalid_key());

    for stream in [false, true] {
        let reply = chat_as(&client, &proxy, MODEL, stream).await;
        assert_openai_error(&reply, 503, "no_usable_key", "every key is invalid, disabled");
        if let Some(after) = reply.header("retry-after") {
            let after: u64 = after.parse().expect("Retry-After in seconds");
            assert!((1..=300).contains(&after), "no later than the first probe: {after}");
        }
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:401"]);
    assert_eq!(answers(&mock, KEY_TWO), ["status:401"]);
    let keys = keys(&client, &proxy).await;
    assert!(keys.values().all(|s| s["state"] == "invalid"), "{keys:?}");
}

#[tokio::test]
async fn providers_route_counts_keys_by_their_true_state() {
    let (mock, proxy, client) = setup(3).await;
    mock.push_for(KEY_ONE, Script::rate_limited(Some("120")));
    mock.push_for(KEY_TWO, Script::invalid_key());
    for _ in 0..4 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    let path = format!("/v1/keys/{}/disable", key_id(KEY_THREE));
    let reply = client.fetch(support::request(http::Method::POST, &proxy.url(&path), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let keys = keys(&client, &proxy).await;
    let states: Vec<&str> =
        [KEY_ONE, KEY_TWO, KEY_THREE].iter().map(|k| status(&keys, k)["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["cooling", "invalid", "disabled"]);
    let reply = client.fetch(support::get(&proxy.url("/v1/providers"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200);
    let openai = reply.json()["data"].as_array().unwrap().iter().find(|p| p["id"] == "openai").cloned().unwrap();
    assert_eq!(
        openai["keys"],
        serde_json::json!({"total": 3, "ok": 0, "cooling": 1, "exhausted": 0, "invalid": 1, "disabled": 1}),
        "{openai}"
    );
    assert_eq!(openai["in_flight"], 0);

    // Nothing usable for this model now: key one frees first.
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
}

// ---- transient failures ----------------------------------------------------------

#[tokio::test]
async fn server_error_once_is_retried_on_the_same_key_and_succeeds() {
    let (mock, proxy, client) = setup(2).await;
    for (i, status_code) in [500, 502, 503, 529].into_iter().enumerate() {
        mock.push(Script::server_error(status_code));
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
        let seen = mock.requests();
        let pair = &seen[2 * i..];
        assert_eq!(pair.len(), 2, "{status_code}: one failure, one retry");
        assert_eq!(pair[0].bearer(), pair[1].bearer(), "{status_code}: retried on the same key");
        assert_eq!((pair[0].answer.as_str(), pair[1].answer.as_str()), (&*format!("status:{status_code}"), "ok"));
    }

    let keys = keys(&client, &proxy).await;
    let mut transient = 0;
    for s in keys.values() {
        assert_healthy(s);
        transient += s["today"]["failures_transient"].as_u64().unwrap();
        assert_eq!(s["today"]["failures_transient"], s["today"]["successes"], "{s}");
    }
    assert_eq!(transient, 4, "each failure counted once: {keys:?}");
}

#[tokio::test]
async fn closed_and_reset_connections_are_retried() {
    for script in [Script::Close, Script::Reset] {
        let label = script.label();
        let (mock, proxy, client) = setup(2).await;
        mock.push(script.clone());
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
        let seen = mock.requests();
        assert_eq!(seen.iter().map(|r| r.answer.as_str()).collect::<Vec<_>>(), [label.as_str(), "ok"]);
        assert_eq!(seen[0].bearer(), seen[1].bearer(), "{label}: retried on the same key");

        // A key that always fails this way: retried once, then the other key.
        mock.always_for(KEY_ONE, script);
        for _ in 0..4 {
            assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
        }
        let keys = keys(&client, &proxy).await;
        let one = status(&keys, KEY_ONE);
        assert_eq!(one["in_flight"], 0, "{one}");
        assert_healthy(status(&keys, KEY_TWO));
    }
}

#[tokio::test]
async fn reset_connection_twice_is_502_naming_the_reset() {
    let (mock, proxy, client) = setup(1).await;
    mock.always_for(KEY_ONE, Script::Reset);
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 502, "upstream_failed", "upstream `openai` failed");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_ascii_lowercase();
    assert!(message.contains("reset"), "the cause is named: {message}");
    assert_eq!(answers(&mock, KEY_ONE), ["reset", "reset"], "one attempt and one same-key retry");
}

#[tokio::test]
async fn repeated_server_errors_cool_the_key_briefly_and_requests_go_elsewhere() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::server_error(500));
    for _ in 0..8 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    // One same-key retry per request, and the third failure in a row cools it.
    assert_eq!(answers(&mock, KEY_ONE), vec!["status:500"; 3]);
    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_eq!(one["state"], "cooling", "{one}");
    let remaining = only_cooldown(one, UPSTREAM_MODEL, "transient");
    assert!(remaining <= 10, "a brief cooldown: {one}");
    assert_eq!(one["today"]["failures_transient"], 3, "{one}");
    assert_healthy(status(&keys, KEY_TWO));
}

#[tokio::test]
async fn every_key_failing_is_502_with_the_last_error_and_no_secret() {
    let (mock, proxy, client) = setup(2).await;
    mock.always_for(KEY_ONE, Script::server_error(500));
    mock.always_for(KEY_TWO, Script::server_error(503));

    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 502, "upstream_failed", "upstream `openai` failed on every attempt (4 in all)");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("from key openai:"), "names the key by id: {message}");
    assert!(message.contains("The server had an error"), "keeps the provider's message: {message}");
    assert_eq!(mock.requests().len(), 4, "each key tried twice");

    let keys = keys(&client, &proxy).await;
    for s in keys.values() {
        assert_healthy(s);
        assert_eq!(s["today"]["failures_transient"], 2, "{s}");
    }
}

#[tokio::test]
async fn echoed_key_in_the_last_upstream_error_is_redacted() {
    let (mock, proxy, client) = setup(2).await;
    // Whichever key goes first, the last error echoes a pool key.
    mock.push_for(KEY_ONE, Script::server_error(500));
    mock.push_for(KEY_ONE, Script::server_error(500));
    mock.push_for(KEY_TWO, Script::invalid_key());

    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 502, "upstream_failed", "last error");
    assert!(reply.text().contains("[redacted]"), "{}", reply.text());
    assert_eq!(mock.requests().len(), 3);
}

// ---- the deadline ------------------------------------------------------------------

/// A proxy with a global deadline of `ms` milliseconds.
async fn impatient(keys: usize, ms: u64) -> (MockUpstream, Proxy, TestClient) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, keys), |s| s.global_timeout = Duration::from_millis(ms)).await;
    (mock, proxy, TestClient::http1())
}

#[tokio::test]
async fn hanging_key_is_504_within_the_deadline_and_the_other_key_answers() {
    let (mock, proxy, client) = impatient(2, 200).await;
    mock.always_for(KEY_ONE, Script::Hang);

    // Least used: the first request goes to one key, the second to the other.
    let mut outcomes = Vec::new();
    for stream in [false, true] {
        let reply = within("an answer inside the deadline", chat_as(&client, &proxy, MODEL, stream)).await;
        let last = mock.requests().pop().expect("the upstream saw it").bearer().unwrap().to_owned();
        if reply.status == 504 {
            assert_openai_error(&reply, 504, "deadline_exceeded", "deadline of 0.2 s");
            assert_eq!(last, KEY_ONE, "only the hanging key times out");
        } else {
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(last, KEY_TWO);
        }
        outcomes.push(reply.status.as_u16());
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes, [200, 504]);

    let keys = keys(&client, &proxy).await;
    for s in keys.values() {
        assert_eq!(s["in_flight"], 0, "a timed-out request releases its key: {s}");
    }
    // The proxy gave up on the hanging upstream request too.
    eventually("the hung upstream request to be dropped", || async { mock.in_flight(KEY_ONE) == 0 }).await;
}

/// The deadline is keyrelay's own (issue 12): a slow answer it cut off is
/// not its key's fault. Counting it once made a long generation that met
/// the deadline cost the key a strike per client retry, cool it after
/// three, and turn the next request into a 429 that said "rate limit".
/// So a hang the deadline cuts is a 504 and nothing else: no failure, no
/// cooldown, and the key still serves.
#[tokio::test]
async fn a_deadline_the_proxy_imposed_blames_no_key() {
    let (mock, proxy, client) = impatient(1, 100).await;
    mock.always_for(KEY_ONE, Script::Hang);
    for _ in 0..4 {
        let reply = chat(&client, &proxy).await;
        assert_openai_error(&reply, 504, "deadline_exceeded", "deadline");
    }
    assert_eq!(mock.requests_with(KEY_ONE).len(), 4, "the key was never cooled nor benched");
    let keys_now = keys(&client, &proxy).await;
    let one = status(&keys_now, KEY_ONE);
    assert_eq!(one["today"]["failures_transient"], 0, "{one}");
    assert_eq!(one["state"], "ok", "{one}");
}

// ---- client errors -------------------------------------------------------------------

#[tokio::test]
async fn client_error_passes_through_and_the_key_stays_healthy() {
    let (mock, proxy, client) = setup(2).await;
    for stream in [false, true] {
        mock.push(Script::client_error());
        let reply = chat_as(&client, &proxy, MODEL, stream).await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.text(), INVALID_REQUEST, "byte for byte");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    assert_eq!(mock.requests().len(), 2, "a client error is not retried");

    let keys = keys(&client, &proxy).await;
    let mut client_failures = 0;
    for s in keys.values() {
        assert_healthy(s);
        assert_eq!(s["today"]["failures_transient"], 0, "{s}");
        client_failures += s["today"]["failures_client"].as_u64().unwrap();
    }
    assert_eq!(client_failures, 2);
    // And both keys still serve.
    for _ in 0..4 {
        assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    }
    let used: std::collections::BTreeSet<String> = mock.keys_seen().into_iter().skip(2).collect();
    assert_eq!(used.len(), 2, "{used:?}");
}

#[tokio::test]
async fn large_client_error_body_passes_through_whole() {
    let (mock, proxy, client) = setup(1).await;
    // Far beyond what the proxy peeks at to classify an error.
    let message = "x".repeat(64 * 1024);
    let body = format!(
        r#"{{"error":{{"message":"{message}","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}}}"#
    );
    mock.push(Script::respond(400, body.clone()));
    let reply = chat(&client, &proxy).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.text() == body, "byte for byte");
    assert_healthy(status(&keys(&client, &proxy).await, KEY_ONE));
}

#[tokio::test]
async fn provider_words_echoed_from_the_request_do_not_penalise_the_key() {
    let (mock, proxy, client) = setup(2).await;
    // Upstream errors that quote the client's own input: a model name and a
    // message full of words that elsewhere mean a bad key, quota or a limit.
    let model = "invalid_api_key-insufficient_quota-rate_limit_exceeded";
    let not_found = format!(
        r#"{{"error":{{"message":"The model `{model}` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}}}"#
    );
    let bad = r#"{"error":{"message":"Invalid 'messages[0].content': 'API key not valid, quota exceeded, rate limit, credit balance' is not allowed.","type":"invalid_request_error","param":"messages","code":"invalid_value"}}"#;
    for (status_code, body) in [(404, not_found.as_str()), (400, bad)] {
        mock.push(Script::respond(status_code, body.to_owned()));
        let reply = chat_as(&client, &proxy, &format!("openai/{model}"), false).await;
        assert_eq!(reply.status.as_u16(), status_code, "{}", reply.text());
        assert_eq!(reply.text(), body, "byte for byte");
    }
    assert_eq!(mock.requests().len(), 2, "a client error is not retried on another key");
    let keys = keys(&client, &proxy).await;
    let mut client_failures = 0;
    for s in keys.values() {
        assert_healthy(s);
        client_failures += s["today"]["failures_client"].as_u64().unwrap();
    }
    assert_eq!(client_failures, 2, "{keys:?}");
}

#[tokio::test]
async fn embeddings_rotate_like_chat() {
    let (mock, proxy, client) = setup(2).await;
    mock.push_for(KEY_ONE, Script::rate_limited(Some("120")));
    mock.push_for(KEY_TWO, Script::server_error(503));
    let body = r#"{"model":"openai/text-embedding-3-small","input":"hello"}"#;
    for _ in 0..3 {
        let reply = client.fetch(post(&proxy.url("/v1/embeddings"), Auth::Bearer(PROXY_KEY), body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["model"], "text-embedding-3-small");
    }
    assert_eq!(answers(&mock, KEY_ONE), ["status:429"]);
    assert_eq!(answers(&mock, KEY_TWO), ["status:503", "ok", "ok", "ok"]);
    let keys = keys(&client, &proxy).await;
    only_cooldown(status(&keys, KEY_ONE), "text-embedding-3-small", "rate_limit");
}

// ---- streams -------------------------------------------------------------------------

/// Reads a stream that the upstream broke after `k` events.
async fn read_broken_stream(client: &TestClient, proxy: &Proxy, k: usize) {
    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true))).await;
    assert_eq!(res.status(), 200, "the upstream's 200 went out before the break");
    assert_eq!(res.headers()["content-type"], "text/event-stream; charset=utf-8");
    let events = SseReader::new(res.into_body()).rest().await;
    let expected = stream_events(UPSTREAM_MODEL);
    assert_eq!(events.len(), k + 1, "k = {k}: the k events, then one error event: {events:#?}");
    for (got, want) in events.iter().zip(&expected[..k]) {
        assert_eq!(format!("{got}\n\n"), *want, "k = {k}");
    }
    let last: Value = serde_json::from_str(events[k].strip_prefix("data: ").expect("a data event"))
        .unwrap_or_else(|err| panic!("the last event is JSON ({err}): {}", events[k]));
    assert_eq!(last["error"]["code"], "stream_broken", "{last}");
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert!(last["error"]["message"].is_string(), "{last}");
    assert_no_secret("a stream's error event", &events.join("\n"));
}

#[tokio::test]
async fn stream_breaking_after_k_chunks_ends_with_one_error_event_and_counts_against_its_key() {
    let (mock, proxy, client) = setup(1).await;
    for (i, k) in [0, 2, 4].into_iter().enumerate() {
        mock.push_for(KEY_ONE, Script::BreakAfter(k));
        read_broken_stream(&client, &proxy, k).await;

        let keys = keys(&client, &proxy).await;
        let one = status(&keys, KEY_ONE);
        assert_eq!(one["today"]["failures_transient"], i as u64 + 1, "the break is counted: {one}");
        assert_eq!(one["in_flight"], 0, "{one}");
        // One break after a good start is no reason to cool the key.
        assert_eq!(one["state"], "ok", "{one}");
    }
    assert_eq!(mock.requests().len(), 3, "a stream that started is not retried");

    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true))).await;
    let events: Vec<String> = SseReader::new(res.into_body()).rest().await.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(events, stream_events(UPSTREAM_MODEL), "the key still streams");
}

#[tokio::test]
async fn stream_stalling_past_the_idle_timeout_ends_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| s.stream_idle_timeout = Duration::from_millis(200)).await;
    let client = TestClient::http1();
    let gate = Gate::new();
    mock.push(Script::Stream { before: 2, gate: gate.clone(), then: Then::Finish });

    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true))).await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res.into_body()).rest().await;
    assert_eq!(events.len(), 3, "two events, then the error: {events:#?}");
    let last: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_broken", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("sent nothing"), "{last}");
    gate.open();

    let keys = keys(&client, &proxy).await;
    let one = status(&keys, KEY_ONE);
    assert_eq!(one["today"]["failures_transient"], 1, "{one}");
    assert_eq!(one["in_flight"], 0, "{one}");
}

// ---- concurrency -------------------------------------------------------------------------

fn capped_env(mock: &MockUpstream, keys: usize, cap: usize) -> Vec<(String, String)> {
    let mut env = openai_env(mock, keys);
    env.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), cap.to_string()));
    env
}

/// Sends `n` requests at once (every other one a stream); each task reads
/// its whole answer.
fn send_many(client: &TestClient, proxy: &Proxy, n: usize) -> Vec<tokio::task::JoinHandle<(bool, Reply)>> {
    (0..n)
        .map(|i| {
            let client = client.clone();
            let stream = i % 2 == 1;
            let req = post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, stream));
            tokio::spawn(async move { (stream, Reply::read(client.send(req).await).await) })
        })
        .collect()
}

async fn assert_all_answered(tasks: Vec<tokio::task::JoinHandle<(bool, Reply)>>) {
    let expected_stream: String = stream_events(UPSTREAM_MODEL).concat();
    for task in tasks {
        let (stream, reply) = within("a request to finish", task).await.expect("the request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
        if stream {
            assert_eq!(reply.text(), expected_stream);
        } else {
            assert_eq!(reply.text(), chat_completion(UPSTREAM_MODEL));
        }
    }
}

#[tokio::test]
async fn concurrency_cap_per_key_is_never_exceeded_and_every_permit_comes_back() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(capped_env(&mock, 3, 2)).await;
    let client = TestClient::http1();
    let keys_all = [KEY_ONE, KEY_TWO, KEY_THREE];

    for wave in 0..2 {
        let valve = Valve::new();
        for key in keys_all {
            mock.always_for(key, Script::Hold(valve.clone()));
        }
        let before = mock.requests().len();
        let tasks = send_many(&client, &proxy, 30);

        // Two per key reach the upstream and are held; the rest wait in the proxy.
        eventually("six requests held upstream", || async { mock.total_in_flight() == 6 }).await;
        for key in keys_all {
            assert_eq!(mock.in_flight(key), 2, "wave {wave}: two in flight with each key");
        }
        let statuses = keys(&client, &proxy).await;
        for key in keys_all {
            assert_eq!(status(&statuses, key)["in_flight"], 2, "wave {wave}");
        }
        assert_eq!(mock.requests().len() - before, 6, "wave {wave}: nobody else got through");

        // Let them go a few at a time, then all at once.
        for _ in 0..4 {
            let done = mock.requests().len();
            valve.release(3);
            eventually("the next three to arrive", || async { mock.requests().len() >= done + 3 }).await;
        }
        valve.open();
        assert_all_answered(tasks).await;

        for key in keys_all {
            assert_eq!(mock.max_in_flight(key), 2, "wave {wave}: the cap of 2 held with {key:?}");
        }
        assert_eq!(mock.requests().len() - before, 30);
        let statuses = keys(&client, &proxy).await;
        for s in statuses.values() {
            assert_eq!(s["in_flight"], 0, "wave {wave}: every permit returned: {s}");
            assert_healthy(s);
        }
        let total: u64 = statuses.values().map(|s| s["requests"].as_u64().unwrap()).sum();
        assert_eq!(total, 30 * (wave + 1) as u64);
    }
}

#[tokio::test]
async fn concurrency_cap_is_per_key_and_model() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(capped_env(&mock, 1, 1)).await;
    let client = TestClient::http1();
    let valve = Valve::new();
    mock.always_for(KEY_ONE, Script::Hold(valve.clone()));

    let send = |model: &'static str| {
        let client = client.clone();
        let req = post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(model, false));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    };
    let first = send("openai/gpt-4o-mini");
    let other_model = send("openai/gpt-4o");
    eventually("both models in flight on the one key", || async { mock.in_flight(KEY_ONE) == 2 }).await;
    let same_model = send("openai/gpt-4o-mini");
    let statuses = keys(&client, &proxy).await;
    assert_eq!(status(&statuses, KEY_ONE)["in_flight"], 2, "the third waits for its model's slot");
    assert_eq!(mock.requests().len(), 2);

    valve.open();
    for (task, model) in [(first, "gpt-4o-mini"), (other_model, "gpt-4o"), (same_model, "gpt-4o-mini")] {
        assert_answered(&within("an answer", task).await.unwrap(), model);
    }
    assert_eq!(mock.max_in_flight(KEY_ONE), 2, "one per model");
    assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["in_flight"], 0);
}

#[tokio::test]
async fn waiting_for_a_busy_key_past_the_deadline_is_504() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(capped_env(&mock, 1, 1), |s| s.global_timeout = Duration::from_millis(200)).await;
    let client = TestClient::http1();
    let gate = Gate::new();
    mock.push_for(KEY_ONE, Script::gated_stream(&gate));

    // A stream holds the key's only slot (the deadline ends at its 200).
    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, true))).await;
    assert_eq!(res.status(), 200);
    let mut sse = SseReader::new(res.into_body());
    sse.next_event().await.expect("a first event");

    // The second request waits for the slot, then its deadline passes.
    let reply = within("the waiting request to time out", chat(&client, &proxy)).await;
    assert_openai_error(&reply, 504, "deadline_exceeded", "deadline of 0.2 s");
    assert_eq!(mock.requests().len(), 1, "the waiting request never reached the upstream");

    gate.open();
    assert_eq!(sse.rest().await.last().map(String::as_str), Some("data: [DONE]"));
    assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["in_flight"], 0);
    assert_answered(&chat(&client, &proxy).await, UPSTREAM_MODEL);
    assert_healthy(status(&keys(&client, &proxy).await, KEY_ONE));
}

#[tokio::test]
async fn capped_key_gets_its_slot_back_after_a_failed_attempt_or_a_broken_stream() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(capped_env(&mock, 1, 1)).await;
    let client = TestClient::http1();

    // The failed attempt's slot must be free for its own same-key retry.
    for failure in [Script::server_error(500), Script::Close, Script::Reset] {
        mock.push(failure);
        assert_answered(&within("a retry on the capped key", chat(&client, &proxy)).await, UPSTREAM_MODEL);
    }
    mock.push(Script::BreakAfter(1));
    read_broken_stream(&client, &proxy, 1).await;
    assert_answered(&within("the next request on the capped key", chat(&client, &proxy)).await, UPSTREAM_MODEL);
    assert_eq!(mock.max_in_flight(KEY_ONE), 1);
    let one = &keys(&client, &proxy).await[&key_id(KEY_ONE)];
    assert_eq!(one["in_flight"], 0, "{one}");
    assert_eq!(one["today"]["failures_transient"], 4, "{one}");
}
