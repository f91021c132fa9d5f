//! Several real keyrelay processes sharing one Redis, as replicas behind a
//! load balancer run: each its own child process ([`super::binary`]) in its
//! own temporary working directory (so its own `data/keyrelay.db`), all
//! with the same environment and `config.toml`. Dropped, they are killed
//! (SIGKILL) with the test, pass or fail.
//!
//! ```ignore
//! let redis = RedisServer::start().await;
//! let mock = MockUpstream::start().await;
//! let replicas = Replicas::start(3, &replica_env(&mock, 3, &redis), None).await;
//! let reply = replicas[0].chat(&client).await;
//! replicas.barrier(&client, &mock, 0).await; // B and C heard what A said so far
//! ```

use std::{
    collections::BTreeMap,
    ops::Index,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;
use tempfile::TempDir;

use super::{
    Auth, MockUpstream, PROXY_KEY, Reply, Script, TestClient, assert_no_secret,
    binary::{Exited, Running, keyrelay, start},
    dialect_env, eventually, get, post,
    redis::RedisServer,
    test_daily_reset,
};

/// The model replicas' chat requests ask for.
pub const MODEL: &str = "openai/gpt-4o-mini";

/// The usual environment of a replica: the proxy key, `keys` pool keys of
/// `mock` (`OPENAI_API_KEY_1`, ...) and its base, Redis, and the daily
/// reset far from now.
pub fn replica_env(mock: &MockUpstream, keys: usize, redis: &RedisServer) -> Vec<(String, String)> {
    let mut env = dialect_env(&[mock], keys);
    env.extend(shared_env(redis));
    env
}

/// What every replica needs whatever its keys: `REDIS_URL`, and the
/// daily reset twelve hours from the test binary's start, so that no
/// reset (nor a cooldown cut short by one) falls inside a test.
pub fn shared_env(redis: &RedisServer) -> Vec<(String, String)> {
    let reset = test_daily_reset().as_secs();
    vec![
        ("REDIS_URL".to_owned(), redis.url()),
        ("KEYRELAY_PROXY__DAILY_RESET_UTC".to_owned(), format!("{:02}:{:02}", reset / 3600, reset % 3600 / 60)),
    ]
}

/// One keyrelay process.
pub struct Replica {
    /// `A`, `B`, `C`...: tags its chat requests (the body's `user`), so
    /// the mock's records say which replica sent them.
    pub name: String,
    running: Option<Running>,
    _dir: TempDir,
}

impl Replica {
    /// Starts the binary in a fresh directory holding `config_toml` (when
    /// given) as `config.toml`, with `env` only; waits for its banner.
    pub async fn start(name: &str, env: &[(String, String)], config_toml: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary working dir");
        if let Some(toml) = config_toml {
            std::fs::write(dir.path().join("config.toml"), toml).expect("config.toml written");
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let running = start(keyrelay(dir.path(), &env, &["--port", "0"])).await;
        Self { name: name.to_owned(), running: Some(running), _dir: dir }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap_or_else(|| panic!("replica {} was stopped", self.name))
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        self.running().url(path)
    }

    /// The `user` its chat requests carry.
    pub fn tag(&self) -> String {
        format!("replica-{}", self.name)
    }

    /// A chat completion request for `model`, tagged with [`Self::tag`].
    pub fn chat_request(&self, model: &str) -> http::Request<super::client::ReqBody> {
        let body = serde_json::json!({
            "model": model, "messages": [{"role": "user", "content": "Say hello"}], "user": self.tag(),
        });
        post(&self.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), body.to_string())
    }

    /// A chat completion for [`MODEL`].
    pub async fn chat(&self, client: &TestClient) -> Reply {
        client.fetch(self.chat_request(MODEL)).await
    }

    /// `GET /v1/keys`, checked (200, no secret), by key id.
    pub async fn keys(&self, client: &TestClient) -> BTreeMap<String, Value> {
        let reply = client.fetch(get(&self.url("/v1/keys"), Auth::Bearer(PROXY_KEY))).await;
        assert_eq!(reply.status, 200, "GET /v1/keys on {}: {}", self.name, reply.text());
        assert_no_secret("GET /v1/keys", reply.text());
        let data = reply.json()["data"].as_array().expect("a key list").clone();
        data.into_iter().map(|k| (k["id"].as_str().expect("an id").to_owned(), k)).collect()
    }

    /// What `/v1/keys` says of the key with id `key_id`.
    pub async fn key(&self, client: &TestClient, key_id: &str) -> Value {
        let mut keys = self.keys(client).await;
        keys.remove(key_id).unwrap_or_else(|| panic!("{} has no key {key_id}", self.name))
    }

    /// Whether the key with id `key_id` cools for `model` (a bare model).
    pub async fn cools(&self, client: &TestClient, key_id: &str, model: &str) -> bool {
        let key = self.key(client, key_id).await;
        key["cooldowns"].as_array().is_some_and(|c| c.iter().any(|c| c["model"] == model))
    }

    /// SIGKILL: no shutdown, no lease handed back; waits for the exit.
    pub async fn kill(&mut self) -> Exited {
        self.running.take().expect("a running replica").kill().await
    }

    /// SIGTERM, and waits for the exit.
    pub async fn terminate(&mut self) -> Exited {
        self.running.take().expect("a running replica").terminate().await
    }
}

/// Replicas `A`, `B`, `C`... with the same configuration.
pub struct Replicas(Vec<Replica>);

impl Replicas {
    /// Starts `n` replicas at once, each with `env` and `config_toml`.
    pub async fn start(n: usize, env: &[(String, String)], config_toml: Option<&str>) -> Self {
        let names: Vec<String> = (0..n).map(|i| char::from(b'A' + i as u8).to_string()).collect();
        let started = names.iter().map(|name| Replica::start(name, env, config_toml));
        Self(futures_util::future::join_all(started).await)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Replica> {
        self.0.iter()
    }

    /// Replica `i` modulo their number: a round-robin load balancer.
    pub fn nth(&self, i: usize) -> &Replica {
        &self.0[i % self.0.len()]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Replica {
        &mut self.0[i]
    }

    /// Waits until every other replica applied what replica `from` has
    /// announced so far: `from` meets a 429 for a model of its own (a
    /// cooldown for that model only, which no other request asks for), and
    /// each other replica shows that cooldown. A replica publishes its
    /// events in order on one channel and the others apply them in order,
    /// so once the last is applied, so is everything before it. No
    /// per-key script may be set on `mock` meanwhile (the 429 is scripted
    /// for whichever key `from` picks).
    pub async fn barrier(&self, client: &TestClient, mock: &MockUpstream, from: usize) {
        static BARRIERS: AtomicUsize = AtomicUsize::new(0);
        let model = format!("barrier-{}", BARRIERS.fetch_add(1, Ordering::Relaxed));
        let before = mock.requests().len();
        mock.push(Script::rate_limited(Some("600")));
        let reply = client.fetch(self.0[from].chat_request(&format!("openai/{model}"))).await;
        assert_eq!(reply.status, 200, "the barrier request rotates past its 429: {}", reply.text());
        let cooled = mock.requests()[before..]
            .iter()
            .find(|r| r.answer == "status:429")
            .and_then(|r| r.key.clone())
            .expect("the barrier's 429");
        let key_id = mock.key_id(&cooled);
        let sender = &self.0[from].name;
        for replica in self.0.iter().filter(|r| r.name != *sender) {
            let what = format!("replica {} to apply replica {sender}'s news ({model})", replica.name);
            eventually(&what, || replica.cools(client, &key_id, &model)).await;
        }
    }

    /// SIGTERM to every replica still running; what each printed, for
    /// secret checks.
    pub async fn terminate_all(mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for replica in self.0.iter_mut().filter(|r| r.running.is_some()) {
            exited.push(replica.terminate().await);
        }
        exited
    }
}

impl Index<usize> for Replicas {
    type Output = Replica;

    fn index(&self, i: usize) -> &Replica {
        &self.0[i]
    }
}
