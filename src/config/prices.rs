//! Prices: the table shipped in `prices.toml` (built into the binary), with
//! config's `[prices."provider/model"]` tables over it.

use std::{collections::BTreeMap, sync::Arc};

use keyrelay_layers::price::{Price, PriceTable};
use serde::Deserialize;

use super::ConfigError;

/// The shipped table, as the repository holds it.
pub const SHIPPED: &str = include_str!("../../prices.toml");

/// One `[prices."provider/model"]` table: USD per million tokens.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens read from the provider's cache (default: `input`).
    pub cached_input: Option<f64>,
    /// The model's largest completion, reserved by budgets for a request
    /// without `max_tokens`.
    pub max_output: Option<u64>,
}

/// The shipped prices with `overrides` over them; a price in config
/// replaces the shipped one of the same model whole.
pub fn price_table(overrides: &BTreeMap<String, PriceConfig>) -> Result<Arc<PriceTable>, ConfigError> {
    let shipped: BTreeMap<String, PriceConfig> =
        toml::from_str(SHIPPED).map_err(|err| ConfigError(format!("the shipped prices.toml does not parse: {err}")))?;
    let mut table = PriceTable::default();
    for (origin, prices) in [("prices.toml", &shipped), ("config", overrides)] {
        for (model, config) in prices {
            let price = price(model, config).map_err(|m| ConfigError(format!("{origin}: {m}")))?;
            table.insert(model, price);
        }
    }
    Ok(Arc::new(table))
}

/// One validated price; the message names the model.
fn price(model: &str, config: &PriceConfig) -> Result<Price, String> {
    let key = format!("prices.\"{model}\"");
    match model.split_once('/') {
        Some((provider, name)) if !provider.is_empty() && !name.is_empty() => {}
        _ => return Err(format!("{key}: name the model as provider/model, e.g. \"openai/gpt-4o-mini\"")),
    }
    let fields =
        [("input", Some(config.input)), ("output", Some(config.output)), ("cached_input", config.cached_input)];
    for (field, value) in fields {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(format!("{key}.{field}: `{value}` is not a price (USD per million tokens, 0 or more)"));
        }
    }
    let mut price = Price::new(config.input, config.output);
    if let Some(cached) = config.cached_input {
        price = price.cached_input(cached);
    }
    match config.max_output {
        Some(0) => return Err(format!("{key}.max_output: must be greater than 0")),
        Some(tokens) => price = price.max_output(tokens),
        None => {}
    }
    Ok(price)
}

#[cfg(test)]
mod tests {
    use keyrelay_layers::usage::Usage;

    use super::*;

    #[test]
    fn the_shipped_table_parses_and_prices_every_model_in_and_out() {
        let shipped: BTreeMap<String, toml::Value> = toml::from_str(SHIPPED).unwrap();
        for (model, entry) in &shipped {
            let entry = entry.as_table().unwrap_or_else(|| panic!("{model} is not a table"));
            for field in ["input", "output"] {
                assert!(entry.get(field).is_some_and(toml::Value::is_float), "{model} lacks {field}");
            }
        }
        let table = price_table(&BTreeMap::new()).unwrap();
        assert_eq!(table.len(), shipped.len());
        for provider in ["openai", "anthropic", "gemini", "groq", "deepseek", "xai"] {
            assert!(table.iter().any(|(owner, _, _)| owner == provider), "no {provider} prices");
        }
        // A dated name takes its family's price.
        let mini = table.price("openai", "gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(
            (mini.input, mini.output, mini.cached_input, mini.max_output),
            (0.15, 0.60, Some(0.075), Some(16384))
        );
        assert!(table.price("anthropic", "claude-sonnet-4-5-20250929").is_some());
    }

    #[test]
    fn config_overrides_and_extends_the_shipped_table() {
        let overrides = BTreeMap::from([
            (
                "openai/gpt-4o-mini".to_owned(),
                PriceConfig { input: 1.0, output: 2.0, cached_input: None, max_output: None },
            ),
            (
                "openai/gpt-4.1".to_owned(),
                PriceConfig { input: 3.0, output: 4.0, cached_input: Some(0.5), max_output: Some(10) },
            ),
            ("local/llama".to_owned(), PriceConfig { input: 0.0, output: 0.0, cached_input: None, max_output: None }),
        ]);
        let table = price_table(&overrides).unwrap();
        let mini = table.price("openai", "gpt-4o-mini").unwrap();
        assert_eq!((mini.input, mini.cached_input, mini.max_output), (1.0, None, None), "replaced whole");
        assert_eq!(table.cost("openai", "gpt-4.1", Usage::new(1_000_000, 0).with_cached(1_000_000)), Some(0.5));
        assert_eq!(table.cost("local", "llama", Usage::new(5, 5)), Some(0.0), "free is a price");
    }

    #[test]
    fn config_toml_prices_load_with_dotted_names_and_unknown_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let load = |toml: &str| {
            std::fs::write(dir.path().join("config.toml"), toml).unwrap();
            let sources = super::super::Sources { working_dir: dir.path().to_path_buf(), ..Default::default() };
            super::super::load(sources)
        };
        let settings = load(
            "[prices.\"openai/gpt-4.1\"]\ninput = 1\noutput = 2.5\ncached_input = 0.25\nmax_output = 100\n\n\
             [prices.\"together/meta-llama/Llama-3.3-70B\"]\ninput = 0.88\noutput = 0.88\n",
        )
        .unwrap();
        let price = settings.prices.price("openai", "gpt-4.1").unwrap();
        assert_eq!(
            (price.input, price.output, price.cached_input, price.max_output),
            (1.0, 2.5, Some(0.25), Some(100))
        );
        assert!(settings.prices.price("together", "meta-llama/Llama-3.3-70B").is_some());
        assert!(settings.prices.price("openai", "gpt-4o").is_some(), "the shipped table stays under config");

        let unknown = load("[prices.\"openai/x\"]\ninput = 1\noutput = 1\ncache_write = 2\n").unwrap_err().to_string();
        assert!(unknown.contains("cache_write"), "{unknown}");
        let missing = load("[prices.\"openai/x\"]\ninput = 1\n").unwrap_err().to_string();
        assert!(missing.contains("output"), "{missing}");
        let negative = load("[prices.\"openai/x\"]\ninput = -0.5\noutput = 1\n").unwrap_err().to_string();
        assert!(negative.contains("prices.\"openai/x\".input"), "{negative}");
    }

    #[test]
    fn a_bad_price_is_an_error_that_names_the_model() {
        let bad = |input: f64, cached: Option<f64>, name: &str| {
            let config = PriceConfig { input, output: 1.0, cached_input: cached, max_output: None };
            price_table(&BTreeMap::from([(name.to_owned(), config)])).unwrap_err().to_string()
        };
        let message = bad(-1.0, None, "openai/gpt-4o");
        assert!(message.contains("prices.\"openai/gpt-4o\".input") && message.contains("-1"), "{message}");
        assert!(bad(f64::NAN, None, "openai/x").contains(".input"));
        assert!(bad(1.0, Some(f64::INFINITY), "openai/x").contains(".cached_input"));
        assert!(bad(1.0, None, "gpt-4o").contains("provider/model"));
    }
}
