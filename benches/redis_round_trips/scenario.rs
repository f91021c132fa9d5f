//! The configurations measured, and the load each run sends.

use std::time::Duration;

use http::HeaderValue;

use crate::support::{
    Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, chat_body, dialect_env, post,
};

/// Pool keys per replica (the OpenAI mock knows three).
pub const KEYS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// No limit replicas share: only events (none happen here).
    Plain,
    /// No shared limit, but events: every 20th request a new session
    /// (a `stuck` binding), one 429 a run (a cooldown of a second).
    Events,
    /// `MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI=8`: 24 places, 16 clients,
    /// so no attempt waits.
    Cap,
    /// A cap of 2 per key (6 places for 16 clients) and answers taking
    /// 5 ms: attempts are refused, wait, and hear `freed`.
    CapContended,
    /// `rpm` and a budget on every key (config.toml), neither reached.
    RpmBudget,
}

impl Config {
    pub const ALL: [Self; 5] = [Self::Plain, Self::Events, Self::Cap, Self::CapContended, Self::RpmBudget];

    pub fn label(self) -> &'static str {
        match self {
            Self::Plain => "a) no shared limits",
            Self::Events => "a') + sessions, a 429",
            Self::Cap => "b) cap 8/key",
            Self::CapContended => "b') cap 2/key, busy",
            Self::RpmBudget => "c) rpm + budget",
        }
    }

    /// The environment and `config.toml` of every replica.
    pub fn settings(self, mock: &MockUpstream, redis_url: Option<&str>) -> (Vec<(String, String)>, Option<String>) {
        let mut env = match self {
            Self::RpmBudget => {
                let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
                env.extend(mock.env(0));
                for (i, key) in [KEY_ONE, KEY_TWO, KEY_THREE].iter().enumerate() {
                    env.push((format!("BENCH_KEY_{}", i + 1), (*key).to_owned()));
                }
                env
            }
            _ => dialect_env(&[mock], KEYS),
        };
        match self {
            Self::Cap => env.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), "8".to_owned())),
            Self::CapContended => env.push(("MAX_CONCURRENT_REQUESTS_PER_KEY_OPENAI".to_owned(), "2".to_owned())),
            _ => {}
        }
        if let Some(url) = redis_url {
            env.push(("REDIS_URL".to_owned(), url.to_owned()));
        }
        let toml = (self == Self::RpmBudget).then(|| {
            (1..=KEYS)
                .map(|i| {
                    format!(
                        "[[providers.openai.keys]]\nkey_env = \"BENCH_KEY_{i}\"\nrpm = 1000000\n\
                         budget_usd = 100000.0\nbudget_period = \"total\"\n\n"
                    )
                })
                .collect()
        });
        (env, toml)
    }

    /// What the mock does for this configuration's whole run.
    pub fn prepare(self, mock: &MockUpstream) {
        if self == Self::CapContended {
            for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
                mock.always_for(key, Script::Slow(Duration::from_millis(5)));
            }
        }
    }

    /// Request `i` of run `run` (sessions differ between runs).
    pub fn request(self, proxy: &Proxy, mock: &MockUpstream, run: usize, i: usize) -> http::Request<ReqBody> {
        let mut req =
            post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false));
        if self == Self::Events {
            if i.is_multiple_of(20) {
                let session = HeaderValue::from_str(&format!("bench-{run}-{i}")).expect("a header value");
                req.headers_mut().insert("x-session-id", session);
            }
            // One a run: a second 429 while the first key still cooled
            // left a request unanswered for seconds (see the report).
            if i == 150 {
                mock.push(Script::rate_limited(Some("1")));
            }
        }
        req
    }
}

pub use crate::support::client::ReqBody;

/// What a run's requests met: each answered request's latency in
/// microseconds (sorted), and how many failed (not 200, or no answer
/// within [`PATIENCE`]).
pub struct Driven {
    pub latencies: Vec<u64>,
    pub failed: usize,
}

/// How long a request may take before it counts as failed (below the
/// harness's own 10 s, which would panic).
const PATIENCE: Duration = Duration::from_secs(8);

/// Sends `total` requests, round robin over `replicas`, `concurrency` at a
/// time.
pub async fn drive(
    config: Config,
    replicas: &[Proxy],
    mock: &MockUpstream,
    run: usize,
    total: usize,
    concurrency: usize,
) -> Driven {
    let client = TestClient::http1();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| async {
        let (mut latencies, mut failed) = (Vec::new(), 0);
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= total {
                return (latencies, failed);
            }
            let req = config.request(&replicas[i % replicas.len()], mock, run, i);
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(PATIENCE, client.fetch(req)).await {
                Ok(reply) if reply.status == 200 => latencies.push(started.elapsed().as_micros() as u64),
                Ok(reply) => {
                    eprintln!("{} run {run}: request {i} answered {}: {}", config.label(), reply.status, reply.text());
                    failed += 1;
                }
                Err(_) => {
                    eprintln!("{} run {run}: request {i} had no answer within {PATIENCE:?}", config.label());
                    failed += 1;
                }
            }
        }
    });
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for (mine, my_failures) in futures_util::future::join_all(workers).await {
        latencies.extend(mine);
        failed += my_failures;
    }
    latencies.sort_unstable();
    Driven { latencies, failed }
}

/// The `p`th percentile of sorted `values`.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;
    values[rank.min(values.len() - 1)]
}
