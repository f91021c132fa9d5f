//! `ModelFilterLayer`: per-provider allow and deny lists of models.
//!
//! Patterns are globs (`*` any run, `?` one character) matched against the
//! whole bare model name, case-insensitively. A model on the whitelist is
//! always allowed; otherwise one matching the ignore list is blocked;
//! otherwise it is allowed. So a whitelist alone restricts nothing, and
//! `ignore = ["*"]` plus a whitelist exposes only the whitelist. A blocked
//! request fails with [`ModelBlocked`] (403) before any key is chosen.
//!
//! Reads [`RouteTarget`].
//!
//! ```
//! use keyrelay_layers::filter::ModelRules;
//!
//! let rules = ModelRules::new(&["*".into()], &["gpt-4o*".into()]);
//! assert!(rules.check("gpt-4o-mini").is_ok());
//! assert_eq!(rules.check("o1-preview"), Err("*"));
//! ```

use std::{fmt, sync::Arc};

use http::Request;
use tower::{Layer, filter::Predicate};
use wildmatch::WildMatch;

use crate::{
    BoxError,
    error::{MissingExtension, ModelBlocked},
    extensions::RouteTarget,
    pool::KeyPool,
};

/// Compiled allow and deny globs of one provider.
#[derive(Clone, Default)]
pub struct ModelRules {
    ignore: Vec<(String, WildMatch)>,
    whitelist: Vec<(String, WildMatch)>,
}

impl ModelRules {
    /// Compiles the globs; blank patterns are skipped.
    pub fn new(ignore: &[String], whitelist: &[String]) -> Self {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(|p| (p.to_owned(), WildMatch::new_case_insensitive(p)))
                .collect()
        };
        Self { ignore: compile(ignore), whitelist: compile(whitelist) }
    }

    /// `Err(pattern)` names the ignore pattern that blocks the model.
    pub fn check(&self, model: &str) -> Result<(), &str> {
        if self.whitelist.iter().any(|(_, glob)| glob.matches(model)) {
            return Ok(());
        }
        match self.ignore.iter().find(|(_, glob)| glob.matches(model)) {
            Some((pattern, _)) => Err(pattern),
            None => Ok(()),
        }
    }

    /// Whether there is no pattern at all (every model is allowed).
    pub fn is_empty(&self) -> bool {
        self.ignore.is_empty() && self.whitelist.is_empty()
    }
}

impl fmt::Debug for ModelRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |rules: &[(String, WildMatch)]| rules.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        f.debug_struct("ModelRules")
            .field("ignore", &names(&self.ignore))
            .field("whitelist", &names(&self.whitelist))
            .finish()
    }
}

/// Applies [`ModelFilter`].
#[derive(Clone, Debug)]
pub struct ModelFilterLayer {
    rules: ModelCheck,
}

impl ModelFilterLayer {
    /// Each provider's rules come from its [`Provider`](crate::provider::Provider).
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self { rules: ModelCheck { pool } }
    }
}

impl<S> Layer<S> for ModelFilterLayer {
    type Service = ModelFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::filter::Filter::new(inner, self.rules.clone())
    }
}

/// Refuses blocked models; see the [module docs](self). tower's `Filter`
/// does the plumbing; [`ModelCheck`] decides.
pub type ModelFilter<S> = tower::filter::Filter<S, ModelCheck>;

/// The predicate behind [`ModelFilter`]: the provider's rules over the
/// request's [`RouteTarget`].
#[derive(Clone, Debug)]
pub struct ModelCheck {
    pool: Arc<KeyPool>,
}

impl<B> Predicate<Request<B>> for ModelCheck {
    type Request = Request<B>;

    fn check(&mut self, req: Request<B>) -> Result<Request<B>, BoxError> {
        let target = req.extensions().get::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
        let Some(pool) = self.pool.provider(target.provider().as_str()) else {
            return Ok(req); // KeySelect answers for unknown providers
        };
        if target.endpoint() == crate::extensions::Endpoint::ResponseResource {
            // Reading or deleting a stored response names no model; the
            // request that made it was checked.
            return Ok(req);
        }
        match pool.provider().model_rules().check(target.model()) {
            Ok(()) => Ok(req),
            Err(pattern) => Err(ModelBlocked::new(target.provider().as_str(), target.model(), pattern).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ignore: &[&str], whitelist: &[&str]) -> ModelRules {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        ModelRules::new(&own(ignore), &own(whitelist))
    }

    #[test]
    fn whitelist_beats_ignore_and_alone_restricts_nothing() {
        let table: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &[], "anything", true),
            (&[], &["gpt-4o"], "o1", true),
            (&["*"], &[], "gpt-4o", false),
            (&["*"], &["gpt-4o*"], "gpt-4o-mini", true),
            (&["*"], &["gpt-4o*"], "o1-preview", false),
            (&["*-preview*"], &[], "o1-preview-2024", false),
            (&["*-preview*"], &[], "o1", true),
            (&["gpt-?"], &[], "gpt-4", false),
            (&["gpt-?"], &[], "gpt-4o", true),
            (&["GPT-4O"], &[], "gpt-4o", false),
            (&["meta-llama/*"], &[], "meta-llama/llama-3-70b", false),
            (&[" gpt-4o ", ""], &[], "gpt-4o", false),
        ];
        for (ignore, whitelist, model, allowed) in table {
            assert_eq!(rules(ignore, whitelist).check(model).is_ok(), *allowed, "{ignore:?} {whitelist:?} {model}");
        }
    }

    #[test]
    fn the_blocking_pattern_is_named() {
        assert_eq!(rules(&["a*", "*b"], &[]).check("xb"), Err("*b"));
    }
}
