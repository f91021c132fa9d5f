//! tower layers for an LLM API gateway that fronts a pool of provider keys.
//!
//! `keyrelay-layers` is the library half of [keyrelay]: each concern of an
//! OpenAI-compatible key-rotating gateway is one tower [`Layer`](tower::Layer)
//! with its `Service`, usable alone or stacked in your own axum or hyper
//! server. The keyrelay binary assembles them like this (outer to inner):
//!
//! ```text
//!   client
//!     |
//! RequestLog ............ request id, one span, completion event, metrics
//! ErrorResponse ......... BoxError -> OpenAI-shaped JSON; Infallible outward
//! Auth .................. proxy key, constant time; strips client credentials
//! Deadline .............. one clock for waits, attempts and backoff
//! Parse ................. body read once (bounded) -> RouteTarget
//! ModelFilter ........... operator's ignore / whitelist globs
//! Fallback .............. a model alias's next target when a pool cannot serve
//! RetryRotate ........... classify each answer, cool the key, try another
//! KeySelect ............. a key from the shared KeyPool (waits inside the deadline)
//! KeyConcurrency ........ per (key, model) in-flight cap, held until the body ends
//! SharedAdmit ........... the caps, windows and budgets replicas share (a store's ticket)
//! UpstreamService ....... dialect translation + pooled hyper client; bodies stream
//!     |
//!   provider
//! ```
//!
//! | layer | module | writes | reads |
//! |---|---|---|---|
//! | [`RequestLogLayer`](log::RequestLogLayer) | [`log`] | `RequestId`, `RequestRecord` | the record; the response's `ErrorCode`, `Quiet` |
//! | [`ErrorResponseLayer`](respond::ErrorResponseLayer) | [`respond`] | response `ErrorCode` | the error |
//! | [`AuthLayer`](auth::AuthLayer) | [`auth`] | - | `authorization` / `x-api-key` |
//! | [`DeadlineLayer`](timeout::DeadlineLayer) | [`timeout`] | `Deadline` | - |
//! | [`ParseLayer`](parse::ParseLayer) | [`parse`] | `RouteTarget`; the record's route | the body, `Endpoint` |
//! | [`ModelFilterLayer`](filter::ModelFilterLayer) | [`filter`] | - | `RouteTarget` |
//! | [`FallbackLayer`](fallback::FallbackLayer) | [`fallback`] | `RouteTarget` (an alias's next target) | `Deadline`, `RouteTarget` and its fallbacks |
//! | [`RetryRotateLayer`](retry::RetryRotateLayer) | [`retry`] | `ExcludedKeys`, `PinnedKey`; the record's attempts; response headers `x-keyrelay-model`, `x-keyrelay-key` | `Deadline`, `RouteTarget`, response `KeyLease` |
//! | [`KeySelectLayer`](select::KeySelectLayer) | [`select`] | `KeyLease` (request and response) | `Deadline`, `RouteTarget`, `ExcludedKeys`, `PinnedKey` |
//! | [`KeyConcurrencyLayer`](concurrency::KeyConcurrencyLayer) | [`concurrency`] | - | `KeyLease`, `RouteTarget` |
//! | [`SharedAdmitLayer`](shared_admit::SharedAdmitLayer) | [`shared_admit`] | - | `KeyLease`, `RouteTarget` |
//! | `upstream::UpstreamService` (feature `upstream`) | `upstream` | the record's usage, break and capture | `RouteTarget`, `KeyLease`, `RequestRecord` |
//!
//! The shared state is one [`pool::KeyPool`]: providers, their keys, and
//! each key's health (cooldowns, invalid marks, quotas, counters), cheap to
//! share behind an `Arc`. Each layer is tested alone against mock inner
//! services; none of them spawns tasks or reads the system clock (tokio's
//! clock drives everything, so paused-clock tests control time).
//!
//! # Features
//!
//! - `upstream` (default): `upstream::UpstreamService`, the hyper-util
//!   client with rustls (ring, webpki roots) and the provider dialects.
//!   Without it you bring your own innermost service.
//! - `serde`: `Serialize` for the pool's status types and `Serialize` +
//!   `Deserialize` for [`pool::PoolSnapshot`], to serve status pages and
//!   save state across restarts. Request bodies are JSON whatever the
//!   features, so `serde_json` is always a dependency.
//!
//! # Request extensions
//!
//! Per-request state travels in request extensions, as the table above
//! shows; [`extensions`] holds the full ledger of who writes and who reads
//! each one. What the request learns on its way (route, attempts, tokens,
//! how it ended) goes in one [`record::RequestRecord`], each field with one
//! named writer, which RequestLog reads at the end. Identities go in extensions (they are cloned for every retry);
//! RAII resources (in-flight guards, permits) live in futures and bodies, so
//! they are released when the response body ends, not when headers leave.
//!
//! # Example
//!
//! The pool stack around a stand-in for the upstream:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{
//!     auth::AuthLayer, parse::ParseLayer, pool::{KeyPool, Secret}, provider::Provider,
//!     respond::ErrorResponseLayer, select::KeySelectLayer, timeout::DeadlineLayer,
//!     extensions::RouteTarget, BoxError,
//! };
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # async fn demo() -> Result<(), BoxError> {
//! let provider = Provider::openai_compatible("openai", "https://api.openai.com/v1")?;
//! let pool = KeyPool::builder()
//!     .provider(provider, Default::default(), vec![Secret::new("sk-one"), Secret::new("sk-two")])
//!     .build()?;
//!
//! // Any service that takes the parsed request works as the innermost one;
//! // keyrelay uses `upstream::UpstreamService` here.
//! let upstream = service_fn(|req: Request<Bytes>| async move {
//!     let target = req.extensions().get::<RouteTarget>().unwrap();
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(target.model().to_owned()))))
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .layer(AuthLayer::require(Secret::new("proxy-key")))
//!     .layer(DeadlineLayer::new(Duration::from_secs(60)))
//!     .layer(ParseLayer::new(pool.clone(), 16 << 20))
//!     .layer(KeySelectLayer::new(pool))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer proxy-key")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"openai/gpt-4o","messages":[]}"#)))?;
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! [keyrelay]: https://example.invalid/keyrelay

#![warn(missing_docs)]

pub mod auth;
pub mod body;
pub mod budget;
pub mod classify;
pub mod client;
pub mod concurrency;
pub mod credentials;
pub mod error;
pub mod extensions;
pub mod fallback;
pub mod filter;
pub mod ledger;
pub mod log;
pub mod metrics;
pub mod parse;
pub mod pool;
pub mod price;
pub mod provider;
pub mod record;
pub mod respond;
pub mod retry;
pub mod select;
pub mod shared_admit;
pub mod shed;
pub mod timeout;
#[cfg(feature = "upstream")]
pub mod upstream;
pub mod usage;

/// The error type every inner layer returns; [`respond::ErrorResponseLayer`]
/// turns it into a response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body the upstream service produces: a boxed, streaming body.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
