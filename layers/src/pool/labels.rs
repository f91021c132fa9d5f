//! Model labels for metrics, and the metric handles a provider keeps.
//!
//! A model is a label (instead of `other`) when the operator configured it,
//! the provider listed it (`GET /v1/models`), or the provider accepted it:
//! answered a request for it with success. Model names come from clients, so
//! the accepted ones are capped per provider
//! ([`ProviderOptions::max_model_labels`](super::ProviderOptions::max_model_labels));
//! configured and listed models are bounded by the operator and the provider
//! and do not count.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, RwLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use tokio::time::Instant;

use super::ProviderPool;

/// Longer names are not learned from successes: real model names are short,
/// and a label is stored and exported with every series.
const MAX_LEARNED_NAME_LEN: usize = 128;

/// Why a model is a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// In the provider's config.
    Configured,
    /// In the provider's `/models` answer.
    Listed,
    /// Answered with success; counts against the cap.
    Accepted,
}

#[derive(Debug, Default)]
struct Known {
    models: HashMap<Arc<str>, Source, foldhash::fast::RandomState>,
    /// How many of `models` are [`Source::Accepted`].
    accepted: usize,
}

/// The models of one provider that are metric labels.
#[derive(Debug)]
pub(super) struct ModelLabels {
    known: RwLock<Known>,
    /// Most models learned from successes.
    cap: usize,
    /// The cap was reached and said so in the log, once.
    warned_full: AtomicBool,
}

impl ModelLabels {
    /// The labels of a provider configured with `configured` models; on a
    /// reload, the models `previous` had listed or learned stay labels.
    pub(super) fn new(configured: &[String], cap: usize, previous: Option<&ModelLabels>) -> Self {
        let mut known = Known::default();
        if let Some(previous) = previous {
            // Configured models come from the new config only.
            let old = previous.read();
            known
                .models
                .extend(old.models.iter().filter(|&(_, &s)| s != Source::Configured).map(|(m, &s)| (m.clone(), s)));
        }
        for model in configured {
            known.models.insert(Arc::from(model.as_str()), Source::Configured);
        }
        // With a lower cap after a reload, the models already learned stay:
        // dropping a label would split its series.
        known.accepted = known.models.values().filter(|&&s| s == Source::Accepted).count();
        Self { known: RwLock::new(known), cap, warned_full: AtomicBool::new(false) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `model`'s label, if it is one.
    pub(super) fn get(&self, model: &str) -> Option<Arc<str>> {
        self.read().models.get_key_value(model).map(|(label, _)| label.clone())
    }

    /// Models the provider listed become labels, whatever the cap.
    pub(super) fn listed(&self, models: &[String]) {
        let mut known = self.write();
        for model in models {
            match known.models.get_mut(model.as_str()) {
                Some(source @ Source::Accepted) => {
                    *source = Source::Listed;
                    known.accepted -= 1;
                }
                Some(_) => {}
                None => {
                    known.models.insert(Arc::from(model.as_str()), Source::Listed);
                }
            }
        }
    }

    /// The provider answered a request for `model` with success: it is a
    /// real model, a label while the cap allows. `true` once settled (a
    /// label now, or a name never learned), so the caller need not ask
    /// again; `false` while the cap is full, in case a reload raises it.
    pub(super) fn accepted(&self, provider: &str, model: &str) -> bool {
        if model.is_empty() || model.len() > MAX_LEARNED_NAME_LEN || model.chars().any(char::is_control) {
            return true;
        }
        {
            // The common case, a model already known: a read lock only.
            let known = self.read();
            if known.models.contains_key(model) {
                return true;
            }
            if known.accepted >= self.cap {
                drop(known);
                self.warn_full(provider);
                return false;
            }
        }
        let mut known = self.write();
        if known.models.contains_key(model) {
            return true;
        }
        if known.accepted >= self.cap {
            drop(known);
            self.warn_full(provider);
            return false;
        }
        known.models.insert(Arc::from(model), Source::Accepted);
        known.accepted += 1;
        drop(known);
        tracing::debug!(provider, model, "model accepted by the provider: a metric label from now on");
        true
    }

    fn warn_full(&self, provider: &str) {
        if !self.warned_full.swap(true, Relaxed) {
            tracing::warn!(
                provider,
                cap = self.cap,
                "the provider accepted more distinct models than the label cap: \
                 further ones are labelled `other` in metrics (raise max_model_labels, or list the models)"
            );
        }
    }
}

impl ProviderPool {
    /// Remembers the models the provider listed (see [`Self::model_label`]);
    /// listed models are labels whatever
    /// [`max_model_labels`](super::ProviderOptions::max_model_labels) says.
    pub fn learn_models(&self, models: &[String]) {
        self.labels.listed(models);
    }

    /// `model` when the operator configured it, the provider listed it, or
    /// the provider answered a request for it with success (up to
    /// [`max_model_labels`](super::ProviderOptions::max_model_labels) of
    /// those), else `other`: model names come from clients, and labels must
    /// stay few.
    pub fn model_label(&self, model: &str) -> Arc<str> {
        static OTHER: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("other"));
        self.labels.get(model).unwrap_or_else(|| OTHER.clone())
    }

    /// Counts the tokens an answer reported for (key, model).
    pub fn count_usage(&self, index: usize, model: &str, usage: crate::usage::Usage) {
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        let counters = &mut health.model(model, today, self.cap_of(index), now).counters;
        counters.tokens_in += usage.prompt_tokens;
        counters.tokens_out += usage.completion_tokens;
        drop(health);
        let [prompt, completion] = self.token_counters.get(self.model_label(model), |label| {
            let provider = self.provider.id().as_str().to_owned();
            ["prompt", "completion"].map(|kind| {
                let labels = [("provider", provider.clone()), ("model", label.to_string()), ("kind", kind.to_owned())];
                metrics::counter!(crate::metrics::TOKENS, &labels)
            })
        });
        prompt.increment(usage.prompt_tokens);
        completion.increment(usage.completion_tokens);
    }

    /// Counts one upstream attempt of key `index` in
    /// `keyrelay_upstream_attempts_total`.
    pub(crate) fn count_attempt(&self, index: usize, outcome: &'static str) {
        let counter = self.attempt_counters.get((index, outcome), |&(index, outcome)| {
            let labels = [
                ("provider", self.provider.id().as_str().to_owned()),
                ("key", self.keys[index].id().as_str().to_owned()),
                ("outcome", outcome.to_owned()),
            ];
            metrics::counter!(crate::metrics::UPSTREAM_ATTEMPTS, &labels)
        });
        counter.increment(1);
    }
}
