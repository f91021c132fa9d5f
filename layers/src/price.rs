//! What a request costs: a table of prices per `provider/model`, in US
//! dollars per million tokens, and the cost of a [`Usage`] under it.
//!
//! Cached prompt tokens are part of the prompt tokens (as OpenAI counts
//! them) and are priced at `cached_input` instead of `input`. A model with
//! no price has no cost (`None`, not zero): it is counted apart as
//! unpriced, never as free.
//!
//! A model is found by its exact name, else by its name without a date or
//! `-latest` suffix, so `gpt-4o-mini-2024-07-18` takes `gpt-4o-mini`'s price.
//!
//! ```
//! use keyrelay_layers::{price::{Price, PriceTable}, usage::Usage};
//!
//! let mut prices = PriceTable::default();
//! prices.insert("openai/gpt-4o-mini", Price::new(0.15, 0.60).cached_input(0.075));
//! // 1M prompt tokens of which 400k cached, and 100k completion tokens:
//! let usage = Usage::new(1_000_000, 100_000).with_cached(400_000);
//! let cost = prices.cost("openai", "gpt-4o-mini-2024-07-18", usage).unwrap();
//! assert!((cost - (0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60)).abs() < 1e-12);
//! assert_eq!(prices.cost("openai", "gpt-unknown", usage), None);
//! ```

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{provider::ProviderId, usage::Usage};

const PER: f64 = 1_000_000.0;

/// Completion tokens reserved for a request that sets no `max_tokens`, when
/// the model's price names no `max_output` either.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// One model's price, USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Price {
    /// Prompt tokens not read from a cache.
    pub input: f64,
    /// Completion tokens (reasoning included).
    pub output: f64,
    /// Prompt tokens read from the provider's cache; `input` when unset.
    pub cached_input: Option<f64>,
    /// The most completion tokens the model writes: what a budget reserves
    /// for a request that sets no `max_tokens`.
    pub max_output: Option<u64>,
}

impl Price {
    /// `input` and `output` per million tokens; cached input at `input`.
    pub fn new(input: f64, output: f64) -> Self {
        Self { input, output, cached_input: None, max_output: None }
    }

    /// Cached prompt tokens at `price` per million.
    pub fn cached_input(mut self, price: f64) -> Self {
        self.cached_input = Some(price);
        self
    }

    /// The model writes at most `tokens` completion tokens.
    pub fn max_output(mut self, tokens: u64) -> Self {
        self.max_output = Some(tokens);
        self
    }

    /// What `usage` costs, in USD.
    pub fn cost(&self, usage: Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.completion_tokens as f64 * self.output)
            / PER
    }

    /// The most a request may cost: `prompt_tokens` (an estimate) at the
    /// input price, and `max_output` completion tokens (the request's cap,
    /// else the model's, else [`DEFAULT_MAX_OUTPUT`]).
    pub fn max_cost(&self, prompt_tokens: u64, max_output: Option<u64>) -> f64 {
        let output = max_output.or(self.max_output).unwrap_or(DEFAULT_MAX_OUTPUT);
        (prompt_tokens as f64 * self.input + output as f64 * self.output) / PER
    }
}

/// Prices by `provider/model`; see the [module docs](self).
#[derive(Clone, Default, PartialEq)]
pub struct PriceTable {
    /// By provider, then model: looked up per request without building a
    /// `provider/model` string.
    prices: HashMap<String, HashMap<String, Price>>,
}

impl fmt::Debug for PriceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriceTable").field("models", &self.len()).finish()
    }
}

impl PriceTable {
    /// Sets the price of `model`, named `provider/model`; a later price of
    /// the same model replaces an earlier one (config over the shipped table).
    /// A name without a `/` is a model of no provider, which no request
    /// names: the caller (config) refuses it.
    pub fn insert(&mut self, provider_model: &str, price: Price) {
        let (provider, model) = provider_model.split_once('/').unwrap_or(("", provider_model));
        self.prices.entry(provider.to_owned()).or_default().insert(model.to_owned(), price);
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.prices.values().map(HashMap::len).sum()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every priced model as `(provider, model)`, with its price.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Price)> {
        self.prices.iter().flat_map(|(provider, models)| {
            models.iter().map(move |(model, price)| (provider.as_str(), model.as_str(), price))
        })
    }

    /// The price of `model` of `provider`: by its name, else by its name
    /// without a date or `-latest` suffix.
    pub fn price(&self, provider: &str, model: &str) -> Option<&Price> {
        let models = self.prices.get(provider)?;
        models.get(model).or_else(|| models.get(undated(model)?))
    }

    /// What `usage` of `model` cost, or `None` when the model has no price.
    pub fn cost(&self, provider: &str, model: &str, usage: Usage) -> Option<f64> {
        self.price(provider, model).map(|price| price.cost(usage))
    }
}

/// USD spent by (client, provider, model label) since the process started:
/// `keyrelay_cost_usd_total`, a counter of fractions, which the `metrics`
/// facade (whole-number counters) cannot carry; the binary writes it into
/// its `/metrics` page with [`CostTotals::render`].
#[derive(Debug, Default)]
pub struct CostTotals {
    totals: Mutex<HashMap<CostLabels, f64>>,
}

/// (client, provider, model label).
type CostLabels = (Arc<str>, ProviderId, Arc<str>);

impl CostTotals {
    /// Adds `cost` USD spent by `client` on `model` of `provider`.
    pub fn add(&self, client: &Arc<str>, provider: &ProviderId, model: &Arc<str>, cost: f64) {
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        // Every part is an `Arc`: the key costs no allocation per request.
        *totals.entry((client.clone(), provider.clone(), model.clone())).or_default() += cost;
    }

    /// Every total, sorted by client, provider and model.
    pub fn snapshot(&self) -> Vec<(Arc<str>, String, Arc<str>, f64)> {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> =
            totals.iter().map(|((c, p, m), v)| (c.clone(), p.as_str().to_owned(), m.clone(), *v)).collect();
        all.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        all
    }

    /// The totals in Prometheus' text format, with their `HELP` and `TYPE`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# HELP {0} USD spent (from the price table), by client, provider and model.\n# TYPE {0} counter\n",
            crate::metrics::COST
        );
        for (client, provider, model, usd) in self.snapshot() {
            out.push_str(&format!(
                "{}{{client=\"{}\",provider=\"{}\",model=\"{}\"}} {usd}\n",
                crate::metrics::COST,
                escape(&client),
                escape(&provider),
                escape(&model)
            ));
        }
        out
    }
}

/// A label value as Prometheus' text format quotes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `model` without its trailing release date (`-2024-07-18`, `-20241022`,
/// `@20240620`) or `-latest`; `None` when it has neither.
fn undated(model: &str) -> Option<&str> {
    if let Some(base) = model.strip_suffix("-latest") {
        return Some(base);
    }
    let (base, date) = model.rsplit_once(['-', '@'])?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if date.len() == 8 && digits(date) {
        return Some(base);
    }
    // `-YYYY-MM-DD`: the last three dash-separated parts are the date.
    let mut parts = model.rsplitn(4, '-');
    let (day, month, year, base) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (year.len() == 4 && month.len() == 2 && day.len() == 2 && [year, month, day].into_iter().all(digits))
        .then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dated_model_takes_the_price_of_its_family() {
        assert_eq!(undated("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(undated("claude-3-5-sonnet-20241022"), Some("claude-3-5-sonnet"));
        assert_eq!(undated("claude-3-5-sonnet@20240620"), Some("claude-3-5-sonnet"));
        assert_eq!(undated("claude-3-7-sonnet-latest"), Some("claude-3-7-sonnet"));
        assert_eq!(undated("gpt-4o"), None);
        assert_eq!(undated("llama-3.3-70b"), None);
        assert_eq!(undated("gemini-2.0-flash-001"), None, "a version is not a date");
    }

    #[test]
    fn an_exact_price_wins_over_the_family() {
        let mut prices = PriceTable::default();
        prices.insert("openai/gpt-4o", Price::new(2.5, 10.0));
        prices.insert("openai/gpt-4o-2024-05-13", Price::new(5.0, 15.0));
        assert_eq!(prices.price("openai", "gpt-4o-2024-05-13").unwrap().input, 5.0);
        assert_eq!(prices.price("openai", "gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert!(prices.price("azure", "gpt-4o").is_none(), "prices are per provider");
    }

    #[test]
    fn cached_tokens_are_priced_apart_and_never_more_than_the_prompt() {
        let price = Price::new(1.0, 2.0).cached_input(0.5);
        assert_eq!(price.cost(Usage::new(1_000_000, 0).with_cached(1_000_000)), 0.5);
        assert_eq!(price.cost(Usage::new(10, 0).with_cached(50)), 10.0 * 0.5 / PER);
        assert_eq!(Price::new(1.0, 2.0).cost(Usage::new(1_000_000, 500_000).with_cached(1)), 2.0);
    }

    #[test]
    fn the_maximum_reserves_the_cap_else_the_models_else_the_default() {
        let price = Price::new(1.0, 10.0);
        assert_eq!(price.max_cost(1000, Some(100)), (1000.0 + 1000.0) / PER);
        assert_eq!(price.max_output(50).max_cost(0, None), 500.0 / PER);
        assert_eq!(price.max_cost(0, None), DEFAULT_MAX_OUTPUT as f64 * 10.0 / PER);
    }
}
