//! The small handlers beside the proxy: health, models, providers, keys.
//! They answer JSON and never show a secret.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE};
use keyrelay_layers::{ProxyBody, body::full, pool::KeyPool, upstream::ModelCatalog};
use serde::Serialize;
use serde_json::json;

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    let body = serde_json::to_vec(value).expect("status documents always serialize");
    let mut res = Response::new(full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub fn health() -> Response<ProxyBody> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /v1/models`: OpenAI's model list, ids `provider/model`.
pub async fn models(
    pool: Arc<KeyPool>,
    catalog: Arc<ModelCatalog>,
) -> Result<Response<ProxyBody>, Infallible> {
    let data = catalog.list(&pool).await;
    Ok(json(
        StatusCode::OK,
        &json!({ "object": "list", "data": data }),
    ))
}

/// `GET /v1/providers`: configured providers, their keys counted by state.
pub fn providers(pool: &KeyPool, configured: &[String]) -> Response<ProxyBody> {
    let data: Vec<_> = pool
        .providers()
        .filter(|p| {
            !p.keys().is_empty() || configured.iter().any(|c| c == p.provider().id().as_str())
        })
        .map(|p| {
            let provider = p.provider();
            json!({
                "id": provider.id().as_str(),
                "api_base": provider.api_base().to_string(),
                "dialect": provider.dialect().as_str(),
                "selection": p.selection().as_str(),
                "keys": { "total": p.keys().len(), "ok": p.keys().len() },
                "in_flight": p.keys().iter().map(|k| u64::from(k.in_flight())).sum::<u64>(),
                "models": provider.models(),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

/// `GET /v1/keys`: every key by id, with its state and counters.
pub fn keys(pool: &KeyPool) -> Response<ProxyBody> {
    json(
        StatusCode::OK,
        &json!({ "object": "list", "data": pool.key_statuses() }),
    )
}
