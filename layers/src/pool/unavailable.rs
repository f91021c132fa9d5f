//! [`Unavailable`]: why a provider's pool could not give a key, and when
//! it might.

use tokio::time::Instant;

/// Why no key could be chosen, and when one might be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unavailable {
    /// The provider has no key at all.
    pub no_keys: bool,
    /// The earliest end of a cooldown (or of a provider pause) among keys
    /// not excluded; a key at its `rpm`, `tpm` or `rpd` limit, or one the
    /// provider's headers said has nothing left for the model, counts as
    /// cooling for a rate limit until then.
    pub cooling_until: Option<Instant>,
    /// Some key is usable but has no free slot: wait on
    /// [`ProviderPool::slot_freed`](super::ProviderPool::slot_freed).
    pub full: bool,
    /// When to look again at a key full on other replicas' account (see
    /// `admission.rs`): their slots free without a word here, unless the
    /// shared store says so.
    pub recheck_at: Option<Instant>,
    /// Some keys were skipped because the request already tried them.
    pub excluded: bool,
    /// The provider has keys, but none is bound to the model (their
    /// [`KeySettings::models`](super::KeySettings::models) leave it out).
    pub no_key_for_model: bool,
    /// The earliest time an invalid key may be probed.
    pub invalid_until: Option<Instant>,
    /// Whether any key that could serve is cooling for a rate limit or a
    /// quota, or the provider is paused (which rate limits on several keys
    /// start). `false` when every cooling key only rests after repeated
    /// transient failures (5xx, resets, timeouts): the upstream is
    /// struggling and nobody was rate limited, so the client should hear
    /// 503 [`KeysRecovering`](crate::error::KeysRecovering), not 429. Mixed,
    /// it is `true`: a 429 is then the truth for part of the pool, and
    /// `Retry-After` still names when the first key is back. Always `false`
    /// without `cooling_until`.
    pub rate_limited: bool,
    /// Some key that could serve has spent its budget: it is no candidate
    /// until its period ends. A request does not wait for that: with no
    /// other key, it is answered at once as if every key were out of quota.
    /// (A key whose remaining budget is all reserved by requests in flight
    /// counts as [`full`](Self::full) instead.)
    pub over_budget: bool,
    /// The earliest end of a budget period among the keys over budget
    /// (`None` when each is a `total` budget, which never resets).
    pub budget_until: Option<Instant>,
}

impl Unavailable {
    /// Keeps the earliest end of a spent budget's period.
    pub(super) fn budget_spent(&mut self, until: Option<Instant>) {
        self.over_budget = true;
        if let Some(until) = until {
            self.budget_until = Some(self.budget_until.map_or(until, |earliest| earliest.min(until)));
        }
    }

    /// A key is full on other replicas' account until `until`.
    pub(super) fn full_until(&mut self, until: Instant) {
        self.full = true;
        self.recheck_at = Some(self.recheck_at.map_or(until, |earliest| earliest.min(until)));
    }

    /// Keeps the earliest cooldown end, and whether any is a rate limit's.
    pub(super) fn cooling(&mut self, until: Instant, rate_limited: bool) {
        self.cooling_until = Some(self.cooling_until.map_or(until, |earliest| earliest.min(until)));
        self.rate_limited |= rate_limited;
    }
}
