//! Chaos and soak (issue 7, item 6): thousands of requests, 96 in flight,
//! whole and streamed, through an in-process keyrelay with two providers of
//! sixteen keys each, against upstreams that fail at random in every way a
//! provider does: 429 with and without `Retry-After`, quota, 401, 5xx,
//! closed and reset connections, hangs past the deadline (2 s here),
//! streams that break or go silent after their `200`, whole bodies cut or
//! stalled after theirs, and the odd 400.
//!
//! Over 600 lines on purpose: one scenario, its fault table and its checks
//! read together, and each test file is a binary of its own to link.
//!
//! The load runs in rounds. After each one:
//!
//! - every request ended in time (the deadline plus a margin; a stream may
//!   add one idle timeout after its `200`) in success (the mock's exact
//!   body; a stream's exact events and `data: [DONE]`), in the end DESIGN
//!   prescribes after a `200` (a stream's final `stream_broken` event; a
//!   whole body cut, the connection closed), or in a status DESIGN
//!   prescribes (429 with `Retry-After`, 502, 503, 504, an upstream 400
//!   passed through byte for byte) in OpenAI's error shape; never a 500,
//!   never a hang, never a secret; and each end agrees with what the
//!   upstream did to that request's attempts;
//! - nothing is left in flight: not in `/v1/keys`, not in the pool (every
//!   key's in-flight count, every (key, model) concurrency permit), not at
//!   the upstreams (hung and stalled requests all dropped).
//!
//! Across rounds the process's resident memory stays flat: the proxy, the
//! mocks and the client all run in this process, so `VmRSS` after the
//! second round and after the last may differ by a tolerance only. That
//! catches gross leaks (a few KB a request: a body, a task, a connection);
//! the counts above catch leaked guards exactly. A second test floods
//! `/health` to catch a leak of a few bytes a request (it found one: the
//! metrics recorder's histogram samples, never drained without scrapes).
//!
//! Faults are a pure function of the seed, the request number (carried in
//! the body's `user`), the provider, the key and how many times the request
//! already tried that key (SplitMix64 over those: a counter-based generator,
//! so no draw depends on which request won a race). Which key an attempt
//! lands on depends on timing, and so does the weather a little (cooldowns
//! and the provider pause started by one request are seen by others), but
//! every check holds whatever the interleaving. `KEYRELAY_CHAOS_SEED=N`
//! replays another seed; a failure names the seed in use.
//!
//! The keys (key 0 of each provider is refused, 401, and stays invalid):
//!
//! - `openai`: concurrency capped at 2 per (key, model), so requests wait
//!   for slots and race for them; key 1 is often rate limited with
//!   `Retry-After: 1`, key 2 sometimes without a hint (10 s, 30 s...
//!   cooldowns); keys 3 to 8 have no quota for `gpt-4.1-nano`. Only two
//!   keys ever say 429, so `openai` is never paused.
//! - `local` (an OpenAI-compatible custom provider), no cap: no key has
//!   quota for `gpt-4.1-nano` (so its requests end in 429 with a
//!   `Retry-After` of hours); only keys 1 to 5 have some for `o3-mini`, and
//!   they never fail but for doomed requests: one request in 300 goes there
//!   and every attempt of it fails (5xx, close, reset), so it ends in 502
//!   once it has tried every key it could (429 if they all still cool after
//!   an earlier one). And late in the last round a burst of rate limits on
//!   every key pauses the whole provider.
//! - on every key, for every other request: a few percent each of 5xx,
//!   closed and reset connections, hangs, broken and stalled answers, 400s.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use keyrelay_layers::pool::KeyPool;
use serde_json::Value;
use support::{
    Auth, Gate, INVALID_REQUEST, MockUpstream, PROXY_KEY, Proxy, Recorded, Script, TestClient, Then, chat_completion,
    get, stream_events,
};
use tokio::time::Instant;

/// The seed; `KEYRELAY_CHAOS_SEED=N` runs with another one.
const SEED: u64 = 0xc4a0_5eed_2026_0706;
const ROUNDS: usize = 4;
const REQUESTS_PER_ROUND: usize = 1000;
/// Requests in flight at once (each worker sends one at a time).
const CONCURRENCY: usize = 96;
const KEYS_PER_PROVIDER: usize = 16;
const PROVIDERS: [&str; 2] = ["openai", "local"];
const OPENAI: usize = 0;
const LOCAL: usize = 1;
/// The bare model names, as the upstream sees them.
const MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "o3-mini", "gpt-4.1-nano"];
/// The model some keys have no quota for.
const QUOTA_MODEL: usize = 3;
/// The model only five `local` keys serve, reliably but for doomed requests.
const SCARCE_MODEL: usize = 2;
/// `openai`'s cap of requests in flight per (key, model).
const OPENAI_CAP: usize = 2;
/// The proxy's global deadline (hangs are cut at it).
const DEADLINE: Duration = Duration::from_secs(2);
/// The proxy's stream idle timeout (silent streams are cut at it).
const IDLE: Duration = Duration::from_secs(1);
/// Slack on top of what the proxy's timers allow: generous, for a loaded
/// 2-core machine running a debug build.
const MARGIN: Duration = Duration::from_secs(3);
/// A request without an answer this long is hung (and reported, not waited for).
const HUNG_AFTER: Duration = Duration::from_secs(20);
/// How long in-flight counts may take to settle after a round.
const SETTLE: Duration = Duration::from_secs(2);
/// A burst of rate limits on `local` near the end of the last round: these
/// request numbers. It pauses the provider for the rest of the run.
const RATE_STORM: std::ops::Range<u64> = {
    let start = ((ROUNDS - 1) * REQUESTS_PER_ROUND + REQUESTS_PER_ROUND * 7 / 8) as u64;
    start..start + 60
};
/// One request in this many is doomed: every attempt fails.
const DOOM_EVERY: u64 = 300;
/// Resident memory may grow this much from the second round to the last
/// (2 to 3 MB is usual: allocator high-water marks).
const RSS_GROWTH_LIMIT_KIB: u64 = 10 * 1024;

fn seed() -> u64 {
    static SEED_IN_USE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED_IN_USE.get_or_init(|| support::seed_from("KEYRELAY_CHAOS_SEED", SEED))
}

/// A random number that is a function of the seed and `parts` only.
fn draw(parts: &[u64]) -> u64 {
    support::draw(seed(), parts)
}

/// Keeps the draws of request shapes apart from the draws of faults.
const SHAPE: u64 = u64::MAX;

/// What request number `request` is: its provider, model and whether it
/// streams. Doomed requests all go to the model few `local` keys serve, so
/// that they run out of keys (502) well before the deadline.
fn shape(request: u64) -> (usize, usize, bool) {
    let roll = draw(&[SHAPE, request]);
    let stream = roll >> 8 & 1 == 1;
    if doomed(request) {
        return (LOCAL, SCARCE_MODEL, stream);
    }
    ((roll & 1) as usize, (roll >> 1) as usize % MODELS.len(), stream)
}

/// Whether every attempt of the request fails.
fn doomed(request: u64) -> bool {
    request % DOOM_EVERY == DOOM_EVERY / 2
}

/// The pool key `key` of `provider`. Every one contains `SECRET`, which no
/// answer may show.
fn secret(provider: usize, key: usize) -> String {
    match provider {
        OPENAI => format!("sk-chaos-SECRET-openai-{key:02}"),
        _ => format!("local-chaos-SECRET-{key:02}"),
    }
}

/// What the upstream does to one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Ok,
    ServerError(u16),
    Close,
    Reset,
    /// Never answers: the proxy's deadline cuts it.
    Hang,
    /// A `200`, then a break: a stream after (at most) this many events, a
    /// whole body after half of it.
    Break(usize),
    /// A `200`, then silence: a stream after exactly this many events (the
    /// idle timeout cuts it), a whole body after a prefix (the deadline cuts it).
    Stall(usize),
    RateLimit {
        hint: bool,
    },
    Quota,
    Invalid,
    BadRequest,
}

impl Fault {
    /// The fault for the `nth` attempt (from 0) of `request` with `key` of `provider`.
    fn pick(provider: usize, key: usize, model: usize, request: u64, nth: u64) -> Self {
        let roll = draw(&[provider as u64, key as u64, request, nth]);
        let (p, aux) = (roll % 1000, roll >> 32);
        match (provider, key) {
            (_, 0) => return Self::Invalid,
            (OPENAI, 1) if p < 300 => return Self::RateLimit { hint: true },
            (OPENAI, 2) if p < 150 => return Self::RateLimit { hint: false },
            (OPENAI, 3..=8) | (LOCAL, _) if model == QUOTA_MODEL => return Self::Quota,
            (LOCAL, 6..) if model == SCARCE_MODEL => return Self::Quota,
            (LOCAL, _) if RATE_STORM.contains(&request) && p < 500 => {
                return Self::RateLimit { hint: aux.is_multiple_of(2) };
            }
            _ => {}
        }
        if doomed(request) {
            return [Self::ServerError(500), Self::ServerError(503), Self::Close, Self::Reset][(aux % 4) as usize];
        }
        if (provider, model) == (LOCAL, SCARCE_MODEL) {
            // No failure streak waits for the next doomed request here: it
            // should find every key fresh, try each twice and answer 502.
            return Self::Ok;
        }
        match p {
            0..40 => Self::ServerError([500, 502, 503, 529][(aux % 4) as usize]),
            40..55 => Self::Close,
            55..70 => Self::Reset,
            70..78 => Self::Hang,
            78..92 => Self::Break((aux % 5) as usize),
            92..98 => Self::Stall((aux % 4) as usize),
            98..108 => Self::BadRequest,
            _ => Self::Ok,
        }
    }

    fn script(self, stream: bool, gate: &Gate) -> Script {
        match self {
            Self::Ok => Script::Ok,
            Self::ServerError(status) => Script::server_error(status),
            Self::Close => Script::Close,
            Self::Reset => Script::Reset,
            Self::Hang => Script::Hang,
            Self::Break(k) => Script::BreakAfter(k),
            Self::Stall(k) if stream => Script::Stream { before: k, gate: gate.clone(), then: Then::Finish },
            Self::Stall(_) => Script::Stall { prefix: Bytes::from_static(br#"{"id":"chatcmpl-chaos","object":"#) },
            Self::RateLimit { hint: true } => Script::rate_limited(Some("1")),
            Self::RateLimit { hint: false } => Script::rate_limited(None),
            Self::Quota => Script::insufficient_quota(),
            Self::Invalid => Script::invalid_key(),
            Self::BadRequest => Script::client_error(),
        }
    }
}

/// One attempt as the upstream saw it.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    provider: usize,
    key: usize,
    fault: Fault,
}

/// What the mocks' fault functions share with the test: every attempt per
/// request number, and the gate that holds stalled streams (opened after
/// each round, so that the mock's stream tasks end).
#[derive(Default)]
struct Ledger {
    attempts: Mutex<HashMap<u64, Vec<Attempt>>>,
    gate: Mutex<Gate>,
}

impl Ledger {
    fn answer(&self, provider: usize, key: usize, r: &Recorded) -> Script {
        let request: u64 = r.user().and_then(|u| u.strip_prefix("chaos-")?.parse().ok()).expect("a chaos request");
        let model = MODELS.iter().position(|m| Some(*m) == r.model().as_deref()).expect("a chaos model");
        let fault = {
            let mut attempts = self.attempts.lock().unwrap();
            let tries = attempts.entry(request).or_default();
            let nth = tries.iter().filter(|a| (a.provider, a.key) == (provider, key)).count() as u64;
            let fault = Fault::pick(provider, key, model, request, nth);
            tries.push(Attempt { provider, key, fault });
            fault
        };
        fault.script(r.wants_stream(), &self.gate.lock().unwrap())
    }

    /// Releases the streams stalled so far; later ones wait on a new gate.
    fn release_stalled(&self) {
        let mut gate = self.gate.lock().unwrap();
        gate.open();
        *gate = Gate::new();
    }
}

async fn start_proxy(env: Vec<(String, String)>) -> Proxy {
    Proxy::start_with(env, |settings| {
        settings.global_timeout = DEADLINE;
        settings.stream_idle_timeout = IDLE;
    })
    .await
}

/// How one request ended, as the client saw it.
#[derive(Debug)]
enum Got {
    Answer {
        status: u16,
        content_type: Option<String>,
        retry_after: Option<String>,
        body: Result<Bytes, String>,
    },
    /// The connection failed before a response head.
    NoAnswer(String),
    /// Nothing within [`HUNG_AFTER`].
    Hung,
}

#[derive(Debug)]
struct Outcome {
    request: u64,
    provider: usize,
    model: usize,
    stream: bool,
    elapsed: Duration,
    got: Got,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, url: &str, request: u64) -> Outcome {
    let (provider, model, stream) = shape(request);
    let body = format!(
        r#"{{"model":"{}/{}","messages":[{{"role":"user","content":"hi"}}],"stream":{stream},"user":"chaos-{request}"}}"#,
        PROVIDERS[provider], MODELS[model]
    );
    let req = Request::post(url)
        .header(header::AUTHORIZATION, format!("Bearer {PROXY_KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let started = Instant::now();
    let exchange = async {
        let res = match client.request(req).await {
            Ok(res) => res,
            Err(err) => return Got::NoAnswer(format!("{err:?}")),
        };
        let (parts, body) = res.into_parts();
        let text = |name| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, retry_after) = (text(header::CONTENT_TYPE), text(header::RETRY_AFTER));
        let body = body.collect().await.map(|b| b.to_bytes()).map_err(|err| format!("{err:?}"));
        Got::Answer { status: parts.status.as_u16(), content_type, retry_after, body }
    };
    let got = tokio::time::timeout(HUNG_AFTER, exchange).await.unwrap_or(Got::Hung);
    Outcome { request, provider, model, stream, elapsed: started.elapsed(), got }
}

/// Runs requests `first..first + count`, [`CONCURRENCY`] at a time.
async fn load(client: &HttpClient, url: &str, first: u64, count: usize) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return outcomes;
                    }
                    outcomes.push(send(&client, &url, first + n as u64).await);
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(count);
    for worker in workers {
        outcomes.extend(worker.await.expect("a chaos worker"));
    }
    outcomes
}

/// How long a request may take: the deadline bounds everything up to a
/// whole answer's last byte or a stream's first; a stream may then go
/// silent for one idle timeout (only a scripted stall does).
fn time_limit(stream: bool) -> Duration {
    if stream { DEADLINE + IDLE + MARGIN } else { DEADLINE + MARGIN }
}

/// The request's events, each with its blank line.
fn events(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the stream is not UTF-8".to_owned())?;
    Ok(text.split_inclusive("\n\n").map(str::to_owned).collect())
}

/// Checks one outcome against the attempts the upstream saw for it. `Ok`
/// names the kind of end, for the tally; `Err` says what is wrong.
fn check(outcome: &Outcome, attempts: &[Attempt]) -> Result<&'static str, String> {
    let Outcome { stream, elapsed, got, .. } = outcome;
    let model = MODELS[outcome.model];
    if *elapsed > time_limit(*stream) {
        return Err(format!("took {elapsed:?}, more than {:?}", time_limit(*stream)));
    }
    let (status, content_type, retry_after, body) = match got {
        Got::Answer { status, content_type, retry_after, body } => (*status, content_type, retry_after, body),
        // A whole body that broke right after its head: the proxy had handed
        // the `200` to hyper, which drops what it buffered when the body
        // fails before a flush. The client sees the connection cut either way.
        Got::NoAnswer(_) if !stream && matches!(attempts.last(), Some(a) if matches!(a.fault, Fault::Break(_))) => {
            return Ok("cut before the head");
        }
        Got::NoAnswer(err) => return Err(format!("no response head: {err}")),
        Got::Hung => return Err(format!("no answer within {HUNG_AFTER:?}")),
    };
    if let Ok(body) = body
        && String::from_utf8_lossy(body).contains("SECRET")
    {
        return Err(format!("the answer shows a secret: {}", String::from_utf8_lossy(body)));
    }
    let last = attempts.last().map(|a| a.fault);
    match (status, stream, body) {
        (200, true, Err(err)) => Err(format!("a stream failed instead of ending with an error event: {err}")),
        (200, true, Ok(body)) => {
            let events = events(body)?;
            let want = stream_events(model);
            if events.last().is_some_and(|e| e == "data: [DONE]\n\n") {
                return match last {
                    Some(Fault::Ok) if events == want => Ok("200 stream complete"),
                    Some(Fault::Ok) => Err(format!("a stream with other events than the upstream's: {events:#?}")),
                    other => Err(format!("a complete stream, but the last attempt was {other:?}")),
                };
            }
            let Some((error, before)) = events.split_last() else {
                return Err("a 200 stream without any event".to_owned());
            };
            let error: Value = error
                .trim_end()
                .strip_prefix("data: ")
                .and_then(|data| serde_json::from_str(data).ok())
                .ok_or_else(|| format!("a stream ending neither in [DONE] nor in an error event: {events:#?}"))?;
            if error["error"]["code"] != "stream_broken" || !error["error"]["message"].is_string() {
                return Err(format!("a stream's final event is not a stream_broken error: {error}"));
            }
            if before[..] != want[..before.len().min(want.len())] {
                return Err(format!("a broken stream's events are not the upstream's: {events:#?}"));
            }
            match last {
                // The break may overtake events the mock had not flushed.
                Some(Fault::Break(k)) if before.len() <= k => Ok("200 stream broken"),
                Some(Fault::Stall(k)) if before.len() == k => Ok("200 stream stalled"),
                other => Err(format!("{} events and an error event, the last attempt was {other:?}", before.len())),
            }
        }
        (200, false, Ok(body)) => match last {
            Some(Fault::Ok) if body[..] == *chat_completion(model).as_bytes() => Ok("200"),
            other => Err(format!("a 200 ({:?}), the last attempt was {other:?}", String::from_utf8_lossy(body))),
        },
        // The `200` was out: the proxy can only cut the connection.
        (200, false, Err(err)) => match last {
            Some(Fault::Break(_) | Fault::Stall(_)) => Ok("200 body cut"),
            other => Err(format!("a 200 whose body failed ({err}), the last attempt was {other:?}")),
        },
        (_, _, Err(err)) => Err(format!("a {status} whose body failed: {err}")),
        (400, _, Ok(body)) => match last {
            Some(Fault::BadRequest) if body[..] == *INVALID_REQUEST.as_bytes() => Ok("400 passed through"),
            other => Err(format!("a 400 ({:?}), the last attempt was {other:?}", String::from_utf8_lossy(body))),
        },
        (_, _, Ok(body)) => {
            let text = String::from_utf8_lossy(body);
            if content_type.as_deref() != Some("application/json") {
                return Err(format!("a {status} error of type {content_type:?}: {text}"));
            }
            let json: Value =
                serde_json::from_slice(body).map_err(|e| format!("a {status} error not JSON ({e}): {text}"))?;
            let error =
                json.get("error").and_then(Value::as_object).ok_or_else(|| format!("not OpenAI-shaped: {text}"))?;
            let shaped = error.get("message").is_some_and(Value::is_string)
                && error.get("type").is_some_and(Value::is_string)
                && error.contains_key("param");
            let code = error.get("code").and_then(Value::as_str);
            let Some(code) = code.filter(|_| shaped) else {
                return Err(format!("a {status} error not in OpenAI's shape: {text}"));
            };
            let answered = attempts.iter().any(|a| matches!(a.fault, Fault::Ok | Fault::BadRequest));
            let kind = match (status, code) {
                (429, "rate_limit_exceeded") => {
                    if retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_none_or(|s| s < 1) {
                        return Err(format!("a 429 without a Retry-After of 1 s or more: {retry_after:?}"));
                    }
                    "429"
                }
                (502, "upstream_failed" | "upstream_unreachable") if attempts.is_empty() => {
                    return Err(format!("a 502 without any upstream attempt: {text}"));
                }
                (502, "upstream_failed" | "upstream_unreachable") => "502",
                (503, "no_usable_key") => "503",
                // Every key rests after upstream failures (issue 12: not a
                // rate limit), with when the first is back.
                (503, "upstream_unavailable") => {
                    if attempts.iter().any(|a| matches!(a.fault, Fault::RateLimit { .. })) {
                        return Err(format!("a 503 for resting keys although a rate limit was seen: {text}"));
                    }
                    if retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_none_or(|s| s < 1) {
                        return Err(format!("a 503 upstream_unavailable without a Retry-After: {retry_after:?}"));
                    }
                    "503"
                }
                // The deadline may also cut an answer on its way: no check.
                (504, "deadline_exceeded") => return Ok("504"),
                _ => return Err(format!("{status} {code} is not a status DESIGN prescribes here: {text}")),
            };
            if answered {
                return Err(format!("a {status} although an attempt was answered: {text}"));
            }
            Ok(kind)
        }
    }
}

/// What is still in flight in the pool: keys' counts and (key, model)
/// permits not returned.
fn pool_leftovers(pool: &KeyPool) -> Vec<String> {
    let mut left = Vec::new();
    for provider in pool.providers() {
        let cap = provider.options().max_concurrent_per_key;
        for (index, key) in provider.keys().iter().enumerate() {
            if key.in_flight() != 0 {
                left.push(format!("{} in flight {}", key.id().as_str(), key.in_flight()));
            }
            for model in MODELS {
                let free = provider.slots(index, model).map_or(cap, |s| s.available_permits());
                if free != cap {
                    left.push(format!("{} {model}: {free} of {cap} permits free", key.id().as_str()));
                }
            }
        }
    }
    left
}

/// `GET /v1/keys`: the ids of keys with something in flight.
async fn keys_in_flight(client: &TestClient, addr: SocketAddr) -> Result<Vec<String>, String> {
    let reply = client.fetch(get(&format!("http://{addr}/v1/keys"), Auth::Bearer(PROXY_KEY))).await;
    if reply.status != 200 {
        return Err(format!("GET /v1/keys: {} {}", reply.status, reply.text()));
    }
    let keys = reply.json()["data"].as_array().cloned().unwrap_or_default();
    if keys.len() != PROVIDERS.len() * KEYS_PER_PROVIDER {
        return Err(format!("GET /v1/keys lists {} keys", keys.len()));
    }
    Ok(keys.iter().filter(|k| k["in_flight"] != 0).map(|k| format!("{}: {}", k["id"], k["in_flight"])).collect())
}

/// Polls `leftovers` until it is empty, for at most [`SETTLE`]; what was
/// left at the end otherwise.
async fn settled<F, Fut>(mut leftovers: F) -> Result<(), Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let until = Instant::now() + SETTLE;
    loop {
        let left = leftovers().await;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many keys cool for what, per provider and model.
fn weather(pool: &KeyPool) -> BTreeMap<String, usize> {
    let mut cooling = BTreeMap::new();
    for key in pool.key_statuses() {
        for c in &key.cooldowns {
            *cooling.entry(format!("{} {} {}", key.provider, c.model, c.reason)).or_default() += 1;
        }
        if key.invalid_until_unix_ms.is_some() {
            *cooling.entry(format!("{} invalid", key.provider)).or_default() += 1;
        }
    }
    cooling
}

/// Both tests measure this process's memory: one at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident set (`VmRSS` in `/proc/self/status`, Linux).
/// Both memory checks rest on it, so a platform that cannot tell fails the
/// test: a leak check that cannot measure must not pass.
#[track_caller]
fn rss_kib() -> u64 {
    const SOURCE: &str = "/proc/self/status";
    let status = std::fs::read_to_string(SOURCE)
        .unwrap_or_else(|err| panic!("cannot measure resident memory for the leak check: reading {SOURCE}: {err}"));
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_else(|| {
        panic!("cannot measure resident memory for the leak check: no VmRSS line in {SOURCE}:\n{status}")
    });
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or_else(|| {
        panic!("cannot measure resident memory for the leak check: unreadable VmRSS in {SOURCE}: {line:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_requests_through_every_fault_end_as_prescribed_leave_nothing_in_flight_and_memory_flat() {
    let _alone = ALONE.lock().await;
    // Fail at once, not after the load, where memory cannot be measured.
    rss_kib();
    let ledger = Arc::new(Ledger::default());
    let mut mocks = Vec::new();
    let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
    for (provider, name) in PROVIDERS.into_iter().enumerate() {
        let mock = MockUpstream::start().await;
        let upper = name.to_ascii_uppercase();
        env.push((format!("{upper}_API_BASE"), mock.base()));
        for key in 0..KEYS_PER_PROVIDER {
            let secret = secret(provider, key);
            let ledger = ledger.clone();
            mock.faults_for(&secret, move |r| ledger.answer(provider, key, r));
            env.push((format!("{upper}_API_KEY_{}", key + 1), secret));
        }
        mocks.push(mock);
    }
    env.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), OPENAI_CAP.to_string()));
    let proxy = start_proxy(env).await;
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let status_client = TestClient::http1();

    let mut failures: Vec<String> = Vec::new();
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut rss = Vec::new();
    let mut slowest = Duration::ZERO;
    let run = Instant::now();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let first = (round * REQUESTS_PER_ROUND) as u64;
        let outcomes = load(&client, &url, first, REQUESTS_PER_ROUND).await;
        let took = started.elapsed();

        // Nothing in flight, as `/v1/keys` and the pool itself say.
        let keys = settled(|| async { keys_in_flight(&status_client, proxy.addr()).await.unwrap_or_else(|e| vec![e]) });
        if let Err(left) = keys.await {
            failures.push(format!("round {round}: /v1/keys still shows requests in flight: {left:?}"));
        }
        if let Err(left) = settled(|| async { pool_leftovers(proxy.pool()) }).await {
            failures.push(format!("round {round}: the pool still holds requests or permits: {left:?}"));
        }
        // Nor at the upstreams, once the stalled streams are let go.
        ledger.release_stalled();
        let upstream = settled(|| async {
            mocks
                .iter()
                .enumerate()
                .filter(|(_, m)| m.total_in_flight() > 0)
                .map(|(p, m)| format!("{}: {}", PROVIDERS[p], m.total_in_flight()))
                .collect()
        });
        if let Err(left) = upstream.await {
            failures.push(format!("round {round}: upstream requests never dropped by the proxy: {left:?}"));
        }

        let attempts = std::mem::take(&mut *ledger.attempts.lock().unwrap());
        // The mocks' records are not needed (the ledger has it all), only
        // dropped, so that they do not grow across rounds.
        let recorded: usize = mocks.iter().map(|m| m.take_requests().len()).sum();
        let logged: usize = attempts.values().map(Vec::len).sum();
        assert_eq!(recorded, logged, "every upstream request went through the fault function");
        for attempt in attempts.values().flatten() {
            let name = format!("{:?}", attempt.fault);
            *faults.entry(name.split('(').next().unwrap_or_default().to_owned()).or_default() += 1;
        }
        let mut round_tally: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut by_provider: BTreeMap<String, usize> = BTreeMap::new();
        for outcome in &outcomes {
            slowest = slowest.max(outcome.elapsed);
            let tried = attempts.get(&outcome.request).map_or(&[][..], Vec::as_slice);
            match check(outcome, tried) {
                Ok(kind) => {
                    *round_tally.entry(kind).or_default() += 1;
                    *by_provider.entry(format!("{} {kind}", PROVIDERS[outcome.provider])).or_default() += 1;
                }
                Err(what) => failures.push(format!(
                    "request {} ({}/{}, stream: {}, {:?}): {what}; attempts {tried:?}",
                    outcome.request,
                    PROVIDERS[outcome.provider],
                    MODELS[outcome.model],
                    outcome.stream,
                    outcome.elapsed
                )),
            }
        }
        for (kind, n) in &round_tally {
            *tally.entry(kind).or_default() += n;
        }
        rss.push(rss_kib());
        println!("round {round}: by provider {by_provider:?}; cooling {:?}", weather(proxy.pool()));
        println!(
            "round {round}: {} requests in {took:?}, {logged} upstream attempts; {round_tally:?}; VmRSS {} KiB",
            outcomes.len(),
            rss[round]
        );
    }
    println!("{} requests in {:?}, slowest {slowest:?}; faults {faults:?}", ROUNDS * REQUESTS_PER_ROUND, run.elapsed());

    let seed = seed();
    let replay = format!("chaos seed {seed} (KEYRELAY_CHAOS_SEED={seed} replays it)");
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(25).collect();
        panic!(
            "{replay}: {} failures, the first {}:\n{}",
            failures.len(),
            shown.len(),
            shown.iter().fold(String::new(), |all, f| all + "- " + f + "\n")
        );
    }

    // The load met what it was meant to.
    let total = ROUNDS * REQUESTS_PER_ROUND;
    let ok = ["200", "200 stream complete"].iter().map(|k| tally.get(k).copied().unwrap_or(0)).sum::<usize>();
    assert!(ok > total / 2, "{replay}: mostly answered: {tally:?}");
    for kind in ["200 stream broken", "200 stream stalled", "200 body cut", "400 passed through", "429", "504"] {
        assert!(tally.get(kind).is_some_and(|&n| n > 0), "{replay}: no request ended in {kind}: {tally:?}");
    }
    assert!(tally.get("502").is_some_and(|&n| n > 0), "{replay}: no request ended in 502: {tally:?}");

    // Memory is flat once warm: the proxy, the mocks and the client all live
    // in this process, and each round does the same work.
    let (warm, end) = (rss[1], rss[ROUNDS - 1]);
    assert!(
        end.saturating_sub(warm) < RSS_GROWTH_LIMIT_KIB,
        "{replay}: resident memory grew from {warm} KiB after round 1 to {end} KiB after round {}: {rss:?}",
        ROUNDS - 1
    );
}

/// Cheap requests for the flood below.
const FLOOD_ROUNDS: usize = 4;
const FLOOD_PER_ROUND: usize = 30_000;
/// Resident memory may grow this much from the flood's first round to its
/// last. Without the recorder's upkeep it grew by about 36 bytes a request
/// (over 3 MB in those three rounds); with it, it stays within a few hundred KB.
const FLOOD_GROWTH_LIMIT_KIB: u64 = 1536;

/// The Prometheus recorder keeps every histogram sample (two per request)
/// until its upkeep runs; `install_recorder` leaves running it to the
/// program, and keyrelay used to do it only when `/metrics` was scraped, so
/// a proxy nobody scraped grew by about 36 bytes a request, forever. The
/// chaos run above is too short to see that; this flood of cheap requests
/// (`/health`, which is logged and timed like any other) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_flat_without_metrics_scrapes() {
    let _alone = ALONE.lock().await;
    // Fail at once, not after the load, where memory cannot be measured.
    rss_kib();
    let mock = MockUpstream::start().await;
    let env = vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("OPENAI_API_BASE".to_owned(), mock.base()),
        ("OPENAI_API_KEY".to_owned(), secret(OPENAI, 1)),
    ];
    let proxy = start_proxy(env).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}/health", proxy.addr());
    let mut rss = Vec::new();
    for _ in 0..FLOOD_ROUNDS {
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (client, url, next) = (client.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < FLOOD_PER_ROUND {
                        let req = Request::get(&url).body(Full::new(Bytes::new())).expect("a valid request");
                        let res = client.request(req).await.expect("an answer from /health");
                        assert_eq!(res.status(), 200);
                        res.into_body().collect().await.expect("a whole /health body");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a flood worker");
        }
        rss.push(rss_kib());
        println!("{FLOOD_PER_ROUND} requests to /health; VmRSS {} KiB", rss[rss.len() - 1]);
    }
    let (first, last) = (rss[0], rss[FLOOD_ROUNDS - 1]);
    assert!(
        last.saturating_sub(first) < FLOOD_GROWTH_LIMIT_KIB,
        "resident memory grew from {first} KiB to {last} KiB over {} cheap requests: {rss:?}",
        (FLOOD_ROUNDS - 1) * FLOOD_PER_ROUND
    );
}
