//! Model labels for metrics, and the metric handles a provider keeps.

use std::sync::Arc;

use tokio::time::Instant;

use super::ProviderPool;

impl ProviderPool {
    /// Remembers the models the provider listed (see [`Self::model_label`]).
    pub fn learn_models(&self, models: &[String]) {
        let mut known = self.known_models.write().unwrap_or_else(|p| p.into_inner());
        known.extend(models.iter().map(|m| Arc::from(m.as_str())));
    }

    /// `model` when the operator named it or the provider listed it, else
    /// `other`: model names come from clients, and labels must stay few.
    pub fn model_label(&self, model: &str) -> Arc<str> {
        static OTHER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("other"));
        if let Some(listed) = self.known_models.read().unwrap_or_else(|p| p.into_inner()).get(model) {
            return listed.clone();
        }
        if self.provider.models().iter().any(|m| m == model) { Arc::from(model) } else { OTHER.clone() }
    }

    /// Counts the tokens an answer reported for (key, model).
    pub fn count_usage(&self, index: usize, model: &str, usage: crate::usage::Usage) {
        let now = Instant::now();
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        let counters = &mut health.model(model, today, self.options.max_concurrent_per_key, now).counters;
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
