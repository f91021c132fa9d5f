//! `UpstreamService`: sends the request to the provider with the leased key.
//!
//! For OpenAI-compatible providers the URI becomes the provider's base plus
//! the endpoint (`{api_base}/chat/completions`), the leased key goes in the
//! provider's auth header, `model` is replaced by the upstream model name,
//! and client credentials and hop-by-hop headers are dropped. The response
//! body streams back frame by frame as it arrives; nothing is collected. A
//! stream that stays silent longer than its idle timeout fails (RetryRotate
//! turns a failing stream into one final SSE error event).
//!
//! Reads [`RouteTarget`] and [`KeyLease`]; copies the lease onto the
//! response. Fails with [`UpstreamUnreachable`] (502) when the provider
//! cannot be reached or breaks before answering. An upstream error status
//! (400, 404, 429, 5xx...) is a response like any other and passes through.
//!
//! ```no_run
//! use keyrelay_layers::upstream::{build_client, ClientOptions, UpstreamService};
//!
//! let client = build_client(&ClientOptions::default()).unwrap();
//! let upstream = UpstreamService::new(client);
//! ```

mod client;
pub mod dialect;
pub mod headers;
mod models;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Response,
    header::{ACCEPT_ENCODING, CONTENT_TYPE},
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy;
use pin_project_lite::pin_project;
use tower::Service;

pub use self::{
    client::{ClientOptions, HttpsClient, build_client},
    models::{ModelCatalog, ModelInfo},
};
use crate::{
    BoxError, ProxyBody,
    body::IdleTimeoutBody,
    error::{MissingExtension, UpstreamUnreachable},
    extensions::RouteTarget,
    pool::KeyLease,
    provider::Dialect,
};

/// Sends requests to providers; see the [module docs](self).
#[derive(Clone)]
pub struct UpstreamService {
    client: HttpsClient,
    stream_idle_timeout: Duration,
}

/// Default bound on silence between the chunks of a stream.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl UpstreamService {
    pub fn new(client: HttpsClient) -> Self {
        Self { client, stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT }
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

impl Service<Request<Bytes>> for UpstreamService {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready: it queues on its own pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        match prepare(req) {
            Ok((req, lease, stream)) => ResponseFuture {
                state: State::Sending {
                    inner: self.client.request(req),
                    lease: Some(lease),
                    idle: stream.then_some(self.stream_idle_timeout),
                },
            },
            Err(err) => ResponseFuture { state: State::Failed { err: Some(err) } },
        }
    }
}

/// Builds the provider's request from the client's: pure, no I/O.
pub fn prepare(req: Request<Bytes>) -> Result<(Request<Full<Bytes>>, KeyLease, bool), BoxError> {
    let (mut parts, body) = req.into_parts();
    let target = parts.extensions.remove::<RouteTarget>().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let lease = parts.extensions.remove::<KeyLease>().ok_or_else(|| MissingExtension::new("KeyLease"))?;
    let provider = lease.provider();
    let body = match provider.dialect() {
        Dialect::OpenAi => match target.model_span() {
            Some(span) => dialect::openai::rewrite_model(&body, span, target.model()),
            None => body,
        },
    };
    parts.uri = provider.endpoint_uri(target.endpoint());
    parts.version = http::Version::HTTP_11;
    headers::for_upstream(&mut parts.headers);
    let (name, value) = lease.auth_header();
    parts.headers.insert(name.clone(), value.clone());
    if target.stream() {
        // Streams are forwarded (and, when they break, ended) event by event
        // by the proxy, which needs to see plain text.
        parts.headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    if !parts.headers.contains_key(CONTENT_TYPE) {
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // Per-request state stays in the proxy; the client sees none of it.
    parts.extensions = http::Extensions::new();
    Ok((Request::from_parts(parts, Full::new(body)), lease, target.stream()))
}

pin_project! {
    /// The [`UpstreamService`] future.
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sending { #[pin] inner: legacy::ResponseFuture, lease: Option<KeyLease>, idle: Option<Duration> },
        Failed { err: Option<BoxError> },
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { inner, lease, idle } => {
                let lease = lease.as_ref().expect("polled after completion");
                let res = match ready!(inner.poll(cx)) {
                    Ok(res) => res,
                    Err(err) => {
                        return Poll::Ready(Err(UpstreamUnreachable::new(lease.provider_id().as_str(), err).into()));
                    }
                };
                let (mut parts, body) = res.into_parts();
                headers::for_client(&mut parts.headers);
                parts.extensions = http::Extensions::new();
                parts.extensions.insert(lease.clone());
                let body = match idle {
                    Some(idle) if parts.status.is_success() => IdleTimeoutBody::new(body, *idle).boxed_unsync(),
                    _ => body.map_err(BoxError::from).boxed_unsync(),
                };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            StateProj::Failed { err } => Poll::Ready(Err(err.take().expect("polled after completion"))),
        }
    }
}
