//! One in-process upstream for every provider keyrelay talks to: hyper on
//! `127.0.0.1:0`, playing one [`Dialect`] on the wire. [`MockUpstream::start`]
//! plays OpenAI ([`openai`]), [`MockUpstream::anthropic`] Anthropic's
//! Messages API ([`anthropic`]) and [`MockUpstream::gemini`] Google's Gemini
//! API ([`gemini`]); each module says what its routes answer by default
//! and which requests it refuses, as the real provider would (answered in
//! the provider's own error format with a message starting `mock:`,
//! recorded with the answer `refused`).
//!
//! Faults are the same for every dialect ([`Script`]: an error status with
//! or without `Retry-After`, hang, stall, close, reset, a stream or body
//! that breaks, a stream held at a [`Gate`], requests held at a [`Valve`]
//! or answered slowly).
//! The first script that applies wins:
//!
//! 1. [`MockUpstream::push_for`]: the next request carrying that pool key
//!    (in the dialect's key header), in order;
//! 2. [`MockUpstream::always_for`] / [`MockUpstream::faults_for`]: every
//!    further request with that key, until [`MockUpstream::clear_for`];
//! 3. [`MockUpstream::push`]: the next request, whatever its key;
//! 4. the route's default answer.
//!
//! Every request is recorded ([`Recorded`]), with its headers, body bytes,
//! arrival time and a label of the answer it got, before it is answered.
//! The mock also counts requests in flight per key, and the most it ever
//! saw at once ([`MockUpstream::max_in_flight`]). A request counts from its
//! arrival until its answer is handed over: a whole response just before
//! its headers go out, a stream just before its last frame (or its break),
//! a hanging one until the proxy drops its connection. So a key's count can
//! only be lower than the proxy's own view of it, never higher, and a count
//! above the proxy's cap is a real breach.

pub mod anthropic;
mod dialect;
pub mod gemini;
pub mod openai;
mod record;
pub mod responses;
mod script;
mod serve;
mod state;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use self::state::{NO_KEY, State};
pub use self::{
    dialect::{Dialect, key_id_of},
    openai::{INVALID_REQUEST, chat_completion, stream_events},
    record::Recorded,
    script::{FaultFn, Gate, KEY_PLACEHOLDER, Script, Then, Valve},
};
use crate::support::PROXY_KEY;

/// The proxy key plus each mock's `keys` pool keys and base:
/// `ANTHROPIC_API_BASE=http://127.0.0.1:PORT`, `ANTHROPIC_API_KEY_1`, ...
pub fn dialect_env(mocks: &[&MockUpstream], keys: usize) -> Vec<(String, String)> {
    let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
    for mock in mocks {
        env.extend(mock.env(keys));
    }
    env
}

/// A mock upstream; dropped with the test's runtime.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    dialect: Dialect,
    addr: SocketAddr,
    state: Arc<State>,
}

impl MockUpstream {
    /// An OpenAI upstream.
    pub async fn start() -> Self {
        Self::serve(Dialect::OpenAi).await
    }

    /// An Anthropic upstream.
    pub async fn anthropic() -> Self {
        Self::serve(Dialect::Anthropic).await
    }

    /// A Gemini upstream.
    pub async fn gemini() -> Self {
        Self::serve(Dialect::Gemini).await
    }

    /// Binds `127.0.0.1:0` and serves `dialect` on the current runtime.
    pub async fn serve(dialect: Dialect) -> Self {
        let (addr, state) = serve::listen(dialect).await;
        Self { dialect, addr, state }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL as `<P>_API_BASE` takes it: `http://127.0.0.1:PORT/v1`
    /// for OpenAI, host only for Anthropic and Gemini.
    pub fn base(&self) -> String {
        format!("http://{}{}", self.addr, self.dialect.base_path())
    }

    /// `<P>_API_BASE` and `<P>_API_KEY_1..=keys` for this mock.
    pub fn env(&self, keys: usize) -> Vec<(String, String)> {
        let pool = self.dialect.keys();
        assert!(keys <= pool.len(), "at most {} test keys for {}", pool.len(), self.dialect.provider());
        let prefix = self.dialect.provider().to_ascii_uppercase();
        let mut env = vec![(format!("{prefix}_API_BASE"), self.base())];
        for (i, key) in pool[..keys].iter().enumerate() {
            env.push((format!("{prefix}_API_KEY_{}", i + 1), (*key).to_owned()));
        }
        env
    }

    /// The id keyrelay shows for `secret`, a key of this provider.
    pub fn key_id(&self, secret: &str) -> String {
        key_id_of(self.dialect.provider(), secret)
    }

    /// Scripts the answer to the next request not yet scripted (FIFO),
    /// whatever its key.
    pub fn push(&self, script: Script) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// Scripts the answer to the next request carrying `key` (FIFO per key).
    pub fn push_for(&self, key: &str, script: Script) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().queue.push_back(script);
    }

    /// Answers every request carrying `key` with `script` (after its
    /// [`push_for`](Self::push_for) queue), until [`clear_for`](Self::clear_for).
    pub fn always_for(&self, key: &str, script: Script) {
        self.faults_for(key, move |_| script.clone());
    }

    /// Answers every request carrying `key` with what `pick` says for it
    /// (after its [`push_for`](Self::push_for) queue).
    pub fn faults_for(&self, key: &str, pick: impl Fn(&Recorded) -> Script + Send + Sync + 'static) {
        self.state.per_key.lock().unwrap().entry(key.to_owned()).or_default().always = Some(Arc::new(pick));
    }

    /// Drops every script of `key`.
    pub fn clear_for(&self, key: &str) {
        self.state.per_key.lock().unwrap().remove(key);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every request so far, in arrival order, forgetting them: a long run
    /// calls it now and then so that the records do not grow without bound.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.state.requests.lock().unwrap())
    }

    /// Requests to paths ending with `suffix`, e.g. `/chat/completions`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    /// Requests that carried `key`.
    pub fn requests_with(&self, key: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.key.as_deref() == Some(key)).collect()
    }

    /// The pool key each request carried, in arrival order.
    pub fn keys_seen(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.key.unwrap_or_else(|| NO_KEY.to_owned())).collect()
    }

    /// The answers the requests with `key` got, in order.
    pub fn answers(&self, key: &str) -> Vec<String> {
        self.requests_with(key).into_iter().map(|r| r.answer).collect()
    }

    /// `(key, answer)` of every request, in order (no key: empty).
    pub fn log(&self) -> Vec<(String, String)> {
        self.requests().into_iter().map(|r| (r.key.unwrap_or_default(), r.answer)).collect()
    }

    /// How many streams have handed over their last event (OpenAI's
    /// `data: [DONE]`).
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }

    /// Requests with `key` in flight now (see the module docs).
    pub fn in_flight(&self, key: &str) -> usize {
        self.state.flights.lock().unwrap().get(key).map_or(0, |f| f.now)
    }

    /// The most requests with `key` ever in flight at once.
    pub fn max_in_flight(&self, key: &str) -> usize {
        self.state.flights.lock().unwrap().get(key).map_or(0, |f| f.max)
    }

    /// Requests in flight now, all keys together.
    pub fn total_in_flight(&self) -> usize {
        self.state.flights.lock().unwrap().values().map(|f| f.now).sum()
    }
}
