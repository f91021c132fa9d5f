//! Each key's counters of the day summed over the replicas on a real Redis
//! (issue 16): `GET /v1/keys` on any replica shows the pool's totals; with
//! Redis gone each shows its own and says so; with Redis back (empty) the
//! totals again; a replica restarted on its data dir counts nothing twice.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::{
    Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, TestClient, chat_body, dialect_env, eventually,
    get, post, redis::RedisServer,
};

fn env(mock: &MockUpstream, redis: &RedisServer) -> Vec<(String, String)> {
    let mut env = dialect_env(&[mock], 3);
    env.push(("REDIS_URL".to_owned(), redis.url()));
    env
}

async fn chat(client: &TestClient, proxy: &Proxy, model: &str) {
    let url = proxy.url("/v1/chat/completions");
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body(model, false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// `GET /v1/keys`: its `counters` field, and each key's `today` and
/// `models` by key id.
async fn shown(client: &TestClient, proxy: &Proxy) -> (String, BTreeMap<String, Value>) {
    let reply = client.fetch(get(&proxy.url("/v1/keys"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let keys = body["data"].as_array().unwrap().iter().map(|k| (k["id"].as_str().unwrap().to_owned(), counters_of(k)));
    (body["counters"].as_str().unwrap_or_default().to_owned(), keys.collect())
}

fn counters_of(key: &Value) -> Value {
    json!({ "today": key["today"], "models": key["models"] })
}

/// What the replicas count of each key today, each by itself, as
/// `/v1/keys` would show it (the pool's own status, no Redis).
fn local(proxy: &Proxy) -> BTreeMap<String, Value> {
    proxy.pool().key_statuses().iter().map(|k| (k.id.clone(), counters_of(&serde_json::to_value(k).unwrap()))).collect()
}

/// The sum of the replicas' own counters: what every replica should show.
fn summed(replicas: &[&Proxy]) -> BTreeMap<String, Value> {
    let mut totals: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
    for replica in replicas {
        for (key, counters) in local(replica) {
            let models = totals.entry(key).or_default();
            for model in counters["models"].as_array().unwrap() {
                let sum = models.entry(model["model"].as_str().unwrap().to_owned()).or_default();
                for (name, value) in model["today"].as_object().unwrap() {
                    *sum.entry(name.clone()).or_default() += value.as_u64().unwrap();
                }
            }
        }
    }
    // Every counter the status shows, at 0.
    let mut zero = local(replicas[0]).into_values().next().unwrap()["today"].clone();
    zero.as_object_mut().unwrap().values_mut().for_each(|value| *value = json!(0));
    totals
        .into_iter()
        .map(|(key, models)| {
            let mut today = zero.clone();
            for sum in models.values() {
                for (name, value) in sum {
                    today[name] = json!(today[name].as_u64().unwrap() + value);
                }
            }
            let models: Vec<Value> =
                models.into_iter().map(|(model, today)| json!({"model": model, "today": today})).collect();
            (key, json!({ "today": today, "models": models }))
        })
        .collect()
}

async fn shows_pool_totals(client: &TestClient, replica: &Proxy, replicas: &[&Proxy]) -> bool {
    let (scope, keys) = shown(client, replica).await;
    scope == "pool" && keys == summed(replicas)
}

#[tokio::test]
async fn every_replica_shows_the_pools_counters_and_its_own_without_redis() {
    let mock = MockUpstream::start().await;
    let mut redis = RedisServer::start().await;
    let client = TestClient::http1();
    let data = tempfile::tempdir().unwrap();
    let a = Proxy::start_in(env(&mock, &redis), data.path(), |_| {}).await;
    let (b, c) = (Proxy::start(env(&mock, &redis)).await, Proxy::start(env(&mock, &redis)).await);

    // Requests spread unevenly over the replicas, keys and two models.
    for (replica, model, times) in
        [(&a, "openai/gpt-4o-mini", 3), (&b, "openai/gpt-4o", 2), (&c, "openai/gpt-4o-mini", 4)]
    {
        for _ in 0..times {
            chat(&client, replica, model).await;
        }
    }
    let all = [&a, &b, &c];
    let requests: u64 = summed(&all).values().map(|k| k["today"]["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 9, "the test's own sum counts every request");
    for replica in all {
        assert_ne!(local(replica), summed(&all), "each replica alone saw only part");
        eventually("the pool's totals on every replica", || shows_pool_totals(&client, replica, &all)).await;
    }

    // One hash per key and day under the key's hash tag, a field per
    // replica, model and counter; never a secret.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let stored: Vec<String> = redis::cmd("KEYS").arg("keyrelay:*:day:*").query_async(&mut conn).await.unwrap();
    assert!(!stored.is_empty());
    let mut replicas = std::collections::BTreeSet::new();
    for name in &stored {
        let tag = name.strip_prefix("keyrelay:{").and_then(|rest| rest.split_once("}:day:")).map(|(id, _)| id);
        assert!([KEY_ONE, KEY_TWO, KEY_THREE].iter().any(|k| Some(support::key_id(k).as_str()) == tag), "{name}");
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(name).query_async(&mut conn).await.unwrap();
        for (field, value) in &fields {
            let parts: Vec<&str> = field.split('|').collect();
            assert_eq!(parts.len(), 3, "replica|model|counter: {field}");
            replicas.insert(parts[0].to_owned());
            for secret in [KEY_ONE, KEY_TWO, KEY_THREE, PROXY_KEY] {
                assert!(
                    !name.contains(secret) && !field.contains(secret) && !value.contains(secret),
                    "a secret in Redis"
                );
            }
        }
        let ttl: i64 = redis::cmd("TTL").arg(name).query_async(&mut conn).await.unwrap();
        assert!(ttl > 24 * 3600, "kept about two days: {ttl}");
    }
    assert_eq!(replicas.len(), 3, "one id per replica: {replicas:?}");

    // Redis goes away: each replica shows its own counters, and says so.
    redis.stop().await;
    chat(&client, &b, "openai/gpt-4o").await;
    for replica in all {
        eventually("each replica's own counters without Redis", || async {
            shown(&client, replica).await == ("replica".to_owned(), local(replica))
        })
        .await;
    }

    // Redis comes back empty: every replica writes its counters again.
    redis.resume().await;
    for replica in all {
        eventually("the pool's totals again once Redis is back", || shows_pool_totals(&client, replica, &all)).await;
    }

    // A restarted on its data dir: its counters of the day come back from
    // its state, under the same replica id, so nothing counts twice.
    a.stop().await;
    let a = Proxy::start_in(env(&mock, &redis), data.path(), |_| {}).await;
    chat(&client, &a, "openai/gpt-4o").await;
    let all = [&a, &b, &c];
    let requests: u64 = summed(&all).values().map(|k| k["today"]["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 11, "A's counters came back with its state");
    for replica in all {
        eventually("the same totals after A's restart", || shows_pool_totals(&client, replica, &all)).await;
    }
}

#[tokio::test]
async fn without_redis_the_counters_are_the_replicas() {
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start(dialect_env(&[&mock], 2)).await;
    chat(&client, &proxy, "openai/gpt-4o-mini").await;
    assert_eq!(shown(&client, &proxy).await, ("replica".to_owned(), local(&proxy)));
}
