//! Three keyrelay processes sharing one Redis (issue 16), as replicas
//! behind a load balancer run: each its own binary, working dir and
//! SQLite, all in front of one mock upstream. A cooldown met by one is
//! obeyed by the others, a session and a Responses conversation keep their
//! key whichever replica serves them, and losing Redis fails no request and
//! converges once Redis is back. Shared admission across replicas (a
//! concurrency cap, an rpm limit, slot leases of a replica that died, a key
//! budget) is in `replicas_limits.rs`.

mod support;

use support::{
    KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, Script, TestClient, assert_no_secret, eventually, key_id,
    mock::responses,
    post,
    redis::RedisServer,
    replicas::{Replica, Replicas, replica_env},
};

/// The bare model of [`support::replicas::MODEL`], as cooldowns name it.
const BARE_MODEL: &str = "gpt-4o-mini";

/// The pool key each request the mock saw since the last call carried,
/// with the tag of the replica that sent it.
fn sent_since(mock: &MockUpstream) -> Vec<(String, String)> {
    mock.take_requests().into_iter().map(|r| (r.user().unwrap_or_default(), r.key.unwrap_or_default())).collect()
}

async fn cooling(client: &TestClient, replica: &Replica, key: &str) -> bool {
    replica.cools(client, &key_id(key), BARE_MODEL).await
}

/// Sends chats to `replica` while `key` answers 429 (Retry-After two
/// minutes) until the replica cools it; every chat is served by another key.
async fn meet_a_429(client: &TestClient, mock: &MockUpstream, replica: &Replica, key: &str) {
    mock.always_for(key, Script::rate_limited(Some("120")));
    for _ in 0..3 {
        let reply = replica.chat(client).await;
        assert_eq!(reply.status, 200, "{} rotates past the 429: {}", replica.name, reply.text());
        if cooling(client, replica, key).await {
            break;
        }
    }
    mock.clear_for(key);
    assert!(cooling(client, replica, key).await, "{} cooled {key_id}", replica.name, key_id = key_id(key));
}

#[tokio::test]
async fn a_429_on_one_replica_cools_the_key_for_the_others() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let replicas = Replicas::start(3, &replica_env(&mock, 3, &redis), None).await;

    meet_a_429(&client, &mock, &replicas[0], KEY_ONE).await;
    for replica in [&replicas[1], &replicas[2]] {
        eventually("the cooldown to reach the other replicas", || cooling(&client, replica, KEY_ONE)).await;
    }
    for i in 0..6 {
        let reply = replicas.nth(1 + i % 2).chat(&client).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let sent = sent_since(&mock);
    let b_and_c: Vec<_> = sent.iter().filter(|(tag, _)| tag != &replicas[0].tag()).collect();
    assert_eq!(b_and_c.len(), 6, "{sent:?}");
    assert!(b_and_c.iter().all(|(_, key)| key != KEY_ONE), "B and C never send to the cooling key: {sent:?}");

    for exited in replicas.terminate_all().await {
        assert_eq!(exited.code, Some(0), "{}", exited.stderr);
        assert_no_secret("a replica's stdout", &exited.stdout);
        assert_no_secret("a replica's stderr", &exited.stderr);
    }
}

#[tokio::test]
async fn a_session_stays_on_its_key_whichever_of_three_replicas_serves_it() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let replicas = Replicas::start(3, &replica_env(&mock, 3, &redis), None).await;
    // A's least-used choice for the session must not be the key a fresh
    // B or C would pick on its own.
    move_a_off_the_first_key(&replicas, &client, &mock).await;
    let turn = |replica: &Replica| {
        let mut req = replica.chat_request(support::replicas::MODEL);
        req.headers_mut().insert("x-session-id", "agent-run-42".parse().unwrap());
        client.fetch(req)
    };
    assert_eq!(turn(&replicas[0]).await.status, 200);
    let home = mock.take_requests()[0].key.clone().unwrap();
    assert_ne!(home, KEY_ONE, "the test needs a key B and C would not pick by themselves");

    replicas.barrier(&client, &mock, 0).await;
    mock.take_requests();
    for i in 0..6 {
        let reply = turn(replicas.nth(1 + i)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let sent = sent_since(&mock);
    assert!(sent.iter().all(|(_, key)| *key == home), "every turn on the session's key: {sent:?}");
    assert_eq!(sent.len(), 6, "{sent:?}");
}

/// Two requests on replica A, forgotten by the mock: A's next least-used
/// key is no longer the first one.
async fn move_a_off_the_first_key(replicas: &Replicas, client: &TestClient, mock: &MockUpstream) {
    for _ in 0..2 {
        assert_eq!(replicas[0].chat(client).await.status, 200);
    }
    mock.take_requests();
}

fn responses_body(extra: serde_json::Value) -> String {
    let mut body = serde_json::json!({"model": "gpt-5-codex", "input": "Hi", "store": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

#[tokio::test]
async fn a_responses_follow_up_on_replica_c_reaches_the_key_replica_a_used() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let replicas = Replicas::start(3, &replica_env(&mock, 3, &redis), None).await;
    // A's least-used choice for the response must not be the key a fresh
    // C would pick on its own.
    move_a_off_the_first_key(&replicas, &client, &mock).await;
    let respond = |replica: &Replica, extra| {
        client.fetch(post(
            &replica.url("/v1/responses"),
            support::Auth::Bearer(support::PROXY_KEY),
            responses_body(extra),
        ))
    };
    let first = respond(&replicas[0], serde_json::json!({})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut previous = first.json()["id"].as_str().unwrap().to_owned();
    let owner = mock.take_requests()[0].key.clone().unwrap();
    assert_ne!(owner, KEY_ONE, "the test needs an owner C would not pick by itself");

    // C, then B, then A again, each continuing the newest response.
    for (from, to) in [(0, 2), (2, 1), (1, 0)] {
        replicas.barrier(&client, &mock, from).await;
        mock.take_requests();
        let reply = respond(&replicas[to], serde_json::json!({"previous_response_id": previous})).await;
        assert_eq!(reply.status, 200, "{} continues {previous}: {}", replicas[to].name, reply.text());
        previous = reply.json()["id"].as_str().unwrap().to_owned();
        assert!(responses::made_with(&previous, &owner), "{} sent it to the owner's key", replicas[to].name);
        let keys: Vec<_> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
        assert!(keys == [owner.as_str()], "{} tried another key: {keys:?}", replicas[to].name);
    }
}

#[tokio::test]
async fn losing_redis_mid_load_fails_no_request_and_the_replicas_converge_once_it_is_back() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let mock = MockUpstream::start().await;
    let mut redis = RedisServer::start().await;
    let client = TestClient::http1();
    let replicas = Arc::new(Replicas::start(3, &replica_env(&mock, 3, &redis), None).await);

    // Four clients, each sending one request after another, round robin
    // over the replicas, until told to stop.
    let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|n| {
            let (replicas, client, stop, served) = (replicas.clone(), client.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in n.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let reply = replicas.nth(i).chat(&client).await;
                    if reply.status != 200 {
                        failures.push(format!("{} {}", reply.status, reply.text()));
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    let served_past = |n: usize| {
        let served = served.clone();
        move || {
            let done = served.load(Ordering::SeqCst) >= n;
            async move { done }
        }
    };
    eventually("some load before Redis goes", served_past(12)).await;
    redis.stop().await;
    let at_stop = served.load(Ordering::SeqCst);
    eventually("load without Redis", served_past(at_stop + 24)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let failures = task.await.unwrap();
        assert!(failures.is_empty(), "a client saw a failure a healthy key could have served: {failures:?}");
    }

    // Meanwhile only B meets a 429 on KEY_TWO; the others cannot know.
    meet_a_429(&client, &mock, &replicas[1], KEY_TWO).await;
    for replica in [&replicas[0], &replicas[2]] {
        assert!(!cooling(&client, replica, KEY_TWO).await, "no news without Redis");
    }
    // Redis comes back, empty: B publishes what it learned meanwhile.
    redis.resume().await;
    for replica in [&replicas[0], &replicas[2]] {
        eventually("B's cooldown everywhere once Redis is back", || cooling(&client, replica, KEY_TWO)).await;
    }
    mock.take_requests();
    for i in [0, 2, 0, 2] {
        assert_eq!(replicas[i].chat(&client).await.status, 200);
    }
    let sent = sent_since(&mock);
    assert!(sent.iter().all(|(_, key)| key == KEY_ONE || key == KEY_THREE), "nobody sends to KEY_TWO: {sent:?}");
}
