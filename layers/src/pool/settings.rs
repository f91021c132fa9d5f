//! [`KeySettings`]: how one key of a provider is used, beside the
//! provider's own options: its weight for `weighted` selection, its
//! priority tier, the models it is bound to, its own concurrency cap, and
//! its published limits (requests per minute and per day, tokens per
//! minute), which selection enforces before the provider has to, and its
//! budget in USD over a calendar period (a key with free credits or a
//! monthly cap), which selection enforces too.
//!
//! ```
//! use keyrelay_layers::{budget::{Budget, BudgetPeriod}, pool::KeySettings};
//!
//! let paid = KeySettings::new().priority(1).weight(3).models(&["gpt-4o*".to_owned()]).max_concurrent(4);
//! assert!(paid.serves("gpt-4o-mini") && paid.serves("GPT-4o") && !paid.serves("o3"));
//! let limited = KeySettings::new().rpm(500).tpm(200_000).rpd(10_000);
//! assert_eq!((limited.rpm, limited.tpm, limited.rpd), (Some(500), Some(200_000), Some(10_000)));
//! assert_eq!(KeySettings::new().rpm(0).rpm, None, "0: no limit");
//! assert!(KeySettings::new().serves("anything"), "no binding: every model");
//! let capped = KeySettings::new().budget(Budget::new(5.0, BudgetPeriod::Month));
//! assert_eq!(capped.budget.unwrap().limit_usd, 5.0);
//! ```

use std::fmt;

use wildmatch::WildMatch;

use crate::budget::Budget;

/// How one key is used; the default is weight 1, priority 0, every model,
/// the provider's concurrency cap.
#[derive(Clone)]
pub struct KeySettings {
    /// Its share of requests under `weighted` selection (at least 1).
    pub weight: u32,
    /// Its tier: used only while no key of a lower priority can take the
    /// request (0 first).
    pub priority: u32,
    models: Vec<(String, WildMatch)>,
    /// Its own cap of requests in flight per model (0: none), instead of
    /// the provider's `max_concurrent_per_key`.
    pub max_concurrent: Option<usize>,
    /// Requests per minute at most (a sliding minute; `None`: no limit).
    pub rpm: Option<u64>,
    /// Tokens per minute at most, prompt and completion (reserved from an
    /// estimate when the key is chosen, corrected by the reported usage).
    pub tpm: Option<u64>,
    /// Requests per day at most (the pool's day, from its daily reset).
    pub rpd: Option<u64>,
    /// USD the key may spend per calendar period (priced by the pool's
    /// [`PriceTable`](crate::price::PriceTable)); `None`: no budget.
    pub budget: Option<Budget>,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            weight: 1,
            priority: 0,
            models: Vec::new(),
            max_concurrent: None,
            rpm: None,
            tpm: None,
            rpd: None,
            budget: None,
        }
    }
}

impl KeySettings {
    /// The default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its share of requests under `weighted` selection, relative to the
    /// other keys' (at least 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// Its tier: a key is used only while no key of a lower priority can
    /// take the request (0 first).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Binds the key to models matching these globs (`*`, `?`,
    /// case-insensitive, over the bare model name); none binds nothing.
    pub fn models(mut self, globs: &[String]) -> Self {
        self.models = globs
            .iter()
            .map(|g| g.trim())
            .filter(|g| !g.is_empty())
            .map(|g| (g.to_owned(), WildMatch::new_case_insensitive(g)))
            .collect();
        self
    }

    /// Requests in flight per model at most on this key, instead of the
    /// provider's `max_concurrent_per_key` (0: no cap).
    pub fn max_concurrent(mut self, cap: usize) -> Self {
        self.max_concurrent = Some(cap);
        self
    }

    /// Requests per minute at most, over a sliding minute (0: no limit).
    pub fn rpm(mut self, limit: u64) -> Self {
        self.rpm = (limit > 0).then_some(limit);
        self
    }

    /// Tokens per minute at most, prompt and completion together, over a
    /// sliding minute (0: no limit).
    pub fn tpm(mut self, limit: u64) -> Self {
        self.tpm = (limit > 0).then_some(limit);
        self
    }

    /// Requests per day at most, the day turning at the pool's daily reset
    /// (0: no limit).
    pub fn rpd(mut self, limit: u64) -> Self {
        self.rpd = (limit > 0).then_some(limit);
        self
    }

    /// At most `budget.limit_usd` spent per `budget.period` (calendar
    /// periods in UTC). The key is not chosen while what it spent, and what
    /// requests in flight on it reserved (each its maximum cost), fill the
    /// budget: `/v1/keys` shows it `exhausted` until the period ends. A
    /// model with no price reserves and costs nothing.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Whether any of `rpm`, `tpm`, `rpd` is set.
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.rpd.is_some()
    }

    /// The model globs the key is bound to (empty: every model).
    pub fn model_globs(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|(glob, _)| glob.as_str())
    }

    /// Whether the key may serve `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|(_, glob)| glob.matches(model))
    }

    /// Whether these are the default settings (a plain key).
    pub fn is_default(&self) -> bool {
        self.weight == 1
            && self.priority == 0
            && self.models.is_empty()
            && self.max_concurrent.is_none()
            && !self.has_limits()
            && self.budget.is_none()
    }
}

impl PartialEq for KeySettings {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight
            && self.priority == other.priority
            && self.model_globs().eq(other.model_globs())
            && self.max_concurrent == other.max_concurrent
            && (self.rpm, self.tpm, self.rpd) == (other.rpm, other.tpm, other.rpd)
            && self.budget == other.budget
    }
}

impl fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySettings")
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("models", &self.model_globs().collect::<Vec<_>>())
            .field("max_concurrent", &self.max_concurrent)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("rpd", &self.rpd)
            .field("budget", &self.budget)
            .finish()
    }
}
