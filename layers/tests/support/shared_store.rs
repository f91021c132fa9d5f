//! A fake shared store for SharedAdmit's tests: it records every ask and
//! answers as the test scripted, handing out tickets that record how they
//! were settled and released. Pools on a paused clock at 2026-01-01 12:00
//! UTC with gpt-4o priced, so that costs are known.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};

use keyrelay_layers::{
    pool::{
        Admission, AdmissionAsk, KeyPool, KeyPoolBuilder, KeySettings, ProviderOptions, Refusal, Secret, Selection,
        SharedAdmission, SharedTicket,
    },
    price::{Price, PriceTable},
};

use super::support::{NOON_UNIX, NOWHERE, key_id, noon, openai};

/// 2026-01-02 00:00 UTC: when the tests' day (and day budget) ends.
pub const MIDNIGHT_MS: u64 = (NOON_UNIX + 12 * 3600) * 1000;

/// What the store answers to the next ask.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// Admitted, with the key's shared spend.
    Admit(Option<u64>),
    Refuse(Refusal),
    Local,
}

/// Records asks, answers them from a script (an ask nobody scripted fails
/// the test).
#[derive(Debug, Default)]
pub struct FakeStore {
    asks: Mutex<Vec<AdmissionAsk>>,
    answers: Mutex<VecDeque<Answer>>,
    tickets: Mutex<Vec<Arc<FakeTicket>>>,
}

impl FakeStore {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Scripts the answer to one more ask.
    pub fn answer(&self, answer: Answer) {
        self.answers.lock().unwrap().push_back(answer);
    }

    pub fn asks(&self) -> Vec<AdmissionAsk> {
        self.asks.lock().unwrap().clone()
    }

    /// The `n`-th ticket handed out.
    pub fn ticket(&self, n: usize) -> Arc<FakeTicket> {
        self.tickets.lock().unwrap()[n].clone()
    }

    /// How many tickets were handed out.
    pub fn tickets(&self) -> usize {
        self.tickets.lock().unwrap().len()
    }
}

impl SharedAdmission for FakeStore {
    fn admit(&self, ask: AdmissionAsk) -> Pin<Box<dyn Future<Output = Admission> + Send>> {
        let key = ask.key.clone();
        self.asks.lock().unwrap().push(ask);
        let answer = self.answers.lock().unwrap().pop_front();
        let admission = match answer.unwrap_or_else(|| panic!("nobody scripted an answer for an ask about {key}")) {
            Answer::Admit(spent_nanos) => {
                let ticket = Arc::new(FakeTicket::default());
                self.tickets.lock().unwrap().push(ticket.clone());
                Admission::Admitted { ticket, spent_nanos }
            }
            Answer::Refuse(refusal) => Admission::Refused(refusal),
            Answer::Local => Admission::Local,
        };
        // Answered on a later poll, as a round trip would be.
        Box::pin(async move {
            tokio::task::yield_now().await;
            admission
        })
    }
}

/// Records what the attempt reported and how often it was released.
#[derive(Debug, Default)]
pub struct FakeTicket {
    settled: Mutex<Vec<(u64, Option<u64>)>>,
    releases: AtomicUsize,
}

impl FakeTicket {
    /// Every `(tokens, cost in nano-dollars)` it was settled with.
    pub fn settled(&self) -> Vec<(u64, Option<u64>)> {
        self.settled.lock().unwrap().clone()
    }

    pub fn releases(&self) -> usize {
        self.releases.load(SeqCst)
    }
}

impl SharedTicket for FakeTicket {
    fn settle(&self, tokens: u64, cost_nanos: Option<u64>) {
        self.settled.lock().unwrap().push((tokens, cost_nanos));
    }

    fn release(&self) {
        self.releases.fetch_add(1, SeqCst);
    }
}

/// $1 per million prompt tokens, $2 per million completion tokens.
fn prices() -> Arc<PriceTable> {
    let mut prices = PriceTable::default();
    prices.insert("openai/gpt-4o", Price::new(1.0, 2.0));
    Arc::new(prices)
}

fn builder(keys: Vec<(&str, KeySettings)>) -> KeyPoolBuilder {
    let keys = keys.into_iter().map(|(secret, settings)| (Secret::new(secret), settings)).collect();
    KeyPool::builder().wall_clock(noon()).prices(prices()).provider_keys(
        openai(NOWHERE),
        ProviderOptions::new(Selection::RoundRobin),
        keys,
    )
}

/// One `openai` provider with these keys, admitted by `store`.
pub fn pool(store: &Arc<FakeStore>, keys: Vec<(&str, KeySettings)>) -> Arc<KeyPool> {
    builder(keys).admission(store.clone()).build().unwrap()
}

/// The same, with no shared store.
pub fn pool_without_store(keys: Vec<(&str, KeySettings)>) -> Arc<KeyPool> {
    builder(keys).build().unwrap()
}

/// The id of `openai`'s key `secret`.
pub fn id(secret: &str) -> String {
    key_id("openai", secret).as_str().to_owned()
}
