//! Secrets never leak (issue 5, item 5): the real binary, with the most
//! verbose logging an operator would turn on (`RUST_LOG=debug`), runs a mix
//! of traffic against mock upstreams whose faults echo the keys they were
//! sent, is stopped with SIGTERM, restarted on the same data dir, and
//! stopped again. None of the configured secrets (proxy key, admin key,
//! every provider key, the password in a base URL's userinfo), nor the
//! wrong keys clients presented, may then appear in:
//!
//! - stdout and stderr of both runs;
//! - any file under the working directory or the data dir (`keyrelay.db`,
//!   its usage ledger and the pool's state, and anything else written
//!   there);
//! - any response status line, header or body received, streams included,
//!   which covers every error body, `/metrics`, `/v1/keys`, `/v1/providers`
//!   and `/v1/models`.
//!
//! Request logging is on, so every request's directory (request, response
//! or stream, metadata) under the data dir is scanned too.
//!
//! Over 600 lines on purpose: one run of the real binary covers every
//! fault, and its traffic, its scans and its proofs read together.
//!
//! A secret "appears" when the whole string does, when any 8 characters in
//! a row of it do (a prefix or suffix shown by a careless mask such as
//! `sk-proj-...Zt2m`), or when its marker `CANARY` does (a fragment of its
//! middle).
//!
//! Traffic (each fault is scripted so that it happens whatever key the
//! pool picks; the mock records prove each one did):
//!
//! - OpenAI, three keys: successes (Bearer and `x-api-key`, HTTP/1.1 and
//!   h2c), a stream, embeddings; a 500 echoing the key then a retry on the
//!   same key; a reset then a retried stream; a 401 echoing the key that
//!   rotates to another key; a 429 that rotates; a stream that breaks after
//!   its `200`; a whole body that breaks; every key failing (500s, 502s and
//!   503s echoing the keys; resets for a stream) so the 502 must carry a
//!   redacted upstream error; every key refused with 401s echoing them; an
//!   upstream 400 passed through;
//! - Anthropic and Gemini, one key each, through their own wire formats:
//!   successes, streams, 500s echoing the key until the request gives up,
//!   broken streams, refused keys, a rate limit past the deadline (429 from
//!   keyrelay itself);
//! - a custom provider `local` with its own key: a success, a stream, a 401
//!   echoing the key, 500s echoing it; and a custom provider `vault` with a
//!   password in its base URL's userinfo and no key (listed by
//!   `/v1/providers` with the userinfo hidden; a request gets 503);
//! - bad requests: not JSON, no model, no provider prefix, unknown provider,
//!   unknown URL, wrong method; no proxy key, wrong ones by both headers
//!   (a guess, the client's own OpenAI key, a pool key, the admin key);
//! - admin actions (disable, enable, reset, an unknown id) with the admin
//!   key, and refused with the proxy key (403); `/v1/keys` with either key;
//! - token counting (good and bad), `/v1/models`, `/v1/providers`,
//!   `/metrics`, `/health`;
//! - then a restart on the same data dir: the state is restored (a key left
//!   disabled stays disabled), a few more requests, a stop.
//!
//! The mix runs twice: as described, and with `local`'s base
//! URL carrying the password in its userinfo too, so that every call to it
//! goes through a URL with credentials (at debug level hyper-util's
//! connection pool logs the URL's authority, so keyrelay must drop the
//! userinfo before any request is made).

mod support;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{
    Auth, MockUpstream, Recorded, Script, TestClient,
    binary::{self, Running},
    client::ReqBody,
    closed_port, get, key_id_of,
    mock::{anthropic, gemini},
    post, request, within,
};
use tempfile::TempDir;

// ---- the secrets -----------------------------------------------------------------

/// Every secret is distinctive: realistic prefix, the marker `CANARY`, and a
/// tail no legitimate output contains (no 8 characters in a row of any of
/// them are hex digits only, so a key id can never match by chance).
const PROXY_KEY: &str = "kr-proxy-CANARY-Pq7xZw3v";
const ADMIN_KEY: &str = "kr-admin-CANARY-Hm4tYx9k";
const OPENAI_KEYS: [&str; 3] =
    ["sk-proj-CANARY-oa1-Vx8qZt2m", "sk-proj-CANARY-oa2-Rk5wYp7j", "sk-proj-CANARY-oa3-Tz9mQx4h"];
const ANTHROPIC_KEY: &str = "sk-ant-api03-CANARY-an1-Wq6zXk3p";
const GEMINI_KEY: &str = "AIzaSyCANARY-gm1-Jx7wKz5q";
const LOCAL_KEY: &str = "local-CANARY-lc1-Mz8xWq2t";
/// The password in `VAULT_API_BASE`'s (and in one test `LOCAL_API_BASE`'s) userinfo.
const USERINFO_PASSWORD: &str = "pw-CANARY-ui1-Qy5zXm9w";
/// What clients wrongly present as the proxy key: a guess, and their own
/// OpenAI key (the proxy must not repeat either).
const WRONG_GUESS: &str = "guess-CANARY-wr1-Kq3zXw8p";
const CLIENT_OWN_KEY: &str = "sk-client-CANARY-own-Zx4qWm7y";

const SECRETS: [&str; 11] = [
    PROXY_KEY,
    ADMIN_KEY,
    OPENAI_KEYS[0],
    OPENAI_KEYS[1],
    OPENAI_KEYS[2],
    ANTHROPIC_KEY,
    GEMINI_KEY,
    LOCAL_KEY,
    USERINFO_PASSWORD,
    WRONG_GUESS,
    CLIENT_OWN_KEY,
];
const MARKER: &str = "CANARY";
/// The shortest run of a secret's characters that counts as showing it.
const WINDOW: usize = 8;

/// Every place a secret showed, so that one run reports all of them.
#[derive(Debug, Default)]
struct Leaks {
    found: Vec<String>,
    scanned_bytes: usize,
}

impl Leaks {
    fn scan(&mut self, what: &str, text: &str) {
        self.scanned_bytes += text.len();
        let before = self.found.len();
        for secret in SECRETS {
            let shown =
                if text.contains(secret) { Some(secret) } else { own_runs(secret).find(|run| text.contains(run)) };
            if let Some(shown) = shown {
                self.found.push(format!("{what} shows {shown:?} of the secret {secret:?}:\n{}", context(text, shown)));
            }
        }
        if self.found.len() == before {
            // A run several secrets share (`sk-proj-`, `-CANARY-`), or the marker.
            let runs = SECRETS.iter().flat_map(|secret| (0..=secret.len() - WINDOW).map(|i| &secret[i..i + WINDOW]));
            if let Some(shown) = runs.chain([MARKER]).find(|run| text.contains(run)) {
                self.found.push(format!("{what} shows {shown:?}, part of a secret:\n{}", context(text, shown)));
            }
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        assert!(
            self.found.is_empty(),
            "{} leak(s):\n\n{}",
            self.found.len(),
            self.found.iter().map(String::as_str).collect::<Vec<_>>().join("\n\n")
        );
    }
}

/// The runs of [`WINDOW`] characters of `secret` that no other secret
/// shares (a shared one, like `-CANARY-`, is reported once per text).
fn own_runs(secret: &'static str) -> impl Iterator<Item = &'static str> {
    (0..=secret.len() - WINDOW)
        .map(move |i| &secret[i..i + WINDOW])
        .filter(move |run| SECRETS.iter().all(|other| *other == secret || !other.contains(run)))
}

/// The lines around the first occurrence of `needle`.
fn context(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let start = text[..at].rmatch_indices('\n').nth(1).map_or(0, |(i, _)| i + 1);
    let end = text[at..].match_indices('\n').nth(1).map_or(text.len(), |(i, _)| at + i);
    format!("    ...{}...", &text[start..end])
}

// ---- the binary ----------------------------------------------------------------

/// Starts the binary on the data dir `data_dir` with request logging on:
/// per-request log directories land in the data dir, which is scanned.
async fn start(cwd: &Path, data_dir: &Path, env: &[(String, String)]) -> Running {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data_dir = data_dir.to_str().expect("a UTF-8 temporary path");
    let args = ["--port", "0", "--data-dir", data_dir, "--enable-request-logging"];
    binary::start(binary::keyrelay(cwd, &env, &args)).await
}

// ---- talking to it -------------------------------------------------------------

/// A whole response, read frame by frame; a body that fails half way is
/// kept as far as it came.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
    /// Whether the body ended cleanly (false: it failed half way).
    complete: bool,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error.code` of an OpenAI-shaped error body.
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    /// Everything received, as one text to scan.
    fn render(&self, label: &str) -> String {
        let mut out = format!("{label}: {}\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        out.push('\n');
        out.push_str(&self.body);
        out
    }
}

/// A client session against one run of the binary; every answer is kept
/// for the leak scan.
struct Session {
    base: String,
    h1: TestClient,
    h2: TestClient,
    transcript: Vec<String>,
}

impl Session {
    fn new(addr: SocketAddr) -> Self {
        Self { base: format!("http://{addr}"), h1: TestClient::http1(), h2: TestClient::h2c(), transcript: Vec::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&mut self, label: &str, req: Request<ReqBody>) -> Got {
        self.send_with(false, label, req).await
    }

    async fn send_with(&mut self, h2: bool, label: &str, req: Request<ReqBody>) -> Got {
        let what = format!("{label} ({} {})", req.method(), req.uri().path());
        let res = if h2 { self.h2.send(req).await } else { self.h1.send(req).await };
        let (parts, mut body) = res.into_parts();
        let mut bytes = Vec::new();
        let complete = within(&format!("the body of {what}"), async {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            bytes.extend_from_slice(data);
                        }
                    }
                    Some(Err(_)) => break false,
                    None => break true,
                }
            }
        })
        .await;
        let got = Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            complete,
        };
        self.transcript.push(got.render(&what));
        got
    }

    async fn post(&mut self, label: &str, path: &str, auth: Auth<'_>, body: impl Into<Bytes>) -> Got {
        let req = post(&self.url(path), auth, body);
        self.send(label, req).await
    }

    async fn get(&mut self, label: &str, path: &str, auth: Auth<'_>) -> Got {
        let req = get(&self.url(path), auth);
        self.send(label, req).await
    }

    /// A chat request with the proxy key; `tag` goes in `user`, which the
    /// OpenAI mocks script faults by.
    async fn chat(&mut self, label: &str, model: &str, stream: bool, tag: Option<&str>) -> Got {
        let mut body =
            json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "stream": stream});
        if let Some(tag) = tag {
            body["user"] = tag.into();
        }
        self.post(label, "/v1/chat/completions", Auth::Bearer(PROXY_KEY), body.to_string()).await
    }

    /// `POST /v1/keys/{id}/{action}`.
    async fn key_action(&mut self, id: &str, action: &str, auth: Auth<'_>) -> Got {
        let req = request(Method::POST, &self.url(&format!("/v1/keys/{id}/{action}")), auth);
        self.send(&format!("{action} {id}"), req).await
    }

    /// An admin action that must succeed.
    async fn admin(&mut self, id: &str, action: &str) {
        let got = self.key_action(id, action, Auth::Bearer(ADMIN_KEY)).await;
        assert_eq!(got.status, 200, "{action} {id}: {}", got.body);
        assert_eq!(got.json()["id"], id, "{}", got.body);
    }

    /// `GET /v1/keys` as a map from key id to its status.
    async fn keys(&mut self, label: &str, auth: Auth<'_>) -> HashMap<String, Value> {
        let got = self.get(label, "/v1/keys", auth).await;
        assert_eq!(got.status, 200, "{label}: {}", got.body);
        got.json()["data"]
            .as_array()
            .expect("a key list")
            .iter()
            .map(|k| (k["id"].as_str().expect("an id").to_owned(), k.clone()))
            .collect()
    }
}

#[track_caller]
fn expect(got: &Got, status: u16, code: &str) {
    assert_eq!(got.status, status, "{}", got.body);
    if !code.is_empty() {
        assert_eq!(got.code(), code, "{}", got.body);
    }
}

#[track_caller]
fn expect_stream_done(got: &Got) {
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.complete && got.body.trim_end().ends_with("data: [DONE]"), "a whole stream: {}", got.body);
}

// ---- the mocks ------------------------------------------------------------------

/// Faults for the OpenAI mock by request tag (the body's `user`), taken in
/// arrival order whatever key the pool picked: so a fault hits the first
/// key tried, and a retry or rotation meets the next script (or success).
#[derive(Clone, Debug, Default)]
struct TagScripts(Arc<Mutex<HashMap<String, VecDeque<Script>>>>);

impl TagScripts {
    fn set(&self, tag: &str, scripts: Vec<Script>) {
        self.0.lock().unwrap().insert(tag.to_owned(), scripts.into());
    }

    fn next(&self, req: &Recorded) -> Script {
        let tag = req.user();
        tag.and_then(|tag| self.0.lock().unwrap().get_mut(&tag)?.pop_front()).unwrap_or(Script::Ok)
    }
}

struct Mocks {
    openai: MockUpstream,
    faults: TagScripts,
    anthropic: MockUpstream,
    gemini: MockUpstream,
    /// The custom provider `local`, with a key, behind a base URL that
    /// carries the password in its userinfo when `local_userinfo`.
    local: MockUpstream,
    local_userinfo: bool,
    /// The custom provider `vault`: a base URL with the password in its
    /// userinfo, at a closed port, and no key (listed, never called).
    vault_port: u16,
}

impl Mocks {
    async fn start(local_userinfo: bool) -> Self {
        let openai = MockUpstream::start().await;
        let faults = TagScripts::default();
        for key in OPENAI_KEYS {
            let faults = faults.clone();
            openai.faults_for(key, move |req| faults.next(req));
        }
        Self {
            openai,
            faults,
            anthropic: MockUpstream::anthropic().await,
            gemini: MockUpstream::gemini().await,
            local: MockUpstream::start().await,
            local_userinfo,
            vault_port: closed_port(),
        }
    }

    /// `local`'s base URL as `/v1/providers` must show it: no userinfo.
    fn local_base_shown(&self) -> String {
        format!("http://{}/v1", self.local.addr())
    }

    fn env(&self) -> Vec<(String, String)> {
        let local_base = match self.local_userinfo {
            true => format!("http://relayuser:{USERINFO_PASSWORD}@{}/v1", self.local.addr()),
            false => self.local_base_shown(),
        };
        let mut env = vec![
            ("RUST_LOG", "debug".to_owned()),
            ("PROXY_API_KEY", PROXY_KEY.to_owned()),
            ("ADMIN_API_KEY", ADMIN_KEY.to_owned()),
            // Short enough that a key cooling for a minute is refused at
            // once (429) instead of waited for.
            ("GLOBAL_TIMEOUT", "8".to_owned()),
            ("OPENAI_API_BASE", self.openai.base()),
            ("ANTHROPIC_API_BASE", self.anthropic.base()),
            ("ANTHROPIC_API_KEY_1", ANTHROPIC_KEY.to_owned()),
            ("GEMINI_API_BASE", self.gemini.base()),
            ("GEMINI_API_KEY_1", GEMINI_KEY.to_owned()),
            ("LOCAL_API_BASE", local_base),
            ("LOCAL_API_KEY", LOCAL_KEY.to_owned()),
            ("VAULT_API_BASE", format!("http://vaultuser:{USERINFO_PASSWORD}@127.0.0.1:{}/v1", self.vault_port)),
        ];
        for (i, key) in OPENAI_KEYS.iter().enumerate() {
            env.push((["OPENAI_API_KEY_1", "OPENAI_API_KEY_2", "OPENAI_API_KEY_3"][i], (*key).to_owned()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// What the OpenAI mock answered the requests tagged `tag`, and with
    /// which keys.
    fn tagged(&self, tag: &str) -> Vec<(String, String)> {
        self.openai
            .requests()
            .into_iter()
            .filter(|r| r.user().as_deref() == Some(tag))
            .map(|r| (r.bearer().unwrap_or_default().to_owned(), r.answer))
            .collect()
    }
}

/// Every configured key's id, as `/v1/keys` and the state file name it.
struct Ids {
    openai: [String; 3],
    anthropic: String,
    gemini: String,
    local: String,
}

impl Ids {
    fn new() -> Self {
        Self {
            openai: OPENAI_KEYS.map(|k| key_id_of("openai", k)),
            anthropic: key_id_of("anthropic", ANTHROPIC_KEY),
            gemini: key_id_of("gemini", GEMINI_KEY),
            local: key_id_of("local", LOCAL_KEY),
        }
    }

    fn all(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.openai.iter().map(String::as_str).collect();
        all.extend([self.anthropic.as_str(), self.gemini.as_str(), self.local.as_str()]);
        all
    }
}

const GPT: &str = "openai/gpt-4o-mini";
const CLAUDE: &str = "anthropic/claude-sonnet-4-5";
const FLASH: &str = "gemini/gemini-2.5-flash";
const LOCAL_MODEL: &str = "local/llama3";
const CHAT: &str = "/v1/chat/completions";

// ---- the traffic ----------------------------------------------------------------

/// OpenAI: successes, retries, rotations, broken streams and bodies, every
/// key failing.
async fn openai_traffic(s: &mut Session, mocks: &Mocks, ids: &Ids) {
    let hello = json!({"model": GPT, "messages": [{"role": "user", "content": "Say hello"}]}).to_string();
    expect(&s.chat("chat", GPT, false, None).await, 200, "");
    expect(&s.post("chat with x-api-key", CHAT, Auth::XApiKey(PROXY_KEY), hello.clone()).await, 200, "");
    let h2 = post(&s.url(CHAT), Auth::Bearer(PROXY_KEY), hello);
    expect(&s.send_with(true, "chat over h2c", h2).await, 200, "");
    expect_stream_done(&s.chat("stream", GPT, true, None).await);
    let embed = json!({"model": "openai/text-embedding-3-small", "input": ["hello", "world"]}).to_string();
    expect(&s.post("embeddings", "/v1/embeddings", Auth::Bearer(PROXY_KEY), embed).await, 200, "");

    // A 500 echoing the key, then the same key again.
    mocks.faults.set("retry-500", vec![Script::server_error(500)]);
    expect(&s.chat("retry after a 500", GPT, false, Some("retry-500")).await, 200, "");
    let seen = mocks.tagged("retry-500");
    assert_eq!(seen.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(), ["status:500", "ok"], "{seen:?}");
    assert_eq!(seen[0].0, seen[1].0, "a transient failure is retried on the same key");

    // A reset, then the stream on the same key.
    mocks.faults.set("retry-reset", vec![Script::Reset]);
    expect_stream_done(&s.chat("stream after a reset", GPT, true, Some("retry-reset")).await);

    // A 401 echoing the key: that key is marked invalid, another answers.
    mocks.faults.set("rotate-401", vec![Script::invalid_key()]);
    expect(&s.chat("rotate after a 401", GPT, false, Some("rotate-401")).await, 200, "");
    let seen = mocks.tagged("rotate-401");
    assert_eq!(seen.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(), ["status:401", "ok"], "{seen:?}");
    assert_ne!(seen[0].0, seen[1].0, "a refused key is rotated away from");

    // A 429: that key cools for a minute, another answers.
    mocks.faults.set("rotate-429", vec![Script::rate_limited(Some("60"))]);
    expect(&s.chat("rotate after a 429", GPT, false, Some("rotate-429")).await, 200, "");
    assert_eq!(mocks.tagged("rotate-429").len(), 2);

    // A stream that breaks after its 200: it ends with an error event.
    mocks.faults.set("broken-stream", vec![Script::BreakAfter(2)]);
    let broken = s.chat("a stream that breaks", GPT, true, Some("broken-stream")).await;
    assert_eq!(broken.status, 200, "{}", broken.body);
    assert!(broken.body.contains("stream_broken"), "ends with an error event: {}", broken.body);

    // A whole (non-stream) body that breaks half way.
    mocks.faults.set("broken-body", vec![Script::BreakAfter(1)]);
    let _ = s.chat("a body that breaks", GPT, false, Some("broken-body")).await;

    // Back to a clean pool; the proxy key may read keys but not change them.
    for id in &ids.openai {
        let refused = s.key_action(id, "reset", Auth::Bearer(PROXY_KEY)).await;
        expect(&refused, 403, "admin_key_required");
        s.admin(id, "reset").await;
    }

    // Every key fails with transient errors that echo it: 502, whose
    // message carries the last upstream error, redacted.
    let all_fail = vec![
        Script::server_error(500),
        Script::server_error(500),
        Script::server_error(502),
        Script::server_error(502),
        Script::server_error(503),
        Script::server_error(503),
    ];
    mocks.faults.set("all-fail", all_fail);
    expect(&s.chat("every key fails", GPT, false, Some("all-fail")).await, 502, "upstream_failed");
    assert_eq!(mocks.tagged("all-fail").len(), 6, "each key tried twice: {:?}", mocks.tagged("all-fail"));
    mocks.faults.set("all-fail-stream", vec![Script::Reset; 6]);
    let got = s.chat("every key resets a stream", GPT, true, Some("all-fail-stream")).await;
    expect(&got, 502, "upstream_failed");

    // Every key refused, each 401 echoing its key.
    for id in &ids.openai {
        s.admin(id, "reset").await;
    }
    mocks.faults.set("all-401", vec![Script::invalid_key(); 3]);
    let got = s.chat("every key refused", GPT, false, Some("all-401")).await;
    assert!(matches!(got.status, 401 | 502 | 503), "{}: {}", got.status, got.body);
    assert_eq!(mocks.tagged("all-401").len(), 3, "{:?}", mocks.tagged("all-401"));
    for id in &ids.openai {
        s.admin(id, "reset").await;
    }

    // The request's own mistake, passed through untouched.
    mocks.faults.set("client-400", vec![Script::client_error()]);
    expect(&s.chat("an upstream 400", GPT, false, Some("client-400")).await, 400, "");
}

/// One translating provider's row for [`dialect_traffic`]: its faults in
/// its own words.
struct DialectFaults<'a> {
    mock: &'a MockUpstream,
    model: &'static str,
    key: &'static str,
    id: &'a str,
    /// A 500 whose message echoes the key.
    echoing: Script,
    /// Text, then the provider's own error event.
    broken: Vec<String>,
    /// A rate limit with a 60 s hint.
    limited: Script,
    /// The provider's answer to a bad key.
    refused: Script,
}

/// Anthropic and Gemini, one key each.
async fn dialect_traffic(s: &mut Session, mocks: &Mocks, ids: &Ids) {
    let rows = [
        DialectFaults {
            mock: &mocks.anthropic,
            model: CLAUDE,
            key: ANTHROPIC_KEY,
            id: &ids.anthropic,
            echoing: anthropic::server_error_echoing_key(),
            broken: anthropic::broken_stream(),
            limited: anthropic::rate_limited(Some("60")),
            refused: anthropic::invalid_key(),
        },
        DialectFaults {
            mock: &mocks.gemini,
            model: FLASH,
            key: GEMINI_KEY,
            id: &ids.gemini,
            echoing: gemini::internal_echoing_key(),
            broken: gemini::broken_stream(),
            limited: gemini::rate_limited("60s"),
            refused: gemini::invalid_key(),
        },
    ];
    for DialectFaults { mock, model, key, id, echoing, broken, limited, refused } in rows {
        let name = mock.dialect().provider();
        expect(&s.chat(&format!("{name} chat"), model, false, None).await, 200, "");
        expect_stream_done(&s.chat(&format!("{name} stream"), model, true, None).await);

        // 500s echoing the key, retried once, then given up: 502.
        mock.push_for(key, echoing.clone());
        mock.push_for(key, echoing);
        expect(&s.chat(&format!("{name} 500s"), model, false, None).await, 502, "upstream_failed");

        // The provider's own error event in the middle of a stream.
        mock.push_for(key, Script::events(broken));
        let got = s.chat(&format!("{name} broken stream"), model, true, None).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert!(got.body.contains("error"), "ends with an error event: {}", got.body);
        s.admin(id, "reset").await;

        // A rate limit past the deadline: keyrelay's own 429.
        mock.push_for(key, limited);
        let got = s.chat(&format!("{name} rate limited"), model, false, None).await;
        expect(&got, 429, "rate_limit_exceeded");
        assert!(got.header("retry-after").is_some(), "says when to come back: {:?}", got.headers);
        s.admin(id, "reset").await;

        // The key refused: no usable key left.
        mock.push_for(key, refused);
        let got = s.chat(&format!("{name} key refused"), model, false, None).await;
        assert!(matches!(got.status, 401 | 403 | 502 | 503), "{}: {}", got.status, got.body);
        s.admin(id, "reset").await;
    }
    let embed = json!({"model": "gemini/gemini-embedding-001", "input": ["hello"]}).to_string();
    expect(&s.post("gemini embeddings", "/v1/embeddings", Auth::Bearer(PROXY_KEY), embed).await, 200, "");
}

/// The custom provider whose base URL carries a password.
async fn local_traffic(s: &mut Session, mocks: &Mocks, ids: &Ids) {
    expect(&s.chat("local chat", LOCAL_MODEL, false, None).await, 200, "");
    expect_stream_done(&s.chat("local stream", LOCAL_MODEL, true, None).await);
    mocks.local.push_for(LOCAL_KEY, Script::invalid_key());
    let got = s.chat("local key refused", LOCAL_MODEL, false, None).await;
    assert!(matches!(got.status, 401 | 502 | 503), "{}: {}", got.status, got.body);
    s.admin(&ids.local, "reset").await;
    mocks.local.push_for(LOCAL_KEY, Script::server_error(500));
    mocks.local.push_for(LOCAL_KEY, Script::server_error(500));
    expect(&s.chat("local 500s", LOCAL_MODEL, false, None).await, 502, "upstream_failed");
    s.admin(&ids.local, "reset").await;
    expect(&s.chat("vault, which has no key", "vault/llama3", false, None).await, 503, "no_usable_key");
}

/// Requests refused before any key is used.
async fn bad_requests(s: &mut Session) {
    let hello = json!({"model": GPT, "messages": [{"role": "user", "content": "Say hello"}]}).to_string();
    let auth = Auth::Bearer(PROXY_KEY);
    expect(&s.post("not JSON", CHAT, auth, "{\"model\": ").await, 400, "invalid_json");
    expect(&s.post("no model", CHAT, auth, r#"{"messages":[]}"#).await, 400, "missing_model");
    expect(
        &s.post("no provider prefix", CHAT, auth, r#"{"model":"gpt-4o","messages":[]}"#).await,
        400,
        "invalid_model",
    );
    let unknown = r#"{"model":"nosuch/model","messages":[]}"#;
    expect(&s.post("unknown provider", CHAT, auth, unknown).await, 400, "unknown_provider");
    expect(&s.get("unknown URL", "/v1/completions", auth).await, 404, "unknown_url");
    expect(&s.get("wrong method", CHAT, auth).await, 405, "method_not_allowed");

    expect(&s.post("no proxy key", CHAT, Auth::None, hello.clone()).await, 401, "invalid_api_key");
    for (what, wrong) in [
        ("a guessed key", WRONG_GUESS),
        ("the client's own OpenAI key", CLIENT_OWN_KEY),
        ("a pool key", OPENAI_KEYS[0]),
        ("the admin key", ADMIN_KEY),
    ] {
        for (header, auth) in [("bearer", Auth::Bearer(wrong)), ("x-api-key", Auth::XApiKey(wrong))] {
            let got = s.post(&format!("{what} as the proxy key by {header}"), CHAT, auth, hello.clone()).await;
            expect(&got, 401, "invalid_api_key");
        }
    }
    let got = s.get("keys with a wrong key", "/v1/keys", Auth::XApiKey(WRONG_GUESS)).await;
    expect(&got, 401, "invalid_api_key");
    let got = s.key_action("openai:00000000", "disable", Auth::Bearer(ADMIN_KEY)).await;
    expect(&got, 404, "key_not_found");
}

/// Token counting, listings, status routes, admin actions.
async fn status_traffic(s: &mut Session, mocks: &Mocks, ids: &Ids) {
    let auth = Auth::Bearer(PROXY_KEY);
    let count = json!({"model": GPT, "messages": [{"role": "user", "content": "Say hello"}]}).to_string();
    let got = s.post("token count", "/v1/token-count", auth, count).await;
    expect(&got, 200, "");
    assert!(got.json()["token_count"].as_u64().is_some_and(|n| n > 0), "{}", got.body);
    expect(&s.post("token count, not JSON", "/v1/token-count", auth, "nope").await, 400, "");

    let models = s.get("models", "/v1/models", auth).await;
    expect(&models, 200, "");
    for provider in ["openai/", "anthropic/", "gemini/", "local/"] {
        assert!(models.body.contains(provider), "{provider} models listed: {}", models.body);
    }

    let providers = s.get("providers", "/v1/providers", auth).await;
    expect(&providers, 200, "");
    let list = providers.json();
    let listed = |id: &str| {
        let found = list["data"].as_array().expect("a list").iter().find(|p| p["id"] == id).cloned();
        found.unwrap_or_else(|| panic!("{id} listed: {list}"))
    };
    assert_eq!(listed("local")["api_base"], mocks.local_base_shown(), "userinfo hidden");
    let vault = format!("http://127.0.0.1:{}/v1", mocks.vault_port);
    assert_eq!(listed("vault")["api_base"], vault, "userinfo hidden");
    assert_eq!(listed("vault")["keys"]["total"], 0);
    for user in ["relayuser", "vaultuser"] {
        assert!(!providers.body.contains(user), "no userinfo at all: {}", providers.body);
    }

    // Admin actions with the admin key; the proxy key is refused.
    let target = &ids.openai[2];
    expect(&s.key_action(target, "disable", Auth::Bearer(PROXY_KEY)).await, 403, "admin_key_required");
    expect(&s.key_action(target, "disable", Auth::XApiKey(PROXY_KEY)).await, 403, "admin_key_required");
    s.admin(target, "disable").await;
    s.admin(target, "enable").await;
    s.admin(target, "reset").await;

    let by_admin = s.keys("keys with the admin key", Auth::XApiKey(ADMIN_KEY)).await;
    let by_proxy = s.keys("keys with the proxy key", Auth::Bearer(PROXY_KEY)).await;
    for id in ids.all() {
        assert!(by_admin.contains_key(id) && by_proxy.contains_key(id), "{id} listed: {by_admin:?}");
    }

    let metrics = s.get("metrics", "/metrics", Auth::None).await;
    expect(&metrics, 200, "");
    assert!(metrics.body.contains(&ids.openai[0]), "metrics name keys by id: {}", metrics.body);
    expect(&s.get("health", "/health", Auth::None).await, 200, "");
}

/// Every file under `dir`, recursively: (path, contents).
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

/// The whole mix, with the custom provider `local` called through a plain
/// base URL (`vault`'s base still carries a password in its userinfo, and
/// is listed but never called).
#[tokio::test]
async fn no_secret_shows_in_output_files_or_answers_through_faults_and_a_restart() {
    no_secret_shows(false).await;
}

/// The same mix with `local` called through a base URL whose userinfo holds
/// a password (`LOCAL_API_BASE=http://user:PASSWORD@host:port/v1`).
#[tokio::test]
async fn no_secret_shows_even_when_a_called_base_url_carries_userinfo() {
    no_secret_shows(true).await;
}

async fn no_secret_shows(local_userinfo: bool) {
    let mocks = Mocks::start(local_userinfo).await;
    let ids = Ids::new();
    let cwd = TempDir::new().expect("a working dir");
    let data = TempDir::new().expect("a data dir");
    let env = mocks.env();
    let mut leaks = Leaks::default();

    // ---- first run: the whole mix
    let running = start(cwd.path(), data.path(), &env).await;
    let mut s = Session::new(running.addr);
    openai_traffic(&mut s, &mocks, &ids).await;
    dialect_traffic(&mut s, &mocks, &ids).await;
    local_traffic(&mut s, &mocks, &ids).await;
    bad_requests(&mut s).await;
    status_traffic(&mut s, &mocks, &ids).await;
    // Left disabled, so that the restart has state to restore.
    s.admin(&ids.openai[2], "disable").await;
    let first = running.terminate().await;
    assert_eq!(first.code, Some(0), "stderr:\n{}", first.stderr);

    // The faults happened as scripted.
    let answers: Vec<String> = mocks.openai.requests().into_iter().map(|r| r.answer).collect();
    for fault in ["status:401", "status:429", "status:500", "status:502", "status:503", "reset", "break:2", "break:1"] {
        assert!(answers.iter().any(|a| a == fault), "the OpenAI mock answered {fault}: {answers:?}");
    }
    for (mock, key) in [(&mocks.anthropic, ANTHROPIC_KEY), (&mocks.gemini, GEMINI_KEY)] {
        let answers = mock.answers(key);
        assert!(answers.iter().filter(|a| *a == "status:500").count() == 2, "{answers:?}");
        assert!(answers.iter().any(|a| a == "status:429"), "{answers:?}");
    }
    assert!(mocks.local.requests().iter().any(|r| r.answer == "status:401"));

    // The state file holds real content: every key, by id.
    let state = support::store::pool_state(data.path()).expect("the state was saved at shutdown");
    for id in ids.all() {
        assert!(state.contains(id), "the state file names {id}:\n{state}");
    }
    // Request logging was on: its directories are there to be scanned.
    let logged = std::fs::read_dir(data.path().join("logs").join("requests")).expect("request-log directories").count();
    assert!(logged > 20, "one directory per request: {logged}");

    // ---- second run on the same data dir
    let running = start(cwd.path(), data.path(), &env).await;
    let mut r = Session::new(running.addr);
    let keys = r.keys("keys after the restart", Auth::Bearer(ADMIN_KEY)).await;
    assert_eq!(keys[&ids.openai[2]]["state"], "disabled", "the state was restored: {:?}", keys[&ids.openai[2]]);
    expect(&r.chat("chat after the restart", GPT, false, None).await, 200, "");
    expect_stream_done(&r.chat("stream after the restart", GPT, true, None).await);
    mocks.faults.set("restart-500", vec![Script::server_error(500)]);
    expect(&r.chat("a 500 after the restart", GPT, false, Some("restart-500")).await, 200, "");
    expect(&r.chat("claude after the restart", CLAUDE, false, None).await, 200, "");
    r.admin(&ids.openai[2], "enable").await;
    expect(&r.get("providers after the restart", "/v1/providers", Auth::Bearer(PROXY_KEY)).await, 200, "");
    expect(&r.get("metrics after the restart", "/metrics", Auth::None).await, 200, "");
    let second = running.terminate().await;
    assert_eq!(second.code, Some(0), "stderr:\n{}", second.stderr);
    assert!(second.stdout.contains("restored the state of"), "the banner says so:\n{}", second.stdout);

    // ---- the scan
    // The log really is at debug level, or the check says little.
    assert!(first.stderr.contains(" DEBUG "), "stderr:\n{}", first.stderr);
    assert!(first.stderr.contains("request finished"), "stderr:\n{}", first.stderr);
    assert!(first.stderr.lines().count() > 50, "stderr:\n{}", first.stderr);
    for (what, text) in [
        ("first run's stdout", &first.stdout),
        ("first run's stderr", &first.stderr),
        ("second run's stdout", &second.stdout),
        ("second run's stderr", &second.stderr),
    ] {
        leaks.scan(what, text);
    }
    let files: Vec<_> = files_under(cwd.path()).into_iter().chain(files_under(data.path())).collect();
    let db = keyrelay::store::db_path(data.path());
    assert!(files.iter().any(|(path, _)| *path == db), "scanned the database: {files:?}");
    for (path, text) in &files {
        leaks.scan(&format!("file {}", path.display()), text);
    }
    for answer in s.transcript.iter().chain(&r.transcript) {
        let what = answer.lines().next().unwrap_or_default().to_owned();
        leaks.scan(&format!("the answer to {what}"), answer);
    }
    assert!(s.transcript.len() > 80, "{} answers", s.transcript.len());
    assert!(leaks.scanned_bytes > 100_000, "scanned only {} bytes", leaks.scanned_bytes);
    leaks.assert_none();
}

/// The scan itself: it sees whole secrets, masked ones and fragments, and
/// stays quiet about what keyrelay legitimately shows.
#[test]
fn the_scan_sees_secrets_masks_and_fragments_but_not_key_ids() {
    let scan = |text: &str| {
        let mut leaks = Leaks::default();
        leaks.scan("text", text);
        leaks.found
    };
    let id = key_id_of("openai", OPENAI_KEYS[0]);
    for clean in [
        format!("key={id} status=200"),
        "Incorrect API key provided: [redacted]. You can find your API key at ...".to_owned(),
        format!("http://127.0.0.1:{}/v1", 8080),
    ] {
        assert_eq!(scan(&clean), Vec::<String>::new(), "{clean}");
    }
    for leaky in [
        format!("Incorrect API key provided: {}.", OPENAI_KEYS[1]),
        "key sk-proj-...Zt2m".to_owned(),
        "masked: sk-proj-****".to_owned(),
        "pooling idle connection for (\"http\", u:pw-CANAR...@127.0.0.1:1)".to_owned(),
        "the key ends in Qy5zXm9w".to_owned(),
        "a CANARY".to_owned(),
    ] {
        let found = scan(&leaky);
        assert_eq!(found.len(), 1, "{leaky}: {found:?}");
    }
}
