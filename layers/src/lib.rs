//! tower layers for an LLM API gateway that fronts a pool of provider keys.
//!
//! `keyrelay-layers` is the library half of [keyrelay]: each concern of an
//! OpenAI-compatible key-rotating gateway is one tower [`Layer`](tower::Layer)
//! with its `Service`, usable alone or stacked. The keyrelay binary assembles
//! them like this (outer to inner):
//!
//! ```text
//! SetSensitiveHeaders -> RequestLog -> ErrorResponse -> Auth -> Deadline
//!   -> Parse (body -> RouteTarget) -> KeySelect -> Upstream (hyper client)
//! ```
//!
//! - [`log::RequestLogLayer`]: one span per request, request id, completion event.
//! - [`respond::ErrorResponseLayer`]: the one place a [`BoxError`] becomes an
//!   OpenAI-shaped error response; from there outward the error is `Infallible`.
//! - [`auth::AuthLayer`]: the client's proxy key, compared in constant time.
//! - [`timeout::DeadlineLayer`]: one deadline for the whole request.
//! - [`parse::ParseLayer`]: reads the body once (bounded) and finds `model`
//!   and `stream`.
//! - [`select::KeySelectLayer`]: picks a key from the shared [`pool::KeyPool`].
//! - [`upstream::UpstreamService`]: rewrites the request for the provider and
//!   sends it over a pooled hyper client; responses stream back unbuffered.
//!
//! Per-request state travels in request extensions; [`extensions`] holds the
//! ledger of who writes and who reads each one.
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

pub mod auth;
pub mod body;
pub mod classify;
pub mod concurrency;
pub mod error;
pub mod extensions;
pub mod filter;
pub mod log;
pub mod metrics;
pub mod parse;
pub mod pool;
pub mod provider;
pub mod respond;
pub mod retry;
pub mod select;
pub mod timeout;
#[cfg(feature = "upstream")]
pub mod upstream;
pub mod usage;

/// The error type every inner layer returns; [`respond::ErrorResponseLayer`]
/// turns it into a response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body the upstream service produces: a boxed, streaming body.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
