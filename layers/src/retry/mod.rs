//! `RetryRotateLayer`: keeps a request going across keys.
//!
//! An async loop over attempts, each rebuilt from the pristine buffered
//! request (`Request<Bytes>`: the body is never read twice). After each
//! attempt it classifies the answer ([`crate::classify`]) from status,
//! headers and at most [`PEEK_LIMIT`] bytes of an error body (a 2xx body is
//! never touched), records the outcome in the pool through the response's
//! [`KeyLease`], and decides ([`policy::next`]):
//!
//! - success: the response goes to the client (a stream that breaks after
//!   its `200` is the upstream service's to end with an SSE error event);
//! - client error (400, 404, 422...): returned as it is, no penalty;
//! - rate limit, quota, credential: the pool cooled or marked the key, so
//!   the next attempt picks another at once;
//! - transient (5xx, 529, connect errors): the same key again after a
//!   jittered backoff, then another key, which this request will not retry;
//! - a key that turned out to be busy: another choice, no penalty.
//!
//! Rotation may walk the whole pool; the [`Deadline`] (outside) bounds it.
//! KeySelect answers when it runs out: 429 when every key is cooling past
//! the deadline, 503 when none is usable; when every key was tried this
//! layer answers [`UpstreamFailed`] (502) carrying the last upstream error,
//! with secrets redacted.
//!
//! Reads [`RouteTarget`] and [`Deadline`]; writes [`ExcludedKeys`] and
//! [`PinnedKey`] on each attempt, and each attempt's key, outcome and time
//! into the request's [`RequestRecord`]. Every upstream answer it passes on
//! (a success, or an error about the request itself) says where it went:
//! [`SERVED_MODEL`] (`provider/model`) and [`SERVED_KEY`] (the key's id,
//! never its secret).
//!
//! Two keys, the first rate limited: one request, two attempts, and the key
//! that answered 429 cools for this model.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use keyrelay_layers::{
//!     body::full, extensions::{Endpoint, RouteTarget}, pool::{KeyLease, KeyPool, KeyState, Secret, Selection},
//!     provider::{Provider, ProviderId}, retry::{RetryPolicy, RetryRotateLayer}, select::KeySelectLayer, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let keys = vec![Secret::new("sk-limited"), Secret::new("sk-fresh")];
//! let pool = KeyPool::builder().provider(openai, Selection::RoundRobin, keys).build().unwrap();
//!
//! // Stands in for `UpstreamService` (KeySelect puts the lease on its answer).
//! let upstream = service_fn(|req: Request<Bytes>| async move {
//!     let lease = req.extensions().get::<KeyLease>().unwrap().clone();
//!     let res = match lease.secret().expose() {
//!         "sk-limited" => {
//!             let mut res = Response::new(full(r#"{"error":{"message":"Rate limit reached","code":null}}"#));
//!             *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
//!             res
//!         }
//!         _ => Response::new(full(r#"{"id":"chatcmpl-1"}"#)),
//!     };
//!     Ok::<_, BoxError>(res)
//! });
//! let svc = RetryRotateLayer::new(RetryPolicy::default()).layer(KeySelectLayer::new(pool.clone()).layer(upstream));
//!
//! let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(b"{}")).unwrap();
//! let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false);
//! req.extensions_mut().insert(target);
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.extensions().get::<KeyLease>().unwrap().secret().expose(), "sk-fresh");
//! assert_eq!(res.headers()["x-keyrelay-model"], "openai/gpt-4o");
//! let fresh = pool.provider("openai").unwrap().keys()[1].id().clone();
//! assert_eq!(res.headers()["x-keyrelay-key"], fresh.as_str());
//!
//! let limited = pool.provider("openai").unwrap().keys()[0].id().clone();
//! assert_eq!(pool.key_status(limited.as_str()).unwrap().state, KeyState::Cooling);
//! # });
//! ```

pub mod policy;

use std::{
    error::Error,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header::HeaderName};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use self::policy::Next;
pub use self::policy::RetryPolicy;
use crate::{
    BoxError, ProxyBody,
    classify::{Failure, FailureClass, PEEK_LIMIT, classify},
    error::{
        AllKeysCooling, KeyBusy, KeysExhausted, LeasedError, MissingExtension, UpstreamFailed, UpstreamUnreachable,
    },
    extensions::{Deadline, ExcludedKeys, PinnedKey, RouteTarget, UpstreamError},
    pool::{KeyId, KeyLease},
    record::{AttemptRecord, RequestRecord},
};

/// Response header: the `provider/model` that served a proxied answer
/// (the alias's target, for a model alias).
pub const SERVED_MODEL: HeaderName = HeaderName::from_static("x-keyrelay-model");

/// Response header: the id of the key that served a proxied answer (as
/// `/v1/keys` shows it; never the secret).
pub const SERVED_KEY: HeaderName = HeaderName::from_static("x-keyrelay-key");

/// Applies [`RetryRotate`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryRotateLayer {
    policy: RetryPolicy,
}

impl RetryRotateLayer {
    /// Retries as `policy` says; [`RetryPolicy::default`] is one same-key
    /// retry, after 100 ms.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RetryRotateLayer {
    type Service = RetryRotate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryRotate { inner, policy: self.policy }
    }
}

/// Retries with rotation; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryRotate<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> RetryRotate<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ResBody> Service<Request<Bytes>> for RetryRotate<S>
where
    S: Service<Request<Bytes>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        // The ready service makes the first attempt; later attempts wait for
        // its readiness again.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(attempt_loop(inner, req, self.policy))
    }
}

fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

/// A fresh attempt from the pristine request: nothing attempt-scoped
/// carries over.
fn attempt_request(pristine: &Request<Bytes>) -> Request<Bytes> {
    let mut req = Request::new(pristine.body().clone());
    *req.method_mut() = pristine.method().clone();
    *req.uri_mut() = pristine.uri().clone();
    *req.version_mut() = pristine.version();
    *req.headers_mut() = pristine.headers().clone();
    *req.extensions_mut() = pristine.extensions().clone();
    req
}

async fn attempt_loop<S, ResBody>(
    mut svc: S,
    pristine: Request<Bytes>,
    policy: RetryPolicy,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Service<Request<Bytes>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let target =
        pristine.extensions().get::<RouteTarget>().cloned().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
    let deadline = pristine.extensions().get::<Deadline>().map(|d| d.0);
    let model = target.model();
    let mut excluded: Vec<KeyId> = Vec::new();
    let mut pinned: Option<KeyId> = None;
    let mut same_key_failures = 0u32;
    let mut last_failure: Option<String> = None;
    let mut attempt = 0u32;
    let record = pristine.extensions().get::<RequestRecord>().cloned();
    // Named on its own events: with an access log there is no request span.
    let request_id = pristine.extensions().get::<crate::extensions::RequestId>().cloned();
    // An attempt's time starts when its key was leased: a wait for a key
    // is no attempt's.
    let trail = |lease: &KeyLease, outcome: &'static str, status: Option<u16>| {
        if let Some(record) = &record {
            let ms = lease.leased_at().elapsed().as_millis() as u64;
            record.push_attempt(AttemptRecord::new(lease.key_id().as_str(), outcome, status, ms));
        }
    };
    loop {
        attempt += 1;
        let mut req = attempt_request(&pristine);
        if !excluded.is_empty() {
            // KeySelect takes none as none: no allocation on a first attempt.
            req.extensions_mut().insert(ExcludedKeys(excluded.clone()));
        }
        if let Some(key) = &pinned {
            req.extensions_mut().insert(PinnedKey(key.clone()));
        }
        let ready: Result<&mut S, BoxError> = svc.ready().await.map_err(Into::into);
        let result: Result<Response<ResBody>, BoxError> = match ready {
            Ok(svc) => svc.call(req).await.map_err(Into::into),
            Err(err) => Err(err),
        };

        let (lease, failure, cooled) = match result {
            Ok(mut res) => {
                let Some(lease) = res.extensions().get::<KeyLease>().cloned() else {
                    // Not an upstream answer this layer can judge.
                    return Ok(finish(res));
                };
                let status = res.status();
                // What the provider says the key has left, on a success or a 429.
                lease.learn_limits(model, res.headers());
                if !(status.is_client_error() || status.is_server_error()) {
                    lease.record(model, Ok(()));
                    count_attempt(&lease, "success");
                    trail(&lease, "success", Some(status.as_u16()));
                    stamp(res.headers_mut(), &lease, model);
                    if let Some(record) = &record {
                        // Accepted by the provider, the model may be a label now.
                        record.set_model_label(lease.pool().model_label(model));
                    }
                    return Ok(finish(res));
                }
                let judged = res.extensions().get::<UpstreamError>().map(|e| e.0.clone());
                let (res, peeked) = peek(res).await;
                // The provider's words, when the client reads them reshaped.
                let peeked = judged.unwrap_or(peeked);
                let failure = classify(status, res.headers(), &peeked).unwrap_or(Failure::new(FailureClass::Transient));
                let cooled = lease.record(model, Err(failure)).is_some();
                count_attempt(&lease, failure.class.as_str());
                trail(&lease, failure.class.as_str(), Some(status.as_u16()));
                tracing::info!(
                    request_id = request_id.as_ref().map(tracing::field::display),
                    attempt,
                    key = lease.key_id().as_str(),
                    status = status.as_u16(),
                    class = failure.class.as_str(),
                    "upstream attempt failed"
                );
                if failure.class == FailureClass::Client {
                    let mut res = res;
                    stamp(res.headers_mut(), &lease, model);
                    return Ok(res);
                }
                last_failure = Some(describe(status, &peeked, &lease));
                (lease, failure, cooled)
            }
            Err(err) => {
                let Some(leased) = find::<LeasedError>(&*err) else {
                    return match (find::<KeysExhausted>(&*err), last_failure) {
                        (Some(_), Some(last)) => {
                            Err(UpstreamFailed::new(target.provider().as_str(), attempt - 1, last).into())
                        }
                        _ => Err(err),
                    };
                };
                let lease = leased.lease().clone();
                if find::<KeyBusy>(leased.cause()).is_some() {
                    // Lost a race for the key's last slot: choose again.
                    pinned = None;
                    tokio::task::yield_now().await;
                    continue;
                }
                if find::<UpstreamUnreachable>(leased.cause()).is_none() {
                    return Err(err);
                }
                let failure = Failure::new(FailureClass::Transient);
                let cooled = lease.record(model, Err(failure)).is_some();
                count_attempt(&lease, failure.class.as_str());
                trail(&lease, failure.class.as_str(), None);
                let request_id = request_id.as_ref().map(tracing::field::display);
                tracing::info!(request_id, attempt, key = lease.key_id().as_str(), error = %err, "upstream attempt failed");
                last_failure = Some(err.to_string());
                (lease, failure, cooled)
            }
        };

        // A safety valve beside the deadline: no request hammers a pool
        // more than a few times over.
        if attempt >= 4 * lease.pool().keys().len() as u32 + 4 {
            if matches!(failure.class, FailureClass::RateLimit | FailureClass::Quota) {
                // Still rate limited after all this: say so, with when to come back.
                let until = lease.pool().earliest_cooldown(model).unwrap_or_else(Instant::now);
                let wait = until.saturating_duration_since(Instant::now());
                return Err(AllKeysCooling::new(target.provider().as_str(), model, wait).into());
            }
            let last = last_failure.unwrap_or_default();
            return Err(UpstreamFailed::new(target.provider().as_str(), attempt, last).into());
        }
        same_key_failures = match &pinned {
            Some(key) if key == lease.key_id() => same_key_failures + 1,
            _ => 1,
        };
        let mut step = policy::next(&policy, failure.class, same_key_failures, fastrand::f64());
        // No same-key retry into a cooldown (repeated transient failures
        // just started one) or past the deadline.
        if let Next::SameKey(pause) = step
            && (cooled || deadline.is_some_and(|d| Instant::now() + pause >= d))
        {
            step = Next::Rotate { exclude: true };
        }
        match step {
            Next::Return => unreachable!("client errors returned above"),
            Next::SameKey(pause) => {
                count_retry(&lease, "same_key");
                tokio::time::sleep(pause).await;
                pinned = Some(lease.key_id().clone());
            }
            Next::Rotate { exclude } => {
                count_retry(&lease, "rotate");
                pinned = None;
                if exclude {
                    excluded.push(lease.key_id().clone());
                }
            }
        }
    }
}

/// Says on the client's answer which provider, model and key served it.
fn stamp(headers: &mut http::HeaderMap, lease: &KeyLease, model: &str) {
    // A model the client sent may hold bytes a header cannot: then only the key.
    let provider = lease.provider_id().as_str();
    let mut served = BytesMut::with_capacity(provider.len() + 1 + model.len());
    served.extend_from_slice(provider.as_bytes());
    served.extend_from_slice(b"/");
    served.extend_from_slice(model.as_bytes());
    if let Ok(served) = HeaderValue::from_maybe_shared(served.freeze()) {
        headers.insert(SERVED_MODEL, served);
    }
    headers.insert(SERVED_KEY, lease.key_header().clone());
}

fn count_attempt(lease: &KeyLease, outcome: &'static str) {
    lease.count_attempt(outcome);
}

fn count_retry(lease: &KeyLease, kind: &'static str) {
    let labels = [("provider", lease.provider_id().as_str().to_owned()), ("kind", kind.to_owned())];
    metrics::counter!(crate::metrics::RETRIES, &labels).increment(1);
}

/// The response that goes to the client, boxed.
fn finish<B>(res: Response<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|body| body.map_err(Into::into).boxed_unsync())
}

/// Reads at most [`PEEK_LIMIT`] bytes of an error body, and gives back a
/// response whose body is the whole original one.
async fn peek<B>(res: Response<B>) -> (Response<ProxyBody>, Bytes)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    let mut body: ProxyBody = body.map_err(Into::into).boxed_unsync();
    let mut peeked = BytesMut::new();
    while peeked.len() < PEEK_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    peeked.extend_from_slice(data);
                }
            }
            // A broken error body: what arrived is all there is.
            Some(Err(_)) | None => {
                let peeked = peeked.freeze();
                return (Response::from_parts(parts, crate::body::full(peeked.clone())), peeked);
            }
        }
    }
    let peeked = peeked.freeze();
    let body = Chain { head: Some(peeked.clone()), rest: body };
    (Response::from_parts(parts, body.boxed_unsync()), peeked)
}

pin_project_lite::pin_project! {
    /// The peeked head of a body, then the rest of it.
    struct Chain<B> {
        head: Option<Bytes>,
        #[pin]
        rest: B,
    }
}

impl<B> Body for Chain<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        this.rest.poll_frame(cx).map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// The last upstream error as the client may see it: status, the
/// provider's message, and never a secret.
fn describe(status: StatusCode, body: &[u8], lease: &KeyLease) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            error
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
                .or_else(|| error.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let message = crate::error::redact(&message, lease.secret().expose());
    match message.trim() {
        "" => format!("{} from key {}", status.as_u16(), lease.key_id()),
        message => format!("{} from key {}: {message}", status.as_u16(), lease.key_id()),
    }
}
