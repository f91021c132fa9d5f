//! Replicas sharing their keys' health on a real Redis (issue 16): a
//! cooldown met by one replica is obeyed by the others before their next
//! request, a replica started later reads it back, and losing Redis fails
//! no request and converges once Redis is back.

mod support;

use support::{
    Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, chat_body, dialect_env,
    eventually, keys_by_id, post, redis::RedisServer,
};

fn env(mock: &MockUpstream, redis: &RedisServer) -> Vec<(String, String)> {
    let mut env = dialect_env(&[mock], 3);
    env.push(("REDIS_URL".to_owned(), redis.url()));
    env
}

async fn chat(client: &TestClient, proxy: &Proxy) -> u16 {
    let url = proxy.url("/v1/chat/completions");
    client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await.status.as_u16()
}

async fn cooling(client: &TestClient, proxy: &Proxy, key: &str) -> bool {
    let keys = keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await;
    keys[&support::key_id(key)]["state"] == "cooling"
}

#[tokio::test]
async fn three_replicas_obey_one_replicas_cooldown_and_converge_after_losing_redis() {
    let mock = MockUpstream::start().await;
    let mut redis = RedisServer::start().await;
    let client = TestClient::http1();
    let (a, b, c) = (
        Proxy::start(env(&mock, &redis)).await,
        Proxy::start(env(&mock, &redis)).await,
        Proxy::start(env(&mock, &redis)).await,
    );

    // Replica A meets a 429 on KEY_ONE (two minutes).
    mock.always_for(KEY_ONE, Script::rate_limited(Some("120")));
    for _ in 0..3 {
        assert_eq!(chat(&client, &a).await, 200, "A rotates past the 429");
        if cooling(&client, &a, KEY_ONE).await {
            break;
        }
    }
    assert!(cooling(&client, &a, KEY_ONE).await, "A cooled KEY_ONE");
    mock.clear_for(KEY_ONE);
    // B and C learn it from Redis, without meeting the 429 themselves.
    for replica in [&b, &c] {
        eventually("the cooldown to reach the other replicas", || cooling(&client, replica, KEY_ONE)).await;
    }
    mock.take_requests();
    for replica in [&b, &c, &b, &c] {
        assert_eq!(chat(&client, replica).await, 200);
    }
    let served: Vec<String> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
    assert!(served.iter().all(|key| key != KEY_ONE), "nobody sends to the cooling key: {served:?}");
    // Written with the key's hash tag, and gone with the cooldown.
    let stored = format!("EXISTS \"keyrelay:{{{}}}:cool:gpt-4o-mini\"", support::key_id(KEY_ONE));
    assert_eq!(redis.command(&stored).await, ":1");

    // A replica started now reads the live cooldown back.
    let d = Proxy::start(env(&mock, &redis)).await;
    eventually("a late replica to read the cooldown", || cooling(&client, &d, KEY_ONE)).await;

    // Redis goes away: no request fails for it.
    redis.stop().await;
    for replica in [&a, &b, &c, &d] {
        assert_eq!(chat(&client, replica).await, 200, "served without Redis");
    }
    // Meanwhile only B meets a 429 on KEY_TWO; the others cannot know.
    mock.always_for(KEY_TWO, Script::rate_limited(Some("120")));
    for _ in 0..3 {
        assert_eq!(chat(&client, &b).await, 200, "B rotates past the 429 without Redis");
        if cooling(&client, &b, KEY_TWO).await {
            break;
        }
    }
    mock.clear_for(KEY_TWO);
    assert!(cooling(&client, &b, KEY_TWO).await, "B cooled KEY_TWO");
    for replica in [&a, &c, &d] {
        assert!(!cooling(&client, replica, KEY_TWO).await, "no news without Redis");
    }
    // Redis comes back, empty: B publishes what it learned meanwhile, and
    // every replica ends up with both cooldowns.
    redis.resume().await;
    for replica in [&a, &c, &d] {
        eventually("B's cooldown everywhere after Redis is back", || cooling(&client, replica, KEY_TWO)).await;
        assert!(cooling(&client, replica, KEY_ONE).await, "the older cooldown stays");
    }
    mock.take_requests();
    assert_eq!(chat(&client, &c).await, 200);
    let served: Vec<String> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
    assert_eq!(served, [KEY_THREE], "only the key nobody cooled");
}

fn responses_body(extra: serde_json::Value) -> String {
    let mut body = serde_json::json!({"model": "gpt-5-codex", "input": "Hi", "store": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

#[tokio::test]
async fn a_responses_follow_up_on_another_replica_reaches_the_key_that_made_it() {
    use support::{get, mock::responses};
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let (a, c) = (Proxy::start(env(&mock, &redis)).await, Proxy::start(env(&mock, &redis)).await);
    // Two requests first, so that A's least-used choice for the response
    // is not the key a fresh C would pick on its own.
    for _ in 0..2 {
        assert_eq!(chat(&client, &a).await, 200);
    }
    mock.take_requests();
    let first = client
        .fetch(post(&a.url("/v1/responses"), Auth::Bearer(PROXY_KEY), responses_body(serde_json::json!({}))))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let owner = mock.requests()[0].key.clone().unwrap();
    assert_ne!(owner, KEY_ONE, "the test needs an owner C would not pick by itself");

    // A publishes the owner (stored with the key's hash tag); C applies it
    // a moment later: reading the stored response works there.
    let published = format!("EXISTS \"keyrelay:{{{}}}:resp:{id}\"", support::key_id(&owner));
    eventually("A to publish the response's owner", || async { redis.command(&published).await == ":1" }).await;
    let stored = format!("/v1/responses/{id}");
    eventually("C to know which key made the response", || async {
        client.fetch(get(&c.url(&stored), Auth::Bearer(PROXY_KEY))).await.status == 200
    })
    .await;
    // Follow-ups on C, which would spread over its idle keys, all go there.
    let mut previous = id;
    for turn in 0..3 {
        let body = responses_body(serde_json::json!({"previous_response_id": previous}));
        let reply = client.fetch(post(&c.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body)).await;
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.text());
        previous = reply.json()["id"].as_str().unwrap().to_owned();
        assert!(responses::made_with(&previous, &owner), "turn {turn} on the owner's key");
    }
    let elsewhere: Vec<_> = mock.requests().into_iter().filter(|r| r.key.as_deref() != Some(owner.as_str())).collect();
    assert!(
        elsewhere.is_empty(),
        "C never tried another key: {:?}",
        elsewhere.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    // And back on A, C's newest response is known too.
    let body = responses_body(serde_json::json!({"previous_response_id": previous}));
    eventually("A to know C's response", || async {
        let reply = client.fetch(post(&a.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.clone())).await;
        reply.status == 200
    })
    .await;
}

#[tokio::test]
async fn a_session_stays_on_its_key_whichever_replica_serves_it() {
    use keyrelay_layers::pool::SessionAffinity;
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let client = TestClient::http1();
    let (a, b) = (Proxy::start(env(&mock, &redis)).await, Proxy::start(env(&mock, &redis)).await);
    // Two requests without a session first, so that A's choice for the
    // session is not the key a fresh B would pick on its own.
    for _ in 0..2 {
        assert_eq!(chat(&client, &a).await, 200);
    }
    mock.take_requests();
    let with_session = |proxy: &Proxy| {
        let mut req =
            post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false));
        req.headers_mut().insert("x-session-id", "agent-run-42".parse().unwrap());
        client.fetch(req)
    };
    assert_eq!(with_session(&a).await.status, 200);
    let key = mock.take_requests()[0].key.clone().unwrap();
    assert_ne!(key, KEY_ONE, "the test needs a key B would not pick by itself");

    // B hears of the binding (by its digest: the session's name never
    // leaves the replica), then serves the session on the same key.
    let digest = SessionAffinity::digest("agent-run-42", "gpt-4o-mini");
    let sessions = b.pool().provider("openai").unwrap().sessions().clone();
    eventually("B to hear the session's key", || async {
        sessions.key_for_digest(digest, tokio::time::Instant::now()).is_some()
    })
    .await;
    let stored = format!("GET \"keyrelay:{{session:{digest:016x}}}:key\"");
    assert!(!redis.command(&stored).await.contains("agent-run-42"), "no session name in Redis");
    for _ in 0..3 {
        assert_eq!(with_session(&b).await.status, 200);
    }
    let served: Vec<String> = mock.take_requests().into_iter().map(|r| r.key.unwrap_or_default()).collect();
    assert_eq!(served, [key.clone(), key.clone(), key], "the session's key on B too");
}

#[tokio::test]
async fn a_client_key_made_or_revoked_on_one_replica_is_so_on_the_others_at_once() {
    use support::{ADMIN_KEY, postgres::PostgresServer, request};
    let pg = PostgresServer::start();
    let ledger = pg.create_database();
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start().await;
    let replica_env = || {
        let mut env = env(&mock, &redis);
        env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
        env.push(("KEYRELAY_LEDGER__URL".to_owned(), ledger.clone()));
        env
    };
    let client = TestClient::http1();
    let (a, b) = (Proxy::start(replica_env()).await, Proxy::start(replica_env()).await);
    let chat_as = |proxy: &Proxy, key: &str| {
        let url = proxy.url("/v1/chat/completions");
        let req = post(&url, Auth::Bearer(key), chat_body("openai/gpt-4o-mini", false));
        let client = client.clone();
        async move { client.fetch(req).await.status.as_u16() }
    };

    let made =
        client.fetch(post(&a.url("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY), r#"{"name": "notebook"}"#)).await;
    assert_eq!(made.status, 201, "{}", made.text());
    let key = made.json()["key"].as_str().unwrap().to_owned();
    eventually("B to accept the key made on A", || async { chat_as(&b, &key).await == 200 }).await;

    let revoked = client
        .fetch(request(http::Method::DELETE, &a.url("/v1/admin/clients/notebook"), Auth::Bearer(ADMIN_KEY)))
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(chat_as(&a, &key).await, 401, "revoked at once where it was revoked");
    eventually("B to refuse the key revoked on A", || async { chat_as(&b, &key).await == 401 }).await;
}
