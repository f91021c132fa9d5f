//! A key's budget at work: one [`BudgetMeter`] per key with a budget, kept
//! in its live state (so a reload keeps what it spent), consulted when the
//! key is chosen, reserved for the request's maximum cost when it is
//! leased, and charged with the real cost when the answer reports its
//! usage.
//!
//! A key that spent its budget is no candidate until its period ends, and
//! a request never waits for that (see
//! [`Unavailable::budget_until`](super::Unavailable::budget_until)); a key
//! whose remaining budget is all reserved by requests in flight counts as
//! full until one of them ends. The reservation is held by the [`InFlight`](super::InFlight) guard, which
//! lives in the response body: it is freed when the answer ends, fails or
//! is dropped. The real cost is charged before the guard drops, so for a
//! moment both count: the budget errs on the side of spending less.
//!
//! A model with no price reserves nothing and costs nothing: a key with a
//! budget serves it while anything is left.

use std::sync::Arc;

use tokio::time::Instant;

use super::{KeyPool, ProviderPool, health::Health};
use crate::{
    budget::{Budget, BudgetHold, BudgetMeter, BudgetSpent},
    usage::Usage,
};

/// Whether a key's budget admits another request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum BudgetRoom {
    /// No budget, or something is left of it.
    Free,
    /// What is left is reserved by requests in flight: full, until one ends.
    Reserved,
    /// Spent until `resets_at` (`None`: a `total` budget, never).
    Spent { resets_at: Option<u64> },
}

impl Health {
    /// Puts the key's budget in force (a build or a reload): the meter
    /// the key already has keeps its spend and takes the new budget; a key
    /// whose budget was removed forgets its meter (the requests in flight
    /// that hold it keep it until they end).
    pub(super) fn set_budget(&mut self, budget: Option<Budget>, now_ms: u64) {
        self.budget = match (budget, self.budget.take()) {
            (Some(budget), Some(meter)) => {
                meter.set_budget(budget, now_ms);
                Some(meter)
            }
            (Some(budget), None) => Some(Arc::new(BudgetMeter::new(budget))),
            (None, _) => None,
        };
    }

    /// Whether the key's budget has room for another request now.
    pub(super) fn budget_room(&self, now_ms: u64) -> BudgetRoom {
        let Some(meter) = self.budget.as_ref() else { return BudgetRoom::Free };
        let budget = meter.budget();
        if meter.spent(now_ms) >= budget.limit_usd {
            BudgetRoom::Spent { resets_at: budget.period.end(now_ms) }
        } else if meter.remaining(now_ms) <= 0.0 {
            BudgetRoom::Reserved
        } else {
            BudgetRoom::Free
        }
    }

    /// Whether the key really spent its budget (reservations aside): what
    /// status pages call `exhausted`, reason `budget`.
    pub(super) fn budget_spent(&self, now_ms: u64) -> bool {
        self.budget.as_ref().is_some_and(|meter| meter.spent(now_ms) >= meter.budget().limit_usd)
    }

    /// Reserves `max_cost` USD of the key's budget for a request, if it
    /// has one; refused when another request took what was left since the
    /// key was looked at.
    pub(super) fn reserve_budget(&self, now_ms: u64, max_cost: f64) -> Result<Option<BudgetHold>, BudgetSpent> {
        self.budget.as_ref().map(|meter| meter.try_reserve(now_ms, max_cost)).transpose()
    }
}

impl ProviderPool {
    /// Charges what `usage` of `model` cost to the budget of key `index`,
    /// when it has one and the model a price; returns that cost.
    pub(super) fn charge_budget(&self, index: usize, model: &str, usage: Usage) -> Option<f64> {
        let meter = self.keys[index].health().budget.clone()?;
        let cost = self.prices.cost(self.provider.id().as_str(), model, usage)?;
        meter.charge(self.clock.now_unix_ms(), cost);
        Some(cost)
    }

    /// The wall time a budget's period ends, as an instant of the pool.
    pub(super) fn budget_reset(&self, resets_at_ms: Option<u64>) -> Option<Instant> {
        resets_at_ms.map(|ms| self.clock.instant_at(ms))
    }
}

impl KeyPool {
    /// The budget of the key with this id (`provider:1a2b3c4d`), if it has
    /// one: which period's spend to restore.
    pub fn key_budget(&self, id: &str) -> Option<Budget> {
        let (pool, index) = self.key(id)?;
        pool.settings(index).budget
    }

    /// Adds `usd`, spent by the key `id` in the budget period that began
    /// at `period_start_ms` (ms since the Unix epoch; 0 for a `total`
    /// budget), as a durable store counted it: a restart keeps the spend.
    /// Give it the rows of the key's budget period
    /// ([`key_budget`](Self::key_budget)); a row of a period that is over
    /// is ignored. `false` when there is no such key, or it has no budget.
    ///
    /// ```
    /// use keyrelay_layers::{
    ///     budget::{Budget, BudgetPeriod}, pool::{KeyPool, KeySettings, Secret}, provider::Provider,
    /// };
    ///
    /// let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    /// let capped = KeySettings::new().budget(Budget::new(10.0, BudgetPeriod::Total));
    /// let pool = KeyPool::builder()
    ///     .provider_keys(openai, Default::default(), vec![(Secret::new("sk-a"), capped)])
    ///     .build()
    ///     .unwrap();
    /// let id = pool.key_statuses()[0].id.clone();
    /// assert!(pool.restore_key_spend(&id, 0, 4.0));
    /// let budget = pool.key_status(&id).unwrap().budget.unwrap();
    /// assert_eq!((budget.spent_usd, budget.remaining_usd), (4.0, 6.0));
    /// ```
    pub fn restore_key_spend(&self, id: &str, period_start_ms: u64, usd: f64) -> bool {
        let Some((pool, index)) = self.key(id) else { return false };
        let Some(meter) = pool.keys[index].health().budget.clone() else { return false };
        meter.restore(self.clock.now_unix_ms(), period_start_ms, usd);
        true
    }
}
