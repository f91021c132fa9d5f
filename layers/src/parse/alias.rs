//! Model aliases: one name a client sends, several places that serve it.
//!
//! `[models."gpt-4o"] targets = ["openai/gpt-4o", "openrouter/openai/gpt-4o"]`
//! becomes an [`Aliases`] entry; a request whose `model` is `gpt-4o` gets a
//! [`RouteTarget`](crate::extensions::RouteTarget) for the first target
//! the operator's model rules allow, carrying the later allowed ones as its
//! [`fallbacks`](crate::extensions::RouteTarget::fallbacks), which
//! [`crate::fallback`] tries when a pool cannot serve.
//!
//! ```
//! use keyrelay_layers::parse::{AliasTarget, Aliases};
//!
//! let aliases = Aliases::new()
//!     .with("gpt-4o", [AliasTarget::new("openai", "gpt-4o"), AliasTarget::new("openrouter", "openai/gpt-4o")]);
//! let targets = aliases.get("gpt-4o").unwrap();
//! assert_eq!((targets[1].provider.as_str(), &*targets[1].model), ("openrouter", "openai/gpt-4o"));
//! assert!(aliases.get("openai/gpt-4o").is_none());
//! ```

use std::{collections::BTreeMap, sync::Arc};

use crate::{pool::KeyPool, provider::ProviderId};

/// One place an alias sends its requests: a provider and the model name
/// that provider knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AliasTarget {
    /// The provider whose pool serves it.
    pub provider: ProviderId,
    /// The upstream model, without the `provider/` prefix.
    pub model: Arc<str>,
}

impl AliasTarget {
    /// `model` of `provider` (no prefix: `openrouter`'s `openai/gpt-4o`).
    pub fn new(provider: &str, model: &str) -> Self {
        Self { provider: ProviderId::new(provider), model: model.into() }
    }

    /// Whether `pool` has the provider and its allow and deny rules let
    /// the model through.
    pub fn allowed_by(&self, pool: &KeyPool) -> bool {
        pool.provider(self.provider.as_str()).is_some_and(|p| p.provider().model_rules().check(&self.model).is_ok())
    }
}

/// Every alias, by the exact name clients send; each with its targets in
/// the order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aliases(BTreeMap<String, Arc<[AliasTarget]>>);

impl Aliases {
    /// No alias.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `alias`, tried in the order of `targets`; an
    /// empty list adds nothing.
    pub fn with(mut self, alias: &str, targets: impl IntoIterator<Item = AliasTarget>) -> Self {
        let targets: Arc<[AliasTarget]> = targets.into_iter().collect();
        if !targets.is_empty() {
            self.0.insert(alias.to_owned(), targets);
        }
        self
    }

    /// The targets of `alias`, in order.
    pub fn get(&self, alias: &str) -> Option<&[AliasTarget]> {
        self.0.get(alias).map(|targets| &targets[..])
    }

    /// Each alias with its targets, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[AliasTarget])> {
        self.0.iter().map(|(alias, targets)| (alias.as_str(), &targets[..]))
    }

    /// Whether there is no alias.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where a request for `model` goes when it is an alias: the first
    /// target the operator's rules allow, and the allowed ones after it.
    /// When every target is blocked the first stays, so that ModelFilter
    /// refuses it with the rule that blocks it.
    pub(crate) fn route(&self, pool: &KeyPool, model: &str) -> Option<(AliasTarget, Arc<[AliasTarget]>)> {
        let targets = self.0.get(model)?;
        let mut allowed = targets.iter().filter(|t| t.allowed_by(pool));
        let Some(first) = allowed.next() else {
            return Some((targets[0].clone(), Arc::new([])));
        };
        Some((first.clone(), allowed.cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{filter::ModelRules, pool::Secret, provider::Provider};

    fn pool() -> Arc<KeyPool> {
        let p = |id| Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap();
        let blocked = p("groq").with_model_rules(ModelRules::new(&["*".into()], &[]));
        KeyPool::builder()
            .provider(p("openai"), Default::default(), vec![Secret::new("k")])
            .provider(p("openrouter"), Default::default(), vec![])
            .provider(blocked, Default::default(), vec![])
            .build()
            .unwrap()
    }

    #[test]
    fn the_first_allowed_target_serves_and_the_allowed_rest_fall_back() {
        let aliases = Aliases::new().with(
            "fast",
            [
                AliasTarget::new("groq", "llama"),
                AliasTarget::new("openai", "gpt-4o"),
                AliasTarget::new("openrouter", "x/y"),
            ],
        );
        let (first, rest) = aliases.route(&pool(), "fast").unwrap();
        assert_eq!(first, AliasTarget::new("openai", "gpt-4o"));
        assert_eq!(&rest[..], [AliasTarget::new("openrouter", "x/y")]);
        assert!(aliases.route(&pool(), "FAST").is_none(), "names match exactly");
    }

    #[test]
    fn an_alias_whose_targets_are_all_blocked_keeps_its_first_for_the_filter_to_refuse() {
        let aliases = Aliases::new().with("blocked", [AliasTarget::new("groq", "a"), AliasTarget::new("nope", "b")]);
        let (first, rest) = aliases.route(&pool(), "blocked").unwrap();
        assert_eq!((first, rest.len()), (AliasTarget::new("groq", "a"), 0));
    }

    #[test]
    fn empty_target_lists_are_not_aliases() {
        assert!(Aliases::new().with("none", []).is_empty());
    }
}
