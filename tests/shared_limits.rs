//! Limits several replicas hold together on a real Redis (issue 16): a
//! key's concurrency cap and its rpm window count every replica's
//! requests, and a slot a dead replica leased comes back when its lease
//! expires.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, Valve, chat_body, eventually,
    key_id, openai_env, post, redis::RedisServer, within,
};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "openai/gpt-4o-mini";

fn env(mock: &MockUpstream, redis: &RedisServer, keys: usize) -> Vec<(String, String)> {
    let mut env = openai_env(mock, keys);
    env.push(("REDIS_URL".to_owned(), redis.url()));
    env
}

fn send(client: &TestClient, proxy: &Proxy) -> tokio::task::JoinHandle<Reply> {
    let client = client.clone();
    let req = post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false));
    tokio::spawn(async move { Reply::read(client.send(req).await).await })
}

#[tokio::test]
async fn a_concurrency_cap_holds_across_three_replicas() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let mut capped = env(&mock, &redis, 1);
    capped.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), "2".to_owned()));
    let replicas = [Proxy::start(capped.clone()).await, Proxy::start(capped.clone()).await, Proxy::start(capped).await];
    let client = TestClient::http1();
    let valve = Valve::new();
    mock.always_for(KEY_ONE, Script::Hold(valve.clone()));

    let tasks: Vec<_> = (0..12).map(|i| send(&client, &replicas[i % 3])).collect();
    eventually("two requests held upstream", || async { mock.in_flight(KEY_ONE) == 2 }).await;
    // Let them through two at a time: each pair frees the slots for the next.
    for done in (2..12).step_by(2) {
        valve.release(2);
        eventually("the next two to reach the upstream", || async { mock.requests().len() >= done + 2 }).await;
        assert!(mock.in_flight(KEY_ONE) <= 2, "never more than the cap in flight");
    }
    valve.open();
    for task in tasks {
        let reply = within("a request to finish", task).await.expect("the request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(mock.max_in_flight(KEY_ONE), 2, "the cap of 2 held over the three replicas");
    assert_eq!(mock.requests().len(), 12);
    // Every lease was given back.
    let slots = format!("ZCARD keyrelay:{{{}}}:slots:gpt-4o-mini", key_id(KEY_ONE));
    eventually("the slots to be released", || async { redis.command(&slots).await == ":0" }).await;
}

#[tokio::test]
async fn an_rpm_limit_counts_every_replicas_requests() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let config = format!("[[providers.openai.keys]]\nkey = \"{KEY_ONE}\"\nrpm = 3\n");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Proxy::start_with_config(env(&mock, &redis, 2), &config, None).await);
    }
    let client = TestClient::http1();
    for i in 0..12 {
        let reply = within("a request", send(&client, &replicas[i % 3])).await.expect("the request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let limited = mock.requests_with(KEY_ONE).len();
    assert!(limited <= 3, "the key with rpm = 3 served {limited} requests in the minute");
    assert_eq!(mock.requests_with(KEY_TWO).len(), 12 - limited, "the other key took the rest");
}

#[tokio::test]
async fn a_slot_a_dead_replica_leased_comes_back_when_its_lease_expires() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let mut capped = env(&mock, &redis, 1);
    capped.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), "1".to_owned()));
    let replica = Proxy::start(capped).await;
    // A replica that died holding the key's one slot, for another second.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
    let expires = now_ms + 1000;
    let slots = format!("keyrelay:{{{}}}:slots:gpt-4o-mini", key_id(KEY_ONE));
    assert_eq!(redis.command(&format!("ZADD {slots} {expires} dead-replica-lease-0")).await, ":1");

    let client = TestClient::http1();
    let reply = within("the request", send(&client, &replica)).await.expect("the request task");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served_at = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
    assert!(served_at >= expires, "served only once the dead replica's lease expired");
    assert_eq!(mock.requests().len(), 1);
}
