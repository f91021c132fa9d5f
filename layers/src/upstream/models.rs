//! `ModelCatalog`: the models behind `GET /v1/models`.
//!
//! Each provider with keys is asked for its own list (`{api_base}/models`,
//! with one of its keys); the answer is cached for a TTL. An unreachable
//! provider logs a warning and contributes its last good list (or nothing),
//! so one broken provider never breaks the listing. Models named in config
//! are always listed. Ids are `provider/model`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::time::Instant;

use super::HttpsClient;
use crate::provider::Dialect;
use crate::{
    BoxError,
    pool::{KeyPool, ProviderPool},
};

/// Upstream model lists larger than this are not read.
const MAX_LIST_BYTES: usize = 8 << 20;
/// A failed fetch is retried no sooner than this, so that a dead provider
/// does not slow every listing.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// One entry of OpenAI's model list.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ModelInfo {
    /// `provider/model`, as clients name it in requests.
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    /// Always 0: providers' creation times are not kept.
    pub created: u64,
    /// The provider's id.
    pub owned_by: String,
}

struct Cached {
    fresh_until: Instant,
    models: Arc<[String]>,
}

/// Fetches and caches each provider's model list.
///
/// A provider without keys is not asked, but the models its configuration
/// names are listed; so this example needs no network:
///
/// ```
/// use std::time::Duration;
/// use keyrelay_layers::{pool::KeyPool, provider::Provider, upstream::{build_client, ClientOptions, ModelCatalog}};
///
/// # tokio_test::block_on(async {
/// let local = Provider::openai_compatible("local", "http://127.0.0.1:11434/v1")
///     .unwrap()
///     .with_models(vec!["qwen3:8b".into()]);
/// let pool = KeyPool::builder().provider(local, Default::default(), vec![]).build().unwrap();
/// let client = build_client(&ClientOptions::default()).unwrap();
/// let catalog = ModelCatalog::new(client, Duration::from_secs(600), Duration::from_secs(5));
///
/// let models = catalog.list(&pool).await;
/// assert_eq!(models.len(), 1);
/// assert_eq!((models[0].id.as_str(), models[0].owned_by.as_str()), ("local/qwen3:8b", "local"));
/// # });
/// ```
pub struct ModelCatalog {
    client: HttpsClient,
    ttl: Duration,
    fetch_timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl fmt::Debug for ModelCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelCatalog").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl ModelCatalog {
    /// Lists are cached for `ttl`; one fetch may take `fetch_timeout`.
    pub fn new(client: HttpsClient, ttl: Duration, fetch_timeout: Duration) -> Self {
        Self { client, ttl, fetch_timeout, cache: Mutex::default() }
    }

    /// Every provider's models, configured ones first, as `provider/model`.
    pub async fn list(&self, pool: &KeyPool) -> Vec<ModelInfo> {
        let listed = pool.providers().filter(|p| !p.keys().is_empty() || !p.provider().models().is_empty());
        let fetched =
            futures_util::future::join_all(listed.map(|p| async move { (p, self.provider_models(p).await) })).await;
        let mut out = Vec::new();
        for (pool, fetched) in fetched {
            let provider = pool.provider().id().as_str();
            let mut seen = HashSet::new();
            let rules = pool.provider().model_rules();
            for model in pool.provider().models().iter().chain(fetched.iter()) {
                if rules.check(model).is_ok() && seen.insert(model.as_str()) {
                    out.push(ModelInfo {
                        id: format!("{provider}/{model}"),
                        object: "model",
                        created: 0,
                        owned_by: provider.to_owned(),
                    });
                }
            }
        }
        out
    }

    async fn provider_models(&self, pool: &ProviderPool) -> Arc<[String]> {
        let id = pool.provider().id().as_str();
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().expect("model cache lock");
            match cache.get(id) {
                Some(cached) if cached.fresh_until > now => return cached.models.clone(),
                Some(cached) => Some(cached.models.clone()),
                None => None,
            }
        };
        let (models, fresh_for) = match tokio::time::timeout(self.fetch_timeout, self.fetch(pool)).await {
            Ok(Ok(models)) => {
                pool.learn_models(&models);
                (models.into(), self.ttl)
            }
            failed => {
                let reason = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {:?}", self.fetch_timeout),
                };
                tracing::warn!(provider = id, error = %reason, "could not fetch the provider's model list");
                (stale.unwrap_or_else(|| Arc::from([])), FAILURE_BACKOFF.min(self.ttl))
            }
        };
        let mut cache = self.cache.lock().expect("model cache lock");
        cache.insert(id.to_owned(), Cached { fresh_until: Instant::now() + fresh_for, models: Arc::clone(&models) });
        models
    }

    async fn fetch(&self, pool: &ProviderPool) -> Result<Vec<String>, BoxError> {
        let Some(key) = pool.keys().first() else {
            return Ok(Vec::new());
        };
        let provider = pool.provider();
        let path = match provider.dialect() {
            Dialect::OpenAi => "models",
            Dialect::Anthropic => "v1/models?limit=1000",
            Dialect::Gemini => "v1beta/models?pageSize=1000",
        };
        let (name, value) = key.auth_header();
        let mut req = Request::get(provider.api_base().join(path))
            .header(name, value)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))?;
        for (name, value) in provider.extra_headers() {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let res = self.client.request(req).await?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_LIST_BYTES).collect().await?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("status {status} from the provider's model list (key {})", key.id()).into());
        }
        match provider.dialect() {
            Dialect::OpenAi => parse_model_list(&body),
            Dialect::Anthropic => Ok(super::dialect::anthropic::model_ids(&body)?),
            Dialect::Gemini => Ok(super::dialect::gemini::model_ids(&body)?),
        }
    }
}

/// Reads OpenAI's `{"data": [{"id": ...}]}`, or the bare array some
/// compatible providers answer with.
pub(crate) fn parse_model_list(body: &[u8]) -> Result<Vec<String>, BoxError> {
    #[derive(Deserialize)]
    struct Entry {
        id: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Wrapped { data: Vec<Entry> },
        Bare(Vec<Entry>),
    }
    let list: List = serde_json::from_slice(body).map_err(|err| format!("unexpected model list: {err}"))?;
    let (List::Wrapped { data: entries } | List::Bare(entries)) = list;
    Ok(entries.into_iter().map(|e| e.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrapped_and_bare_lists() {
        let wrapped = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"}]}"#;
        assert_eq!(parse_model_list(wrapped).unwrap(), ["gpt-4o"]);
        let bare = br#"[{"id":"meta-llama/Llama-3-70b","type":"chat"}]"#;
        assert_eq!(parse_model_list(bare).unwrap(), ["meta-llama/Llama-3-70b"]);
        assert!(parse_model_list(b"<html>").is_err());
    }
}
