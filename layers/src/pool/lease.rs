//! What a chosen key hands out: the [`KeyLease`] identity, the [`InFlight`]
//! guard, and [`SlotPermit`].

use std::{
    fmt,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use http::{HeaderName, HeaderValue};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{KeyEntry, KeyId, ProviderPool, Secret};
use crate::{
    classify::{Failure, FailureClass},
    provider::{Provider, ProviderId},
};

/// The key chosen for one attempt: an identity, cheap to clone, carried in
/// request extensions to the upstream and copied onto the response.
#[derive(Clone)]
pub struct KeyLease {
    pub(super) pool: Arc<ProviderPool>,
    pub(super) index: usize,
    /// When the key was chosen: an attempt's time starts here, so a wait
    /// for a key is no attempt's.
    pub(super) leased_at: tokio::time::Instant,
    /// Tokens reserved in the key's `tpm` window when it was chosen.
    pub(super) reserved_tokens: u64,
    /// USD reserved of the key's budget (0 without one).
    pub(super) reserved_cost: f64,
    /// The shared store's ticket for the attempt, when the pool has one.
    pub(super) ticket: Option<super::admission::TicketSlot>,
}

impl KeyLease {
    /// When the key was chosen for this attempt.
    pub fn leased_at(&self) -> tokio::time::Instant {
        self.leased_at
    }

    /// Counts one attempt on this key in `keyrelay_upstream_attempts_total`.
    pub(crate) fn count_attempt(&self, outcome: &'static str) {
        self.pool.count_attempt(self.index, outcome);
    }

    /// The leased key.
    pub fn key(&self) -> &Arc<KeyEntry> {
        &self.pool.keys[self.index]
    }
    /// The leased key's id.
    pub fn key_id(&self) -> &KeyId {
        self.key().id()
    }
    /// The key's provider.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.pool.provider
    }
    /// The key's provider's id.
    pub fn provider_id(&self) -> &ProviderId {
        self.pool.provider.id()
    }
    /// The provider's pool the key belongs to.
    pub fn pool(&self) -> &Arc<ProviderPool> {
        &self.pool
    }
    /// The header (name, sensitive value) that authenticates this key.
    pub fn auth_header(&self) -> (&HeaderName, &HeaderValue) {
        self.key().auth_header()
    }
    /// The key's secret.
    pub fn secret(&self) -> &Secret {
        self.key().secret()
    }
    /// The key's id as a header value (`x-keyrelay-key`).
    pub fn key_header(&self) -> &http::HeaderValue {
        self.pool.keys()[self.index].id_header()
    }
    /// Records this attempt's outcome for (key, `model`); returns the end
    /// of the cooldown it started, if any.
    pub fn record(&self, model: &str, outcome: Result<(), Failure>) -> Option<Instant> {
        self.pool.record_timed(self.index, model, outcome, Some(self.leased_at.elapsed()))
    }
    /// The (key, `model`) concurrency slots, when capped.
    pub fn slots(&self, model: &str) -> Option<Arc<Semaphore>> {
        self.pool.slots(self.index, model)
    }

    /// Counts the tokens an answer reported for (key, `model`), puts them
    /// in the key's `tpm` window in place of the estimate reserved when it
    /// was chosen (an answer that reports nothing keeps its reservation),
    /// and charges what they cost to the key's budget, if it has one (the
    /// reservation of the budget is the [`InFlight`] guard's, freed when
    /// the answer ends).
    pub fn count_usage(&self, model: &str, usage: crate::usage::Usage) {
        self.pool.count_usage(self.index, model, usage);
        let cost = self.pool.charge_budget(self.index, model, usage);
        let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        self.pool.reconcile_tokens(self.index, self.leased_at, self.reserved_tokens, used);
        self.settle_ticket(used, cost);
    }

    /// Takes what the answer's rate-limit headers say this key has left
    /// for `model`: a key with nothing left is skipped for the model until
    /// the reset they name.
    pub fn learn_limits(&self, model: &str, headers: &http::HeaderMap) {
        self.pool.learn_limits(self.index, model, headers);
    }
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyLease").field(self.key_id()).finish()
    }
}

/// Holds one request in a key's in-flight count until dropped. It lives in
/// the response body, so a stream counts until its last byte. It holds the
/// request's reservation of the key's budget too, freed when it drops.
pub struct InFlight {
    pub(super) pool: Arc<ProviderPool>,
    pub(super) index: usize,
    pub(super) model: Arc<str>,
    pub(super) probe: bool,
    pub(super) budget: Option<crate::budget::BudgetHold>,
}

impl InFlight {
    /// Counts the tokens a successful answer reported, and charges what
    /// they cost to the key's budget.
    pub fn count_usage(&self, usage: crate::usage::Usage) {
        self.pool.count_usage(self.index, &self.model, usage);
        self.pool.charge_budget(self.index, &self.model, usage);
    }

    /// A stream broke after its headers: a transient failure of this key.
    pub fn stream_broke(&self) {
        let labels = [
            ("provider", self.pool.provider.id().as_str().to_owned()),
            ("key", self.pool.keys[self.index].id().as_str().to_owned()),
        ];
        metrics::counter!(crate::metrics::STREAM_BREAKS, &labels).increment(1);
        let _cooling_until = self.pool.record(self.index, &self.model, Err(Failure::new(FailureClass::Transient)));
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight").field("key", self.pool.keys[self.index].id()).finish_non_exhaustive()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let key = &self.pool.keys[self.index];
        key.in_flight.fetch_sub(1, Relaxed);
        // What was reserved and not spent may let another request in.
        drop(self.budget.take());
        if self.probe {
            // The probe ended without a verdict (the client left): let
            // another request probe.
            key.health().probing = false;
        }
        self.pool.slot_freed.notify_waiters();
    }
}

/// A (key, model) concurrency permit that wakes waiting requests when freed.
pub struct SlotPermit {
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<ProviderPool>,
}

impl SlotPermit {
    /// Holds `permit`; dropping it wakes requests waiting on `pool`.
    pub fn new(permit: OwnedSemaphorePermit, pool: Arc<ProviderPool>) -> Self {
        Self { permit: Some(permit), pool }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        // Released before the wake-up, so the woken request finds it free.
        drop(self.permit.take());
        self.pool.slot_freed.notify_waiters();
    }
}

impl fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPermit").finish_non_exhaustive()
    }
}
