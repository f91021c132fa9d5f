//! The small handlers beside the proxy: health, models, providers, keys.
//! They answer JSON and never show a secret.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError, ProxyBody,
    body::full,
    error::{ErrorReply, MissingExtension, UnknownKey},
    parse::Aliases,
    pool::{KeyPool, KeyState},
    respond::reply_response,
    upstream::ModelCatalog,
};
use serde::Serialize;
use serde_json::json;

use crate::routes::{KeyAction, KeyChange, RequestedModel};

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    let body = serde_json::to_vec(value).expect("status documents always serialize");
    let mut res = Response::new(full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub fn health() -> Response<ProxyBody> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /v1/models`: OpenAI's model list, ids `provider/model`, then the
/// model aliases (`owned_by: "keyrelay"`) that the operator's rules let
/// reach at least one target.
pub async fn models(
    pool: Arc<KeyPool>,
    catalog: Arc<ModelCatalog>,
    aliases: Arc<Aliases>,
) -> Result<Response<ProxyBody>, Infallible> {
    let listed = catalog.list(&pool).await;
    let mut data: Vec<serde_json::Value> = listed.iter().map(|m| json!(m)).collect();
    data.extend(alias_models(&pool, &aliases).map(alias_model));
    Ok(json(StatusCode::OK, &json!({ "object": "list", "data": data })))
}

/// The aliases a client may use: those with a target the rules allow.
fn alias_models<'a>(pool: &'a KeyPool, aliases: &'a Aliases) -> impl Iterator<Item = &'a str> {
    aliases.iter().filter(|(_, targets)| targets.iter().any(|t| t.allowed_by(pool))).map(|(alias, _)| alias)
}

/// An alias as OpenAI's model object.
fn alias_model(alias: &str) -> serde_json::Value {
    json!({ "id": alias, "object": "model", "created": 0, "owned_by": "keyrelay" })
}

/// `GET /v1/models/{id}`: OpenAI's model object, from the same list as
/// `GET /v1/models` (so the operator's allow and deny lists apply), or 404
/// `model_not_found`.
pub async fn model(
    pool: Arc<KeyPool>,
    catalog: Arc<ModelCatalog>,
    aliases: Arc<Aliases>,
    requested: Option<RequestedModel>,
) -> Result<Response<ProxyBody>, BoxError> {
    let id = match requested {
        Some(RequestedModel::Id(id)) => id,
        Some(RequestedModel::Malformed(raw)) => return Ok(model_not_found(&raw)),
        None => return Err(MissingExtension::new("RequestedModel").into()),
    };
    if let Some(alias) = alias_models(&pool, &aliases).find(|&alias| alias == id) {
        return Ok(json(StatusCode::OK, &alias_model(alias)));
    }
    // The catalog answers whole lists (cached for its TTL); looking the id
    // up in one is what makes this route agree with `GET /v1/models`.
    let found = catalog.list(&pool).await.into_iter().find(|m| m.id == id);
    Ok(match found {
        Some(model) => json(StatusCode::OK, &model),
        None => model_not_found(&id),
    })
}

/// Ids longer than this are cut in the 404's message (as other errors
/// echo what the client sent).
const ECHO_LIMIT: usize = 120;

fn model_not_found(id: &str) -> Response<ProxyBody> {
    let shown = match id.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &id[..cut]),
        None => id.to_owned(),
    };
    let reply = ErrorReply::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!(
            "the model `{shown}` does not exist or is not served here; GET /v1/models lists the models available, as `provider/model`"
        ),
    );
    reply_response(reply).map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

/// `GET /v1/providers`: configured providers, their keys counted by state.
pub fn providers(pool: &KeyPool, configured: &[String]) -> Response<ProxyBody> {
    let statuses = pool.key_statuses();
    let data: Vec<_> = pool
        .providers()
        .filter(|p| !p.keys().is_empty() || configured.iter().any(|c| c == p.provider().id().as_str()))
        .map(|p| {
            let provider = p.provider();
            let states: Vec<KeyState> =
                statuses.iter().filter(|k| k.provider == provider.id().as_str()).map(|k| k.state).collect();
            json!({
                "id": provider.id().as_str(),
                "api_base": provider.api_base().to_string(),
                "dialect": provider.dialect().as_str(),
                "selection": p.selection().as_str(),
                "keys": key_counts(&states),
                "in_flight": p.keys().iter().map(|k| u64::from(k.in_flight())).sum::<u64>(),
                "models": provider.models(),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

/// `POST /v1/keys/{id}/{disable|enable|reset}`: answers the key's new status.
/// `change` is what the router read from the path.
pub fn key_action(pool: &KeyPool, change: Option<&KeyChange>) -> Result<Response<ProxyBody>, BoxError> {
    let Some(KeyChange { id, action }) = change else {
        return Err(MissingExtension::new("KeyChange").into());
    };
    let found = match action {
        KeyAction::Disable => pool.set_disabled(id, true),
        KeyAction::Enable => pool.set_disabled(id, false),
        KeyAction::Reset => pool.reset(id),
    };
    match pool.key_status(id).filter(|_| found) {
        Some(status) => {
            tracing::info!(key = id.as_str(), action = action.as_str(), "key changed by an operator");
            Ok(json(StatusCode::OK, &status))
        }
        None => Err(UnknownKey::new(id).into()),
    }
}

/// `GET /v1/keys`: every key by id, with its state and counters. With
/// Redis (`counters`), the counters of today are the pool's, summed over the
/// replicas (`"counters": "pool"`); without it, or when Redis does not
/// answer in time, this replica's own (`"counters": "replica"`).
pub async fn keys(pool: &KeyPool, counters: Option<&crate::shared::counters::PoolCounters>) -> Response<ProxyBody> {
    let pooled = match counters {
        Some(counters) => counters.key_statuses(pool).await,
        None => None,
    };
    let (data, scope) = match pooled {
        Some(statuses) => (json!(statuses), "pool"),
        None => (json!(pool.key_statuses()), "replica"),
    };
    json(StatusCode::OK, &json!({ "object": "list", "data": data, "counters": scope }))
}

fn key_counts(states: &[KeyState]) -> serde_json::Value {
    let count = |state: KeyState| states.iter().filter(|&&s| s == state).count();
    json!({
        "total": states.len(),
        "ok": count(KeyState::Ok),
        "cooling": count(KeyState::Cooling),
        "exhausted": count(KeyState::Exhausted),
        "invalid": count(KeyState::Invalid),
        "disabled": count(KeyState::Disabled),
    })
}

/// `GET /metrics`: Prometheus text. Key gauges are refreshed from the pool
/// at each scrape, so they are exact when read; the cost totals (fractions
/// of a dollar, which the exporter's counters cannot hold) follow them.
pub fn metrics(
    pool: &KeyPool,
    clients: &keyrelay_layers::client::ClientDirectory,
    totals: &keyrelay_layers::price::CostTotals,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> Response<ProxyBody> {
    use keyrelay_layers::metrics::{
        KEY_BUDGET_REMAINING, KEY_IN_FLIGHT, KEY_LEARNED_REMAINING, KEY_LIMIT, KEY_STATE, KEY_WINDOW_USED,
    };
    const STATES: [(KeyState, &str); 5] = [
        (KeyState::Ok, "ok"),
        (KeyState::Cooling, "cooling"),
        (KeyState::Exhausted, "exhausted"),
        (KeyState::Invalid, "invalid"),
        (KeyState::Disabled, "disabled"),
    ];
    for key in pool.key_statuses() {
        for (state, name) in STATES {
            let labels = [("provider", key.provider.clone()), ("key", key.id.clone()), ("state", name.to_owned())];
            metrics::gauge!(KEY_STATE, &labels).set(if key.state == state { 1.0 } else { 0.0 });
        }
        let labels = [("provider", key.provider.clone()), ("key", key.id.clone())];
        metrics::gauge!(KEY_IN_FLIGHT, &labels).set(f64::from(key.in_flight));
        if let Some(budget) = &key.budget {
            metrics::gauge!(KEY_BUDGET_REMAINING, &labels).set(budget.remaining_usd);
        }
        let kinds = [
            ("rpm", key.settings.rpm, key.window.requests_last_minute),
            ("tpm", key.settings.tpm, key.window.tokens_last_minute),
            ("rpd", key.settings.rpd, key.window.requests_today),
        ];
        for (kind, limit, used) in kinds {
            let labels = [("provider", key.provider.clone()), ("key", key.id.clone()), ("kind", kind.to_owned())];
            if let Some(limit) = limit {
                metrics::gauge!(KEY_LIMIT, &labels).set(limit as f64);
            }
            metrics::gauge!(KEY_WINDOW_USED, &labels).set(used as f64);
        }
        for learned in &key.learned {
            for (kind, remaining) in [("requests", learned.requests_remaining), ("tokens", learned.tokens_remaining)] {
                let Some(remaining) = remaining else { continue };
                let labels = [
                    ("provider", key.provider.clone()),
                    ("key", key.id.clone()),
                    ("model", learned.model.clone()),
                    ("kind", kind.to_owned()),
                ];
                metrics::gauge!(KEY_LEARNED_REMAINING, &labels).set(remaining as f64);
            }
        }
    }
    let now = pool.clock().now_unix_ms();
    for (client, _) in clients.list() {
        if let Some(meter) = keyrelay_layers::client::budget_of(&client) {
            let labels = [("client", client.name().to_string())];
            metrics::gauge!(keyrelay_layers::metrics::CLIENT_BUDGET_REMAINING, &labels).set(meter.remaining(now));
        }
    }
    handle.run_upkeep();
    let mut page = handle.render();
    if !page.is_empty() && !page.ends_with('\n') {
        page.push('\n');
    }
    page.push_str(&totals.render());
    let mut res = Response::new(full(Bytes::from(page)));
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}
