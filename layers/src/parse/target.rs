//! Where a request goes: provider, model and stream flag, from its body
//! (or, for Gemini, its path).

use std::borrow::Cow;

use http::request::Parts;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    BoxError,
    error::{InvalidBody, InvalidModel, MissingModel, NoDefaultProvider, RouteNotFound, UnknownProvider},
    extensions::{Endpoint, Inbound, RequiredKey, RouteTarget, gemini_path, percent_decode, response_resource},
    pool::{EncryptedScanner, KeyPool, ResponseOwner},
    provider::ProviderId,
};

use super::Aliases;

/// Where a dialect route's bare model goes: a model with no configured
/// `provider/` prefix (Claude Code sends `claude-sonnet-4-5`, Codex
/// `gpt-5-codex`, Gemini CLI `gemini-2.5-pro`) is the route's default
/// provider's. Chat completions have no default: their models always name
/// a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDefaults {
    anthropic: ProviderId,
    responses: ProviderId,
    gemini: ProviderId,
    /// Bare model names that one provider's keys are bound to, on every
    /// route (`LLM_KEYS` binds each key to one model).
    models: std::collections::BTreeMap<String, ProviderId>,
    /// Model aliases, on every route; they win over the above.
    aliases: Aliases,
}

impl Default for RouteDefaults {
    /// `anthropic` for Messages, `openai` for Responses, `gemini` for Gemini.
    fn default() -> Self {
        Self {
            anthropic: ProviderId::new("anthropic"),
            responses: ProviderId::new("openai"),
            gemini: ProviderId::new("gemini"),
            models: Default::default(),
            aliases: Aliases::default(),
        }
    }
}

impl RouteDefaults {
    /// Sends `inbound`'s bare models to `provider` (no effect for OpenAI's
    /// chat completions, whose models always name their provider).
    pub fn with(mut self, inbound: Inbound, provider: &str) -> Self {
        match inbound {
            Inbound::Anthropic => self.anthropic = ProviderId::new(provider),
            Inbound::Responses => self.responses = ProviderId::new(provider),
            Inbound::Gemini => self.gemini = ProviderId::new(provider),
            _ => {}
        }
        self
    }

    /// Sends the bare model `model` to `provider` on every route (chat
    /// completions included): the provider whose keys are bound to it. The
    /// first binding of a model wins.
    pub fn with_model(mut self, model: &str, provider: &str) -> Self {
        self.models.entry(model.to_owned()).or_insert_with(|| ProviderId::new(provider));
        self
    }

    /// Sends each alias of `aliases` to its targets, on every route; an
    /// alias wins over every other reading of the model.
    pub fn with_aliases(mut self, aliases: Aliases) -> Self {
        self.aliases = aliases;
        self
    }

    /// The model aliases.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// The default provider of `inbound`'s route, and the config key that
    /// sets it.
    fn of(&self, inbound: Inbound) -> Option<(&ProviderId, &'static str)> {
        match inbound {
            Inbound::Anthropic => Some((&self.anthropic, "routes.messages_default_provider")),
            Inbound::Responses => Some((&self.responses, "routes.responses_default_provider")),
            Inbound::Gemini => Some((&self.gemini, "routes.gemini_default_provider")),
            _ => None,
        }
    }
}

/// The fields the proxy needs; serde still checks the whole document.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    /// `Some` whenever the key is there, `null` included: the usage
    /// request must then replace it, not add a second `stream_options`.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    /// The Responses API's follow-up: it must reach the key that made it.
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Session signals (see `session.rs`), left unparsed until read.
    #[serde(borrow, default)]
    prompt_cache_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    /// The completion's cap under its dialects' names, for the token
    /// estimate; left unparsed, so that a strange value is the
    /// provider's to refuse.
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
}

/// The tokens a request may use: its prompt at about four bytes a token,
/// plus its completion cap when it names one.
fn estimate_tokens(body: &[u8], caps: [Option<&RawValue>; 3]) -> u64 {
    (body.len() as u64 / 4).saturating_add(completion_cap(caps).unwrap_or(0))
}

/// The completion cap a request names, under any of its dialects' names.
fn completion_cap(caps: [Option<&RawValue>; 3]) -> Option<u64> {
    caps.into_iter().flatten().filter_map(|raw| raw.get().parse::<u64>().ok()).max()
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(value).map(Some)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Finds provider, model and stream flag in a JSON request body to an
/// endpoint whose body names the model (every endpoint but Gemini's and a
/// stored response's), with the default [`RouteDefaults`].
pub fn route_target(body: &[u8], endpoint: Endpoint, pool: &KeyPool) -> Result<RouteTarget, BoxError> {
    body_target(body, endpoint, pool, &RouteDefaults::default())
}

/// Finds where any proxied request goes: from its body, or from its path
/// (Gemini's model, a stored response's id); and the session it belongs
/// to, from its headers or its body.
pub fn route_target_with(
    parts: &Parts,
    body: &[u8],
    endpoint: Endpoint,
    pool: &KeyPool,
    defaults: &RouteDefaults,
) -> Result<RouteTarget, BoxError> {
    let target = target_of(parts, body, endpoint, pool, defaults)?;
    // A session header outranks the body's signal.
    Ok(match super::session::from_headers(&parts.headers) {
        Some(session) => target.with_session(session),
        None => target,
    })
}

fn target_of(
    parts: &Parts,
    body: &[u8],
    endpoint: Endpoint,
    pool: &KeyPool,
    defaults: &RouteDefaults,
) -> Result<RouteTarget, BoxError> {
    match endpoint {
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent | Endpoint::CountTokens => {
            // The body must still be a JSON object; its model is the path's.
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(InvalidBody::new)?;
            if !body.trim_ascii_start().starts_with(b"{") {
                return Err(InvalidBody::new("expected a JSON object").into());
            }
            let raw = gemini_path(parts.uri.path()).map(|(model, _)| model).unwrap_or_default();
            let model = percent_decode(raw).ok_or_else(|| InvalidModel::new(raw))?;
            let stream = endpoint == Endpoint::StreamGenerateContent;
            let tokens = estimate_tokens(body, [None; 3]);
            if let Some((first, rest)) = defaults.aliases.route(pool, &model) {
                let target = RouteTarget::new(first.provider, &first.model, endpoint, stream).with_fallbacks(rest);
                return Ok(target.with_estimated_tokens(tokens).with_alias(&model));
            }
            let (provider, model) = resolve(pool, &model, Inbound::Gemini, defaults)?;
            Ok(RouteTarget::new(provider, model, endpoint, stream).with_estimated_tokens(tokens))
        }
        Endpoint::ResponseResource => stored_response_target(parts, pool, defaults),
        _ => body_target(body, endpoint, pool, defaults),
    }
}

fn body_target(
    body: &[u8],
    endpoint: Endpoint,
    pool: &KeyPool,
    defaults: &RouteDefaults,
) -> Result<RouteTarget, BoxError> {
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(InvalidBody::new)?;
    let raw = probe.model.ok_or_else(MissingModel::new)?;
    let model: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| InvalidModel::not_a_string())?;
    let alias = defaults.aliases.route(pool, &model);
    let (provider, upstream_model) = match &alias {
        Some((first, _)) => (first.provider.clone(), &*first.model),
        None => resolve(pool, &model, endpoint.inbound(), defaults)?,
    };
    // The raw value borrows from `body`, so its address gives its position:
    // the upstream can swap the model token without re-serialising the body.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let span = start..start + raw.get().len();
    // Read here once, so that the upstream need not parse the body again.
    let include_usage = probe
        .stream_options
        .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
        .is_some_and(|options| options.include_usage);
    let caps = [probe.max_tokens, probe.max_completion_tokens, probe.max_output_tokens];
    let target = RouteTarget::new(provider, upstream_model, endpoint, probe.stream.unwrap_or(false))
        .with_model_span(span)
        .with_stream_options(probe.stream_options.is_some(), include_usage)
        .with_estimated_tokens(estimate_tokens(body, caps))
        .with_max_output(completion_cap(caps));
    let target = match super::session::from_body(probe.prompt_cache_key, probe.metadata, endpoint) {
        Some(session) => target.with_session(session),
        None => target,
    };
    let target = match alias {
        Some((_, rest)) => target.with_fallbacks(rest).with_alias(&model),
        None => target,
    };
    if !matches!(endpoint, Endpoint::Responses | Endpoint::ResponsesInputTokens) {
        return Ok(target);
    }
    if let Some(id) = probe.previous_response_id {
        return continue_response(target, &id, pool);
    }
    // Encrypted reasoning from an earlier answer (`store: false` clients
    // such as Codex): only the key that made it can read it.
    let now = pool.clock().now_unix_ms();
    let owned = EncryptedScanner::digests(body).into_iter().find_map(|d| pool.responses().owner(&d, now));
    match owned {
        Some(owner) => bind(target, owner, "encrypted reasoning of a response"),
        None => Ok(target),
    }
}

/// The provider and upstream model a client's model names: `provider/model`
/// split at the first `/` when the provider is configured; on a dialect
/// route, a bare model is its default provider's (the whole string, slashes
/// and all).
fn resolve<'m>(
    pool: &KeyPool,
    model: &'m str,
    inbound: Inbound,
    defaults: &RouteDefaults,
) -> Result<(ProviderId, &'m str), BoxError> {
    let split = model.split_once('/').filter(|(p, rest)| !p.is_empty() && !rest.is_empty());
    if let Some((prefix, rest)) = split
        && let Some(provider) = pool.provider(prefix)
    {
        return Ok((provider.provider().id().clone(), rest));
    }
    if let Some(provider) = defaults.models.get(model).and_then(|p| pool.provider(p.as_str())) {
        return Ok((provider.provider().id().clone(), model));
    }
    let Some((default, setting)) = defaults.of(inbound) else {
        return Err(match split {
            Some((prefix, _)) => {
                UnknownProvider::new(prefix, pool.providers().map(|p| p.provider().id().as_str())).into()
            }
            None => InvalidModel::new(model).into(),
        });
    };
    if model.is_empty() {
        return Err(InvalidModel::new(model).into());
    }
    match pool.provider(default.as_str()) {
        Some(provider) => Ok((provider.provider().id().clone(), model)),
        None => Err(NoDefaultProvider::new(model, default.as_str(), setting).into()),
    }
}

/// A Responses API request that continues `response_id`: it must use the
/// key that made it, when the proxy knows that key.
fn continue_response(target: RouteTarget, response_id: &str, pool: &KeyPool) -> Result<RouteTarget, BoxError> {
    let Some(owner) = pool.responses().owner(response_id, pool.clock().now_unix_ms()) else {
        // Not made through this proxy (or forgotten): like a new request;
        // the provider says whether it knows the id.
        return Ok(target);
    };
    bind(target, owner.of_response(Some(response_id.into())), response_id)
}

/// Binds `target` to the key of `owner`; `what` names what it continues
/// when the owner does not name its response.
fn bind(target: RouteTarget, owner: ResponseOwner, what: &str) -> Result<RouteTarget, BoxError> {
    let response = owner.response_id.as_deref().unwrap_or(what);
    if owner.provider != *target.provider() {
        let why = format!("provider `{}`, not `{}`", owner.provider, target.provider());
        return Err(crate::error::ResponseKeyUnavailable::new(response, why).into());
    }
    Ok(target.with_required_key(RequiredKey::new(owner.key, response)))
}

/// `GET`/`DELETE /v1/responses/{id}`, `/cancel`, `/input_items`: to the key
/// that made the response; an id the proxy does not know goes to the
/// Responses route's default provider, like a new request.
fn stored_response_target(parts: &Parts, pool: &KeyPool, defaults: &RouteDefaults) -> Result<RouteTarget, BoxError> {
    let path = parts.uri.path();
    let bare = path.strip_prefix("/v1").unwrap_or(path);
    let (raw_id, _) = response_resource(bare).ok_or_else(|| RouteNotFound::new(path))?;
    let id = percent_decode(raw_id).ok_or_else(|| RouteNotFound::new(path))?;
    let endpoint = Endpoint::ResponseResource;
    if let Some(owner) = pool.responses().owner(&id, pool.clock().now_unix_ms()) {
        let target = RouteTarget::new(owner.provider.clone(), &owner.model, endpoint, false);
        return Ok(target.with_required_key(RequiredKey::new(owner.key, &id)));
    }
    let (default, setting) = defaults.of(Inbound::Responses).expect("the Responses route has a default");
    let provider =
        pool.provider(default.as_str()).ok_or_else(|| NoDefaultProvider::new(&id, default.as_str(), setting))?;
    Ok(RouteTarget::new(provider.provider().id().clone(), "", endpoint, false))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{error::ErrorReply, pool::Secret, provider::Provider};

    fn pool() -> Arc<KeyPool> {
        let p = |id| Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap();
        KeyPool::builder()
            .provider(p("openai"), Default::default(), vec![Secret::new("k")])
            .provider(p("openrouter"), Default::default(), vec![])
            .build()
            .unwrap()
    }

    fn parse(body: &str) -> Result<RouteTarget, u16> {
        route_target(body.as_bytes(), Endpoint::ChatCompletions, &pool())
            .map_err(|err| ErrorReply::from_error(&*err).status.as_u16())
    }

    #[test]
    fn splits_model_at_the_first_slash() {
        let t = parse(r#"{"model":"openrouter/meta-llama/llama-3-70b"}"#).unwrap();
        assert_eq!((t.provider().as_str(), t.model()), ("openrouter", "meta-llama/llama-3-70b"));
        assert!(!t.stream());
    }

    #[test]
    fn reads_stream_and_records_the_model_token_span() {
        let body = r#"{ "stream" : true, "model" :  "openai/gpt-4o" , "messages": [] }"#;
        let t = parse(body).unwrap();
        assert!(t.stream());
        assert_eq!(&body[t.model_span().unwrap()], r#""openai/gpt-4o""#);
    }

    #[test]
    fn reads_stream_options_once_for_the_layers_inside() {
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(t.has_stream_options() && t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":{"other":1}}"#).unwrap();
        assert!(t.has_stream_options() && !t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true}"#).unwrap();
        assert!(!t.has_stream_options() && !t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":null}"#).unwrap();
        assert!(t.has_stream_options() && !t.wants_usage(), "a null is there, to be replaced");
    }

    #[test]
    fn escaped_model_strings_are_understood() {
        let body = r#"{"model":"openai\/gpt-4o"}"#;
        let t = parse(body).unwrap();
        assert_eq!(t.model(), "gpt-4o");
        assert_eq!(&body[t.model_span().unwrap()], r#""openai\/gpt-4o""#);
    }

    #[test]
    fn bad_input_is_a_400_never_a_500() {
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"messages":[]}"#,
            r#"{"model":42}"#,
            r#"{"model":null}"#,
            r#"{"model":"gpt-4o"}"#,
            r#"{"model":"/gpt-4o"}"#,
            r#"{"model":"openai/"}"#,
            r#"{"model":"nope/gpt-4o"}"#,
            r#"{"model":"openai/gpt-4o","stream":"yes"}"#,
            r#"{"model":"openai/gpt-4o","model":"openai/x"}"#,
            r#"{"model":"openai/gpt-4o""#,
        ] {
            assert_eq!(parse(body).unwrap_err(), 400, "{body}");
        }
    }

    #[test]
    fn unknown_provider_names_the_known_ones() {
        let err = route_target(br#"{"model":"nope/x"}"#, Endpoint::ChatCompletions, &pool()).unwrap_err();
        let message = ErrorReply::from_error(&*err).message;
        assert!(message.contains("`nope`") && message.contains("openai, openrouter"), "{message}");
    }
}

#[cfg(test)]
mod dialect_routes {
    use std::time::Duration;

    use super::*;
    use crate::{
        error::ErrorReply,
        pool::{ResponseOwner, Secret},
        provider::{Dialect, Provider},
    };

    fn pool() -> std::sync::Arc<KeyPool> {
        KeyPool::builder()
            .provider(
                Provider::openai_compatible("openai", "http://127.0.0.1:9/v1").unwrap(),
                Default::default(),
                vec![Secret::new("k")],
            )
            .provider(
                Provider::openai_compatible("openrouter", "http://127.0.0.1:9/v1").unwrap(),
                Default::default(),
                vec![],
            )
            .provider(
                Provider::new("anthropic", "http://127.0.0.1:9", Dialect::Anthropic).unwrap(),
                Default::default(),
                vec![],
            )
            .remembered_responses(10, Duration::from_secs(60))
            .build()
            .unwrap()
    }

    fn target(method: &str, path: &str, body: &str, defaults: &RouteDefaults) -> Result<RouteTarget, (u16, String)> {
        let req = http::Request::builder().method(method).uri(path).body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let endpoint = Endpoint::from_path(path.split('?').next().unwrap()).expect("a proxied path");
        route_target_with(&parts, body.as_bytes(), endpoint, &pool(), defaults).map_err(|err| {
            let reply = ErrorReply::from_error(&*err);
            (reply.status.as_u16(), reply.message)
        })
    }

    #[test]
    fn bare_models_go_to_the_routes_default_provider() {
        let defaults = RouteDefaults::default();
        let t = target("POST", "/v1/messages", r#"{"model": "claude-sonnet-4-5-20250929"}"#, &defaults).unwrap();
        assert_eq!((t.provider().as_str(), t.model()), ("anthropic", "claude-sonnet-4-5-20250929"));
        // A configured prefix wins; an unknown one is part of the bare model.
        let t = target("POST", "/v1/messages", r#"{"model": "openrouter/anthropic/claude-sonnet-4.5"}"#, &defaults)
            .unwrap();
        assert_eq!((t.provider().as_str(), t.model()), ("openrouter", "anthropic/claude-sonnet-4.5"));
        let t =
            target("POST", "/v1/responses", r#"{"model": "meta-llama/llama-3", "stream": true}"#, &defaults).unwrap();
        assert_eq!((t.provider().as_str(), t.model(), t.stream()), ("openai", "meta-llama/llama-3", true));
        // Chat completions keep requiring a provider.
        assert_eq!(target("POST", "/v1/chat/completions", r#"{"model": "gpt-4o"}"#, &defaults).unwrap_err().0, 400);
        // A default that is not configured is named, with its setting.
        let (status, message) =
            target("POST", "/v1beta/models/gemini-2.5-pro:generateContent", "{}", &defaults).unwrap_err();
        assert_eq!(status, 400);
        assert!(message.contains("routes.gemini_default_provider") && message.contains("`gemini`"), "{message}");
        let elsewhere = RouteDefaults::default().with(Inbound::Gemini, "openrouter");
        let t = target("POST", "/v1beta/models/gemini-2.5-pro:generateContent", "{}", &elsewhere).unwrap();
        assert_eq!((t.provider().as_str(), t.model()), ("openrouter", "gemini-2.5-pro"));
    }

    #[test]
    fn an_alias_routes_to_its_first_target_on_every_route_and_carries_the_rest() {
        use crate::parse::{AliasTarget, Aliases};
        let aliases = Aliases::new()
            .with("fast", [AliasTarget::new("openai", "gpt-4o"), AliasTarget::new("openrouter", "openai/gpt-4o")]);
        let defaults = RouteDefaults::default().with_aliases(aliases);
        let body = r#"{"model": "fast", "stream": true}"#;
        for path in ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"] {
            let t = target("POST", path, body, &defaults).unwrap();
            assert_eq!((t.provider().as_str(), t.model(), t.stream()), ("openai", "gpt-4o", true), "{path}");
            assert_eq!(&body[t.model_span().unwrap()], r#""fast""#, "{path}: the upstream rewrites the token");
            let rest = t.fallbacks().unwrap();
            assert_eq!(&rest[..], [AliasTarget::new("openrouter", "openai/gpt-4o")], "{path}");
            let next = t.retarget(&rest[0]);
            assert_eq!((next.model(), next.model_span(), next.stream()), ("openai/gpt-4o", t.model_span(), true));
        }
        let t = target("POST", "/v1beta/models/fast:streamGenerateContent", "{}", &defaults).unwrap();
        assert_eq!((t.provider().as_str(), t.model(), t.stream()), ("openai", "gpt-4o", true));
        assert_eq!(t.fallbacks().map(|rest| rest.len()), Some(1));
        // Not an alias: as before, with nowhere else to go.
        let t = target("POST", "/v1/chat/completions", r#"{"model": "openai/fast"}"#, &defaults).unwrap();
        assert_eq!((t.model(), t.fallbacks().is_none()), ("fast", true));
    }

    #[test]
    fn gemini_reads_the_model_and_the_stream_from_the_path() {
        let defaults = RouteDefaults::default();
        let path = "/v1beta/models/openrouter%2Fgoogle%2Fgemini-2.5-pro:streamGenerateContent?alt=sse";
        let t = target("POST", path, r#"{"contents": []}"#, &defaults).unwrap();
        assert_eq!((t.provider().as_str(), t.model(), t.stream()), ("openrouter", "google/gemini-2.5-pro", true));
        let t = target("POST", "/v1beta/models/openai/gpt-4o:countTokens", "{}", &defaults).unwrap();
        assert_eq!((t.endpoint(), t.model_span()), (Endpoint::CountTokens, None));
        for body in ["", "[1]", "not json"] {
            assert_eq!(
                target("POST", "/v1beta/models/openai/gpt-4o:generateContent", body, &defaults).unwrap_err().0,
                400
            );
        }
        assert_eq!(target("POST", "/v1beta/models/openai%ZZ:generateContent", "{}", &defaults).unwrap_err().0, 400);
    }

    #[test]
    fn follow_ups_and_stored_responses_are_bound_to_the_key_that_made_them() {
        let pool = pool();
        let openai = pool.provider("openai").unwrap();
        let key = openai.keys()[0].id().clone();
        let now = pool.clock().now_unix_ms();
        pool.responses().remember("resp_abc", ResponseOwner::new(ProviderId::new("openai"), key.clone(), "gpt-5", now));
        let defaults = RouteDefaults::default();
        let parse = |method: &str, path: &str, body: &str| {
            let req = http::Request::builder().method(method).uri(path).body(()).unwrap();
            let (parts, ()) = req.into_parts();
            let endpoint = Endpoint::from_path(path).unwrap();
            route_target_with(&parts, body.as_bytes(), endpoint, &pool, &defaults)
        };
        let t = parse("POST", "/v1/responses", r#"{"model": "gpt-5", "previous_response_id": "resp_abc"}"#).unwrap();
        assert_eq!(t.required_key().map(|k| (&k.key, &*k.response_id)), Some((&key, "resp_abc")));
        let t = parse("POST", "/v1/responses", r#"{"model": "gpt-5", "previous_response_id": "resp_other"}"#).unwrap();
        assert!(t.required_key().is_none(), "unknown ids go where new requests go");
        let t = parse("DELETE", "/v1/responses/resp_abc", "").unwrap();
        assert_eq!((t.provider().as_str(), t.model(), t.endpoint()), ("openai", "gpt-5", Endpoint::ResponseResource));
        assert!(t.required_key().is_some());
        let t = parse("GET", "/v1/responses/resp_unknown/input_items", "").unwrap();
        assert_eq!((t.provider().as_str(), t.required_key()), ("openai", None));
        // A follow-up sent to another provider cannot reach the response.
        let err = parse("POST", "/v1/responses", r#"{"model": "openrouter/x", "previous_response_id": "resp_abc"}"#);
        let reply = ErrorReply::from_error(&*err.unwrap_err());
        assert_eq!((reply.status.as_u16(), reply.code), (409, "response_key_unavailable"));
        assert!(reply.message.contains("resp_abc"), "{}", reply.message);
    }
}
