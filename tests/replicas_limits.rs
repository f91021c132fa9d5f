//! Admission shared by three keyrelay processes on one Redis (issue 16):
//! a key's concurrency cap, its rpm and its budget hold across the
//! replicas together, not per replica, and the slots of a replica killed
//! with -9 come back when their leases expire; a client key's rpm and
//! max_parallel count its requests on every replica.

mod support;

use std::time::Duration;

use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Script, TestClient, Valve, eventually, key_id, post,
    redis::RedisServer,
    replicas::{Replicas, replica_env, shared_env},
    within,
};

/// `env` plus `name=value`.
fn with(mut env: Vec<(String, String)>, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// The proxy key, the mock's base and Redis, without pool keys: a test's
/// `config.toml` names them (`key_env`), each with its own settings.
fn env_without_keys(mock: &MockUpstream, redis: &RedisServer) -> Vec<(String, String)> {
    let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
    env.extend(mock.env(0));
    env.extend(shared_env(redis));
    env
}

#[tokio::test]
async fn a_concurrency_cap_of_two_per_key_holds_across_three_replicas() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let env = with(replica_env(&mock, 1, &redis), &[("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI", "2")]);
    let replicas = Replicas::start(3, &env, None).await;
    // Each answer takes a while, so that the twelve requests overlap.
    mock.always_for(KEY_ONE, Script::Slow(Duration::from_millis(300)));

    let requests = (0..12).map(|i| replicas.nth(i).chat(&client));
    let replies = futures_util::future::join_all(requests).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "each waits for a slot within its deadline: {}", reply.text());
    }
    assert_eq!(mock.requests().len(), 12);
    let most = mock.max_in_flight(KEY_ONE);
    assert!(most <= 2, "the key had {most} requests in flight at once, over its cap of 2 for all replicas");
}

#[tokio::test]
async fn an_rpm_limit_holds_across_three_replicas() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let env = with(env_without_keys(&mock, &redis), &[("LIMITED_KEY", KEY_ONE), ("FREE_KEY", KEY_TWO)]);
    let config = r#"
        [[providers.openai.keys]]
        key_env = "LIMITED_KEY"
        rpm = 3

        [[providers.openai.keys]]
        key_env = "FREE_KEY"
    "#;
    let replicas = Replicas::start(3, &env, Some(config)).await;

    for i in 0..12 {
        let reply = replicas.nth(i).chat(&client).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    let limited = mock.requests_with(KEY_ONE).len();
    assert!(limited <= 3, "the key with rpm = 3 served {limited} requests within a minute over three replicas");
    assert_eq!(limited + mock.requests_with(KEY_TWO).len(), 12);
}

#[tokio::test]
async fn the_slot_of_a_replica_killed_with_9_comes_back_when_its_lease_expires() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let env = with(
        replica_env(&mock, 1, &redis),
        &[("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI", "1"), ("KEYRELAY_SHARED__SLOT_LEASE_SECS", "2")],
    );
    let mut replicas = Replicas::start(3, &env, None).await;
    // A's request is held upstream: A keeps the key's one slot.
    let valve = Valve::new();
    mock.push_for(KEY_ONE, Script::Hold(valve.clone()));
    let held = replicas[0].chat_request(support::replicas::MODEL);
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.try_fetch(held).await }
    });
    eventually("the mock to hold A's request", || async { mock.in_flight(KEY_ONE) == 1 }).await;

    // B's request waits for the slot...
    let waiting = replicas[1].chat_request(support::replicas::MODEL);
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.fetch(waiting).await }
    });
    // (time enough for B to send, were it to ignore A's slot; the check
    // after it cannot fail for a slow B, only prove less)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.requests().len(), 1, "B sent while A held the key's only slot");

    // ...A dies without handing its slot back; its lease runs out.
    replicas.get_mut(0).kill().await;
    let died = tokio::time::Instant::now();
    assert!(held.await.unwrap().is_err(), "A's client lost its connection");
    let reply = within("B's request, once A's lease expired", waiting).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].user().as_deref(), Some(replicas[1].tag().as_str()));
    assert!(requests[1].at >= died, "the mock saw B's request only after A died");
    valve.open();
}

#[tokio::test]
async fn a_running_request_keeps_its_slot_past_the_lease_by_renewing_it() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let env = with(
        replica_env(&mock, 1, &redis),
        &[("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI", "1"), ("KEYRELAY_SHARED__SLOT_LEASE_SECS", "1")],
    );
    let replicas = Replicas::start(2, &env, None).await;
    let valve = Valve::new();
    mock.always_for(KEY_ONE, Script::Hold(valve.clone()));
    let long = client.fetch(replicas[0].chat_request(support::replicas::MODEL));
    let other = client.fetch(replicas[1].chat_request(support::replicas::MODEL));
    let watch = async {
        eventually("A's request held upstream", || async { mock.in_flight(KEY_ONE) == 1 }).await;
        // Two and a half leases: an unrenewed lease would have expired
        // twice over, and B would have been let in.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let sent = mock.requests().len();
        valve.open();
        sent
    };
    let (long, other, sent) = within("both requests", async { tokio::join!(long, other, watch) }).await;
    assert_eq!(sent, 1, "B got the slot while A's request still ran");
    assert_eq!((long.status.as_u16(), other.status.as_u16()), (200, 200));
    assert_eq!(mock.max_in_flight(KEY_ONE), 1);
}

/// The mock's chat answer reports 10 completion tokens: at $1000 per
/// million output tokens (input free), $0.01 an answer, and with
/// `max_output = 10` that is each request's reservation too.
const ANSWER_USD: f64 = 0.01;
const BUDGET_USD: f64 = 0.025;

#[tokio::test]
async fn a_key_budget_is_not_overshot_across_three_replicas() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let env = with(env_without_keys(&mock, &redis), &[("BUDGETED_KEY", KEY_ONE), ("FALLBACK_KEY", KEY_TWO)]);
    let config = format!(
        r#"
        [prices."openai/gpt-4o-mini"]
        input = 0.0
        output = 1000.0
        max_output = 10

        [[providers.openai.keys]]
        key_env = "BUDGETED_KEY"
        budget_usd = {BUDGET_USD}
        budget_period = "total"

        [[providers.openai.keys]]
        key_env = "FALLBACK_KEY"
        priority = 1
    "#
    );
    let replicas = Replicas::start(3, &env, Some(&config)).await;
    mock.always_for(KEY_ONE, Script::Slow(Duration::from_millis(100)));
    let charged = || mock.requests_with(KEY_ONE).iter().filter(|r| r.answer == "slow").count() as f64 * ANSWER_USD;

    let replies = futures_util::future::join_all((0..12).map(|i| replicas.nth(i).chat(&client))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "the fallback key serves what the budget does not: {}", reply.text());
    }
    let spent = charged();
    assert!(
        spent <= BUDGET_USD + ANSWER_USD + 1e-9,
        "${spent:.3} charged to a ${BUDGET_USD} budget, more than one reservation over"
    );
    // Whatever is left goes, and no more.
    for i in 0..3 {
        assert_eq!(replicas.nth(i).chat(&client).await.status, 200);
    }
    let spent = charged();
    assert!(spent <= BUDGET_USD + ANSWER_USD + 1e-9, "${spent:.3} charged to a ${BUDGET_USD} budget");

    let id = key_id(KEY_ONE);
    for replica in replicas.iter() {
        eventually("every replica to see the budget spent", || async {
            let key = replica.key(&client, &id).await;
            key["state"] == "exhausted" && key["reason"] == "budget"
        })
        .await;
    }
    let before = mock.requests().len();
    for replica in replicas.iter() {
        assert_eq!(replica.chat(&client).await.status, 200);
    }
    let keys: Vec<_> = mock.requests()[before..].iter().map(|r| r.key.clone().unwrap_or_default()).collect();
    assert_eq!(keys, [KEY_TWO; 3], "every replica skips the spent key");
}

const CI_KEY: &str = "kr-ci-bot-SECRET-7777";

#[tokio::test]
async fn a_client_keys_rpm_and_max_parallel_count_its_requests_on_every_replica() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let config = format!("[[clients]]\nname = \"ci-bot\"\nkey = \"{CI_KEY}\"\nrpm = 4\nmax_parallel = 2\n");
    let replicas = Replicas::start(3, &replica_env(&mock, 2, &redis), Some(&config)).await;
    let ask = |i: usize| {
        let body = serde_json::json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        client.fetch(post(&replicas.nth(i).url("/v1/chat/completions"), Auth::Bearer(CI_KEY), body.to_string()))
    };

    // Two held at once fill max_parallel for all three replicas.
    let valve = Valve::new();
    for key in [KEY_ONE, KEY_TWO] {
        mock.always_for(key, Script::Hold(valve.clone()));
    }
    let held = futures_util::future::join(ask(0), ask(1));
    let third = async {
        eventually("two of the client's requests held upstream", || async { mock.total_in_flight() == 2 }).await;
        let third = ask(2).await;
        valve.open();
        third
    };
    let ((a, b), third) = within("the held requests", async { tokio::join!(held, third) }).await;
    assert_eq!(third.status, 429, "a third in flight on replica C: {}", third.text());
    assert!(third.text().contains("max_parallel"), "{}", third.text());
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));

    // rpm = 4 over the minute, whichever replica counts: two were made,
    // two more pass, then every replica refuses.
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(ask(i).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429], "rpm = 4 for the client over all replicas");
    assert_eq!(mock.requests().len(), 4, "nothing refused reached the upstream");
}
