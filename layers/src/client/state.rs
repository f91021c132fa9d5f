//! A client's live state: its requests and tokens over the last minute,
//! its requests in flight, and its budget's spend.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use super::ClientPolicy;
use crate::{
    budget::{Budget, BudgetMeter},
    pool::MinuteWindow,
};

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct ClientState {
    windows: Mutex<Windows>,
    in_flight: Arc<AtomicU64>,
    budget: Mutex<Option<Arc<BudgetMeter>>>,
}

#[derive(Debug, Default)]
struct Windows {
    requests: MinuteWindow,
    tokens: MinuteWindow,
}

/// Which of a client's limits refused a request, and from when it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_parallel` requests are in flight.
    Parallel(u64),
    /// `rpm` requests were made in the last minute; room from that second.
    Rpm(u64, u64),
    /// `tpm` tokens were used in the last minute; room from that second.
    Tpm(u64, u64),
}

/// A request admitted under its client's limits: it counts in flight
/// until dropped, and [`Admitted::reconcile`] replaces its token
/// reservation with what it used.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<ClientState>,
    in_flight: Arc<AtomicU64>,
    second: u64,
    reserved_tokens: u64,
    counts_tokens: bool,
}

impl ClientState {
    /// Requests of this client in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests and tokens in the minute that ends with `second`.
    pub fn window_use(&self, second: u64) -> (u64, u64) {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        (windows.requests.used(second), windows.tokens.used(second))
    }

    /// The budget's meter, when the client has a budget.
    pub fn budget(&self) -> Option<Arc<BudgetMeter>> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sets (or clears) the budget, keeping what was spent.
    pub(super) fn set_budget(&self, budget: Option<Budget>) {
        let mut meter = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        match (budget, meter.as_ref()) {
            (None, _) => *meter = None,
            (Some(budget), Some(current)) => current.set_budget(budget, now_ms()),
            (Some(budget), None) => *meter = Some(Arc::new(BudgetMeter::new(budget))),
        }
    }

    /// Admits a request of `tokens` (estimated) at `second` under `policy`'s
    /// limits, counting it; or says which limit it would break.
    pub fn admit(self: &Arc<Self>, policy: &ClientPolicy, second: u64, tokens: u64) -> Result<Admitted, LimitHit> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(max) = policy.max_parallel
            && self.in_flight.load(Ordering::Acquire) >= max
        {
            return Err(LimitHit::Parallel(max));
        }
        if let Some(rpm) = policy.rpm
            && let Some(from) = windows.requests.fits_from(second, rpm, 1)
        {
            return Err(LimitHit::Rpm(rpm, from));
        }
        if let Some(tpm) = policy.tpm
            && let Some(from) = windows.tokens.fits_from(second, tpm, tokens)
        {
            return Err(LimitHit::Tpm(tpm, from));
        }
        windows.requests.add(second, 1);
        if policy.tpm.is_some() {
            windows.tokens.add(second, tokens);
        }
        // Counted under the windows' lock, so that two requests cannot
        // both take the last place.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted {
            state: self.clone(),
            in_flight: self.in_flight.clone(),
            second,
            reserved_tokens: tokens,
            counts_tokens: policy.tpm.is_some(),
        })
    }
}

impl Admitted {
    /// The request used `tokens` (its answer's usage), reported at `now`.
    pub fn reconcile(&self, now: u64, tokens: u64) {
        if !self.counts_tokens {
            return;
        }
        let delta = i64::try_from(tokens).unwrap_or(i64::MAX) - i64::try_from(self.reserved_tokens).unwrap_or(i64::MAX);
        let mut windows = self.state.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.tokens.adjust(self.second, now, delta);
    }
}

impl Admitted {
    /// The request was refused after all (by the limits replicas share):
    /// it takes back its place in the windows.
    pub fn cancel(self, now: u64) {
        let mut windows = self.state.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.requests.adjust(self.second, now, -1);
        if self.counts_tokens {
            windows.tokens.adjust(self.second, now, -i64::try_from(self.reserved_tokens).unwrap_or(i64::MAX));
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Now, in ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_refuses_with_its_own_reason() {
        let state = Arc::new(ClientState::default());
        let policy = ClientPolicy::new("c").max_parallel(2).rpm(3).tpm(100);
        let a = state.admit(&policy, 1000, 10).unwrap();
        let b = state.admit(&policy, 1000, 10).unwrap();
        assert_eq!(state.admit(&policy, 1000, 10).unwrap_err(), LimitHit::Parallel(2));
        drop(a);
        assert_eq!(state.in_flight(), 1);
        let c = state.admit(&policy, 1001, 10).unwrap();
        drop((b, c));
        assert_eq!(state.admit(&policy, 1002, 10).unwrap_err(), LimitHit::Rpm(3, 1060));
        assert_eq!(state.admit(&ClientPolicy::new("c").tpm(100), 1002, 80).unwrap_err(), LimitHit::Tpm(100, 1060));
    }

    #[test]
    fn reconciling_gives_back_unused_tokens() {
        let state = Arc::new(ClientState::default());
        let policy = ClientPolicy::new("c").tpm(100);
        let first = state.admit(&policy, 1000, 90).unwrap();
        assert!(state.admit(&policy, 1001, 20).is_err());
        first.reconcile(1001, 30);
        assert!(state.admit(&policy, 1001, 20).is_ok());
        assert_eq!(state.window_use(1001).1, 50);
    }
}
