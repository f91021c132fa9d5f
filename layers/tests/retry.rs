//! RetryRotateLayer over KeySelect and KeyConcurrency, against a scripted
//! upstream that answers per key from a table (KeySelect names the key on
//! each answer), on a paused clock: rotation on 429, same-key retries with
//! backoff on 5xx, client errors passed through, refused keys marked
//! invalid, 429, 503 and 502 when the pool runs out, a stream that breaks
//! after its 200, and the attempts the request record keeps.

mod support;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError, ProxyBody,
    body::full,
    concurrency::KeyConcurrencyLayer,
    error::UpstreamUnreachable,
    extensions::{Deadline, Endpoint, RouteTarget},
    pool::{KeyLease, KeyPool, KeyState, KeyStatus, ProviderOptions, Selection},
    provider::ProviderId,
    record::RequestRecord,
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, util::BoxCloneService};

use support::{MockBody, NOWHERE, key_id, ms, noon, openai, reply, secrets, secs, target, within_virtual};

type Svc = BoxCloneService<Request<Bytes>, Response<ProxyBody>, BoxError>;

/// What the scripted upstream answers one attempt.
#[derive(Clone, Debug)]
enum Answer {
    Status {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: String,
    },
    /// `200 text/event-stream` with these chunks (or errors), then the end.
    Stream(Vec<Result<&'static str, &'static str>>),
    /// The connection failed before any answer.
    Unreachable,
}

fn ok(body: &str) -> Answer {
    status(200, body)
}

fn status(code: u16, body: &str) -> Answer {
    Answer::Status { status: code, headers: vec![("content-type", "application/json")], body: body.to_owned() }
}

fn with_header(answer: Answer, name: &'static str, value: &'static str) -> Answer {
    let Answer::Status { status, mut headers, body } = answer else { panic!("headers go on a status answer") };
    headers.push((name, value));
    Answer::Status { status, headers, body }
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": { "message": message, "type": "error", "code": null } }).to_string()
}

/// One attempt as the upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    key: String,
    at: Instant,
}

/// Answers per key (by secret) from a queue whose last answer repeats, and
/// records every attempt.
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn on(self, secret: &str, answers: Vec<Answer>) -> Self {
        assert!(!answers.is_empty());
        self.script.lock().unwrap().insert(secret.to_owned(), answers.into());
        self
    }

    fn next(&self, secret: &str) -> Answer {
        let mut script = self.script.lock().unwrap();
        let queue = script.get_mut(secret).unwrap_or_else(|| panic!("no answers for key {secret}"));
        if queue.len() > 1 { queue.pop_front().unwrap() } else { queue[0].clone() }
    }

    /// The keys (secrets) of the attempts, in order.
    fn keys(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.key.clone()).collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().iter().map(|s| s.at).collect()
    }

    /// RetryRotate -> KeySelect -> KeyConcurrency -> this upstream.
    fn stack(&self, pool: &Arc<KeyPool>, policy: RetryPolicy) -> Svc {
        let up = self.clone();
        let inner = tower::service_fn(move |req: Request<Bytes>| {
            let up = up.clone();
            async move {
                let lease = req.extensions().get::<KeyLease>().cloned().expect("KeySelect leased a key");
                let secret = lease.secret().expose().to_owned();
                let attempts = {
                    let mut seen = up.seen.lock().unwrap();
                    seen.push(Seen { key: secret.clone(), at: Instant::now() });
                    seen.len()
                };
                assert!(attempts <= 64, "{attempts} attempts for one request: a retry loop that does not end");
                let mut res = match up.next(&secret) {
                    Answer::Unreachable => {
                        return Err::<Response<ProxyBody>, BoxError>(
                            UpstreamUnreachable::new("openai", "connection refused").into(),
                        );
                    }
                    Answer::Status { status, headers, body } => {
                        let mut res = Response::new(full(body));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        for (name, value) in headers {
                            res.headers_mut().insert(name, value.parse().unwrap());
                        }
                        res
                    }
                    Answer::Stream(items) => {
                        let mut res = Response::new(MockBody::script(items).boxed_unsync());
                        res.headers_mut().insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
                        res
                    }
                };
                // What UpstreamService does: the answer says which key it came from.
                res.extensions_mut().insert(lease);
                Ok(res)
            }
        });
        let svc = RetryRotateLayer::new(policy)
            .layer(KeySelectLayer::new(pool.clone()).layer(KeyConcurrencyLayer::new().layer(inner)));
        BoxCloneService::new(svc)
    }
}

/// Every test builds its pool first: that installs the tracing capture
/// before anything logs (see `support::trace_init`).
fn build(keys: &[&str]) -> Arc<KeyPool> {
    support::trace_init();
    KeyPool::builder()
        .wall_clock(noon())
        .provider(openai(NOWHERE), Selection::LeastUsed, secrets(keys))
        .build()
        .unwrap()
}

/// A parsed request for `openai/gpt-4o` with a deadline this far away.
fn request_with(route: RouteTarget, deadline_in: Duration) -> Request<Bytes> {
    let body = Bytes::from_static(br#"{"model":"openai/gpt-4o","messages":[]}"#);
    let mut req = Request::post("/v1/chat/completions").body(body).unwrap();
    req.extensions_mut().insert(route);
    req.extensions_mut().insert(Deadline(Instant::now() + deadline_in));
    req
}

fn request() -> Request<Bytes> {
    request_with(target(false), secs(60))
}

fn status_of(pool: &KeyPool, secret: &str) -> KeyStatus {
    pool.key_status(key_id("openai", secret).as_str()).unwrap()
}

async fn text(res: Response<ProxyBody>) -> String {
    let bytes = within_virtual(res.into_body().collect()).await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn answered_by(res: &Response<ProxyBody>) -> String {
    res.extensions().get::<KeyLease>().expect("the answer names its key").key_id().to_string()
}

// === rotation ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_limit_on_one_key_rotates_to_another_in_the_same_request() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default()
        .on("key-a", vec![status(429, &error_body("Rate limit reached for requests"))])
        .on("key-b", vec![ok(r#"{"id":"from-b"}"#)]);
    let svc = up.stack(&pool, RetryPolicy::default());
    let start = Instant::now();
    let res = within_virtual(svc.clone().oneshot(request())).await.unwrap();
    assert_eq!(Instant::now(), start, "no pause before another key");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(answered_by(&res), key_id("openai", "key-b").to_string());
    assert_eq!(text(res).await, r#"{"id":"from-b"}"#);
    assert_eq!(up.keys(), ["key-a", "key-b"]);

    let a = status_of(&pool, "key-a");
    assert_eq!(a.state, KeyState::Cooling);
    assert_eq!((a.cooldowns[0].reason, a.cooldowns[0].remaining_secs), ("rate_limit", 10));
    assert_eq!(status_of(&pool, "key-b").today.successes, 1);

    // The next request goes straight to the key that is not cooling.
    let _ = within_virtual(svc.oneshot(request())).await.unwrap();
    assert_eq!(up.keys(), ["key-a", "key-b", "key-b"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn quota_exhaustion_rotates_and_leaves_the_key_exhausted_until_the_reset() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default()
        // OpenAI's real answer; the same words without the code are also
        // Gemini's per-minute limit, a rate limit.
        .on(
            "key-a",
            vec![status(
                429,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            )],
        )
        .on("key-b", vec![ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let a = status_of(&pool, "key-a");
    assert_eq!((a.state, a.cooldowns[0].remaining_secs), (KeyState::Exhausted, 12 * 3600));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_server_error_is_retried_once_on_the_same_key_after_a_backoff_then_rotated() {
    let pool = build(&["key-a", "key-b"]);
    let up =
        Upstream::default().on("key-a", vec![status(500, &error_body("internal error"))]).on("key-b", vec![ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-a", "key-b"]);
    let t = up.times();
    let backoff = t[1] - t[0];
    assert!(backoff >= ms(50) && backoff <= ms(151), "100 ms ± 50 % (on tokio's clock): {backoff:?}");
    assert_eq!(t[2], t[1], "rotation does not wait");

    let a = status_of(&pool, "key-a");
    assert_eq!((a.state, a.today.failures_transient), (KeyState::Ok, 2), "two in a row do not cool a key");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn same_key_retries_follow_the_policy() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![status(503, "")]).on("key-b", vec![ok("{}")]);
    let policy = RetryPolicy::new(0, ms(100));
    let _ = within_virtual(up.stack(&pool, policy).oneshot(request())).await.unwrap();
    assert_eq!(up.keys(), ["key-a", "key-b"], "no same-key retry");

    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![status(502, ""), status(502, ""), ok("{}")]);
    let up = up.on("key-b", vec![ok("{}")]);
    let policy = RetryPolicy::new(2, ms(100));
    let res = within_virtual(up.stack(&pool, policy).oneshot(request())).await.unwrap();
    assert_eq!(answered_by(&res), key_id("openai", "key-a").to_string());
    assert_eq!(up.keys(), ["key-a", "key-a", "key-a"]);
    let t = up.times();
    assert!(t[2] - t[1] >= ms(100), "the second backoff doubles: {:?}", t[2] - t[1]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_same_key_retry_when_the_backoff_would_pass_the_deadline() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![status(500, "")]).on("key-b", vec![ok("{}")]);
    let start = Instant::now();
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request_with(target(false), ms(40))));
    assert_eq!(res.await.unwrap().status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-b"]);
    assert_eq!(Instant::now(), start);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connect_error_is_retried_like_a_server_error() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![Answer::Unreachable]).on("key-b", vec![ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-a", "key-b"]);
    assert_eq!(status_of(&pool, "key-a").today.failures_transient, 2);
}

// === client errors ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_client_error_is_returned_as_is_with_no_retry_and_no_penalty() {
    let pool = build(&["key-a", "key-b"]);
    let body = r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let up = Upstream::default()
        .on("key-a", vec![with_header(status(400, body), "x-request-id", "req-123")])
        .on("key-b", vec![ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["x-request-id"], "req-123");
    assert_eq!(text(res).await, body, "byte for byte");
    assert_eq!(up.keys(), ["key-a"]);
    let a = status_of(&pool, "key-a");
    assert_eq!((a.state, a.cooldowns.len(), a.today.failures_client), (KeyState::Ok, 0, 1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_client_error_body_longer_than_the_peek_comes_back_whole() {
    let pool = build(&["key-a"]);
    let long: String = (0..3000).map(|i| format!("{i:05}|")).collect();
    let body = error_body(&long);
    assert!(body.len() > 16 * 1024);
    let up = Upstream::default().on("key-a", vec![status(422, &body)]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(text(res).await, body);
}

// === credentials ===

/// The client names the model; OpenAI's 404 quotes it. A model named
/// `invalid_api_key` must get its 404, not every key of the pool marked
/// invalid for everyone (rotation walks the whole pool); one named
/// `rate_limit` must not pause the provider.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_model_name_echoed_in_a_404_penalises_no_key() {
    let pool = build(&["key-a", "key-b", "key-c"]);
    let not_found = |model: &str| {
        let message = format!("The model `{model}` does not exist or you do not have access to it.");
        status(404, &error_body(&message))
    };
    let up = Upstream::default();
    let up = ["key-a", "key-b", "key-c"].iter().fold(up, |up, key| up.on(key, vec![not_found("invalid_api_key")]));
    let svc = up.stack(&pool, RetryPolicy::default());
    let route = RouteTarget::new(ProviderId::new("openai"), "invalid_api_key", Endpoint::ChatCompletions, false);
    let res = within_virtual(svc.clone().oneshot(request_with(route, secs(60)))).await;
    let states: Vec<KeyState> = pool.key_statuses().iter().map(|s| s.state).collect();
    assert_eq!(states, [KeyState::Ok; 3]);
    assert_eq!(res.map(|r| r.status()).map_err(|e| reply(&e).status), Ok(StatusCode::NOT_FOUND));
    assert_eq!(up.keys(), ["key-a"], "a client error is not retried");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_key_is_marked_invalid_and_not_chosen_by_the_next_request() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default()
        .on("key-a", vec![status(401, &error_body("Incorrect API key provided"))])
        .on("key-b", vec![ok("{}")]);
    let svc = up.stack(&pool, RetryPolicy::default());
    let res = within_virtual(svc.clone().oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-b"]);
    assert_eq!(status_of(&pool, "key-a").state, KeyState::Invalid);

    for _ in 0..3 {
        let _ = within_virtual(svc.clone().oneshot(request())).await.unwrap();
    }
    assert_eq!(up.keys(), ["key-a", "key-b", "key-b", "key-b", "key-b"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn after_five_minutes_a_request_probes_the_refused_key_and_its_success_restores_it() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![status(401, ""), ok("{}")]).on("key-b", vec![ok("{}")]);
    let svc = up.stack(&pool, RetryPolicy::default());
    let _ = within_virtual(svc.clone().oneshot(request())).await.unwrap();
    tokio::time::advance(secs(299)).await;
    let _ = within_virtual(svc.clone().oneshot(request())).await.unwrap();
    assert_eq!(up.keys(), ["key-a", "key-b", "key-b"], "not before its five minutes");
    tokio::time::advance(secs(1)).await;
    let res = within_virtual(svc.oneshot(request())).await.unwrap();
    assert_eq!(answered_by(&res), key_id("openai", "key-a").to_string(), "the least recently used key is probed");
    assert_eq!(status_of(&pool, "key-a").state, KeyState::Ok);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_key_refused_is_503_no_usable_key() {
    let pool = build(&["key-a", "key-b"]);
    let up = Upstream::default().on("key-a", vec![status(401, "")]).on("key-b", vec![status(403, "")]);
    let err = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap_err();
    let reply = reply(&err);
    assert_eq!(
        (reply.status, reply.code, reply.retry_after),
        (StatusCode::SERVICE_UNAVAILABLE, "no_usable_key", Some(300))
    );
    assert_eq!(up.keys(), ["key-a", "key-b"]);
}

// === running out ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_key_rate_limited_past_the_deadline_is_429_with_retry_after() {
    let pool = build(&["key-a", "key-b"]);
    let limited = || with_header(status(429, &error_body("Rate limit reached")), "retry-after", "120");
    let up = Upstream::default().on("key-a", vec![limited()]).on("key-b", vec![limited()]);
    let start = Instant::now();
    let err =
        within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request_with(target(false), secs(30)))).await;
    let err = err.unwrap_err();
    assert_eq!(Instant::now(), start, "answered at once");
    let reply = reply(&err);
    assert_eq!(
        (reply.status, reply.code, reply.retry_after),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", Some(120))
    );
    assert_eq!(up.keys(), ["key-a", "key-b"], "each key once");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_key_rate_limited_within_the_deadline_waits_for_the_first_and_succeeds() {
    let pool = build(&["key-a", "key-b"]);
    let limited = |after: &'static str| with_header(status(429, ""), "retry-after", after);
    let up = Upstream::default().on("key-a", vec![limited("8"), ok("{}")]).on("key-b", vec![limited("5"), ok("{}")]);
    let start = Instant::now();
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-b", "key-b"]);
    assert_eq!(Instant::now() - start, secs(5), "back when key-b's Retry-After ended");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_zero_retry_after_does_not_retry_the_key_in_a_hot_loop() {
    let pool = build(&["key-a"]);
    let zero = with_header(status(429, ""), "retry-after", "0");
    let up = Upstream::default().on("key-a", vec![zero.clone(), zero, ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t = up.times();
    assert_eq!(t.len(), 3);
    assert!(t[1] > t[0] && t[2] > t[1], "some pause between attempts on a rate-limited key: {t:?}");
}

/// A key that keeps answering 429 with a short Retry-After: the request
/// waits and retries within its deadline until the attempt cap stops it.
/// Every key is rate limited, so the client should be told 429 with a
/// Retry-After, as when the cooldowns outlast the deadline, not that the
/// upstream failed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_stopped_by_the_attempt_cap_on_rate_limits_is_429() {
    let pool = build(&["key-a"]);
    let up = Upstream::default().on("key-a", vec![with_header(status(429, ""), "retry-after", "2")]);
    let err = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap_err();
    assert!(up.keys().len() < 30, "bounded: {} attempts", up.keys().len());
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"), "{}", reply.message);
    assert!(reply.retry_after.is_some());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_same_key_retry_finds_the_slot_its_failed_attempt_held() {
    let options = ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(1);
    support::trace_init();
    let pool = KeyPool::builder().wall_clock(noon()).provider_with(openai(NOWHERE), options, secrets(&["key-a"]));
    let pool = pool.build().unwrap();
    let up = Upstream::default().on("key-a", vec![status(500, ""), ok("{}")]);
    let res = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.keys(), ["key-a", "key-a"]);
    drop(res);
    let slots = pool.provider("openai").unwrap().slots(0, "gpt-4o").unwrap();
    assert_eq!(slots.available_permits(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_key_failing_is_502_with_the_last_upstream_error_redacted() {
    let secret_b = "my-own-secret-value-b";
    let pool = build(&["sk-live-aaaaaaaaaaaaaaaa", secret_b]);
    let message_b = format!("upstream exploded for {secret_b} (also saw sk-proj-ZZZZ1234abcd5678 in flight)");
    let up = Upstream::default()
        .on("sk-live-aaaaaaaaaaaaaaaa", vec![status(500, &error_body("boom on sk-live-aaaaaaaaaaaaaaaa"))])
        .on(secret_b, vec![status(503, &error_body(&message_b))]);
    let err = within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request())).await.unwrap_err();
    assert_eq!(up.keys(), ["sk-live-aaaaaaaaaaaaaaaa", "sk-live-aaaaaaaaaaaaaaaa", secret_b, secret_b]);
    let reply = reply(&err);
    assert_eq!((reply.status, reply.code), (StatusCode::BAD_GATEWAY, "upstream_failed"));
    let message = &reply.message;
    assert!(message.contains("upstream exploded for [redacted]"), "{message}");
    assert!(message.contains("503"), "{message}");
    assert!(message.contains(key_id("openai", secret_b).as_str()), "names the key by id: {message}");
    for leak in [secret_b, "sk-proj-ZZZZ", "sk-live-aaaa"] {
        assert!(!message.contains(leak), "{leak} in {message}");
    }
    let json = String::from_utf8(reply.to_json()).unwrap();
    assert!(!json.contains(secret_b) && !json.contains("sk-proj-ZZZZ"), "{json}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_logs_never_carry_a_secret() {
    let (captured, _guard) = support::capture();
    let secret = "sk-live-cccccccccccccccc";
    let pool = build(&[secret, "key-d"]);
    let up = Upstream::default()
        .on(secret, vec![status(401, &error_body("bad key"))])
        .on("key-d", vec![status(429, ""), ok("{}")]);
    let svc = up.stack(&pool, RetryPolicy::default());
    let _ = within_virtual(svc.oneshot(request())).await;
    let events = captured.all();
    assert!(!events.is_empty(), "attempts are logged");
    let text = format!("{events:?}");
    assert!(!text.contains(secret) && !text.contains("key-d\""), "{text}");
}

// === streams ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_that_breaks_after_its_200_is_not_retried_and_passes_as_it_is() {
    // Ending it with an error event, and blaming the key, is the upstream
    // service's business (tests/upstream.rs): the stream's own.
    let pool = build(&["key-a"]);
    let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let up = Upstream::default().on("key-a", vec![Answer::Stream(vec![Ok(chunk), Err("connection reset by peer")])]);
    let res =
        within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request_with(target(true), secs(60)))).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let first = within_virtual(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), chunk);
    let err = within_virtual(body.frame()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("connection reset by peer"), "{err}");
    assert_eq!(up.keys(), ["key-a"], "no retry once the 200 went out");
    drop(body);
    let a = status_of(&pool, "key-a");
    assert_eq!((a.today.successes, a.in_flight), (1, 0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_that_fails_before_its_headers_is_retried_on_another_key() {
    let pool = build(&["key-a", "key-b"]);
    let chunk = "data: [DONE]\n\n";
    let up = Upstream::default()
        .on("key-a", vec![with_header(status(429, ""), "retry-after", "30")])
        .on("key-b", vec![Answer::Stream(vec![Ok(chunk)])]);
    let res =
        within_virtual(up.stack(&pool, RetryPolicy::default()).oneshot(request_with(target(true), secs(60)))).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, chunk, "a stream that ends well gets no error event");
    assert_eq!(up.keys(), ["key-a", "key-b"]);
    assert_eq!(status_of(&pool, "key-b").in_flight, 0);
}

// === what the request record says ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_wait_for_a_cooling_key_is_no_attempt_and_its_time_is_no_attempts() {
    // Issue 12: a wait for a key's cooldown showed up in `attempts=` as a
    // failed attempt ("transient 9999ms").
    let pool = build(&["key-a"]);
    let up = Upstream::default()
        .on("key-a", vec![with_header(status(429, &error_body("Rate limit reached")), "retry-after", "5"), ok("{}")]);
    let svc = up.stack(&pool, RetryPolicy::default());
    let record = RequestRecord::default();
    let mut req = request();
    req.extensions_mut().insert(record.clone());
    let start = Instant::now();
    let res = within_virtual(svc.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(Instant::now() - start >= secs(5), "the request waited out the key's cooldown");
    let attempts = record.attempts();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a.outcome, a.status)).collect();
    assert_eq!(outcomes, [("rate_limit", Some(429)), ("success", Some(200))], "the wait is no attempt of its own");
    assert!(attempts.iter().all(|a| a.ms < 1000), "no attempt holds the 5 s wait: {attempts:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keys_resting_after_failures_are_a_503_never_a_rate_limit() {
    // Issue 12: three transient failures in a row rest a key for 10 s;
    // a request that cannot wait for it was told 429 "rate limit".
    let pool = build(&["key-a"]);
    let failing = (0..8).map(|_| status(500, &error_body("upstream exploded"))).collect();
    let up = Upstream::default().on("key-a", failing);
    let svc = up.stack(&pool, RetryPolicy::default());
    let mut rested = false;
    for _ in 0..4 {
        let res = within_virtual(svc.clone().oneshot(request_with(target(false), secs(2)))).await;
        match res {
            Ok(res) => assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR),
            Err(err) => {
                let reply = keyrelay_layers::error::ErrorReply::from_error(&*err);
                if reply.code == "upstream_unavailable" {
                    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.message);
                    assert!(reply.retry_after.is_some_and(|s| s >= 1), "with when to come back");
                    rested = true;
                } else {
                    assert_eq!(reply.code, "upstream_failed", "{}: never a rate limit", reply.message);
                }
            }
        }
    }
    assert!(rested, "the key rested, and the request was told so");
    assert_eq!(status_of(&pool, "key-a").cooldowns[0].reason, "transient");
}
