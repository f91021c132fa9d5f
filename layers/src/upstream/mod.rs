//! `UpstreamService`: sends the request to the provider with the leased key.
//!
//! For OpenAI-compatible providers the URI becomes the provider's base plus
//! the endpoint (`{api_base}/chat/completions`), the leased key goes in the
//! provider's auth header, `model` is replaced by the upstream model name,
//! and client credentials and hop-by-hop headers are dropped. The response
//! body streams back frame by frame as it arrives; nothing is collected. A
//! stream that stays silent longer than its idle timeout fails, and a
//! stream that fails after its headers ends with one SSE error event.
//!
//! Every successful answer passes the usage meter (`meter.rs`), which
//! counts its tokens once for the key and for the request's
//! [`RequestRecord`](crate::record::RequestRecord), and drops the usage
//! chunk the proxy asked for on the client's behalf (`stream.rs`).
//! Files: `prepare.rs` (the provider's request), `answer.rs` (the client's
//! answer), `stream.rs` (framed streams), `meter.rs` (usage),
//! `cost.rs` (the answer's price in [`COST_USD`]), `capture.rs` (the
//! provider's bytes for a request log).
//!
//! Reads [`RouteTarget`](crate::extensions::RouteTarget),
//! [`KeyLease`](crate::pool::KeyLease) and the request's
//! [`RequestRecord`](crate::record::RequestRecord). Fails with
//! [`UpstreamUnreachable`] (502) when the provider
//! cannot be reached or breaks before answering. An upstream error status
//! (400, 404, 429, 5xx...) is a response like any other and passes through.
//!
//! The request the provider gets is built by [`prepare`], which is pure: here
//! for an Anthropic provider, without sending anything.
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use keyrelay_layers::{
//!     extensions::{Endpoint, RouteTarget}, pool::{KeyPool, Secret}, provider::{Dialect, Provider, ProviderId},
//!     upstream::{build_client, prepare, ClientOptions, UpstreamService},
//! };
//!
//! let client = build_client(&ClientOptions::default()).unwrap();
//! let _upstream = UpstreamService::new(client); // the innermost service of the stack
//!
//! let anthropic = Provider::new("anthropic", "https://api.anthropic.com", Dialect::Anthropic).unwrap();
//! let keys = vec![Secret::new("sk-ant-1")];
//! let pool = KeyPool::builder().provider(anthropic, Default::default(), keys).build().unwrap();
//! let (lease, _in_flight) = pool.provider("anthropic").unwrap().lease().unwrap();
//!
//! let body = r#"{"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]}"#;
//! let mut req = Request::post("/v1/chat/completions").header("cookie", "session=1").body(Bytes::from(body)).unwrap();
//! let target = RouteTarget::new(ProviderId::new("anthropic"), "claude-sonnet-4-5", Endpoint::ChatCompletions, false);
//! req.extensions_mut().insert(target);
//! req.extensions_mut().insert(lease);
//!
//! let (out, _lease, plan) = prepare(req).unwrap();
//! assert_eq!(out.uri(), "https://api.anthropic.com/v1/messages");
//! assert_eq!(out.headers()["x-api-key"], "sk-ant-1");
//! assert_eq!(out.headers()["anthropic-version"], "2023-06-01");
//! assert!(out.headers().get("cookie").is_none(), "nothing of the client's credentials goes upstream");
//! assert!(!plan.stream());
//! ```

mod answer;
mod capture;
mod client;
mod cost;
pub mod dialect;
pub mod headers;
mod local;
mod meter;
mod models;
mod native;
mod prepare;
mod stream;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

pub use self::{
    client::{ClientOptions, HttpsClient, build_client},
    cost::COST_USD,
    models::{ModelCatalog, ModelInfo},
    prepare::{Plan, prepare},
    stream::drop_usage_chunk,
};
use crate::{BoxError, ProxyBody, error::UpstreamUnreachable};

/// Sends requests to providers; see the [module docs](self).
#[derive(Clone)]
pub struct UpstreamService {
    // Behind an `Arc`: the stack clones its services for every request and
    // every attempt, and a hyper-util client clone is a dozen reference
    // counts (about 600 instructions) where this is one.
    client: std::sync::Arc<HttpsClient>,
    stream_idle_timeout: Duration,
}

/// Default bound on silence between the chunks of a stream.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl UpstreamService {
    /// Sends through `client` (see [`build_client`]), with
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`].
    pub fn new(client: HttpsClient) -> Self {
        Self { client: std::sync::Arc::new(client), stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT }
    }

    /// A stream that sends nothing for this long fails (and so ends with an
    /// error event, and counts against its key).
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle_timeout = idle;
        self
    }
}

impl fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamService").finish_non_exhaustive()
    }
}

/// The [`UpstreamService`] future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

impl Service<Request<Bytes>> for UpstreamService {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready: it queues on its own pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        if let Some(estimate) = local::count_tokens(&req) {
            return Box::pin(std::future::ready(estimate));
        }
        let (req, lease, plan) = match prepare(req) {
            Ok(prepared) => prepared,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let sent = self.client.request(req);
        let idle = self.stream_idle_timeout;
        Box::pin(async move {
            let res = sent.await.map_err(|err| UpstreamUnreachable::new(lease.provider_id().as_str(), err))?;
            answer::answer(res, lease, plan, idle).await
        })
    }
}
