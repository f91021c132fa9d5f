//! `KeySelectLayer`: picks the key for a request.
//!
//! The provider's strategy (`least_used` by default) chooses among the keys
//! that are not excluded, disabled, invalid (unless due for their single
//! probe), cooling for the request's model, or without a free concurrency
//! slot. The chosen key counts in flight from that moment, so concurrent
//! selections see each other, until the response body ends or is dropped.
//! A request that names its session ([`RouteTarget::session`]) takes the
//! key that served the session last when that key can take it now, and
//! otherwise binds the session to the key it gets (see
//! [`ProviderPool::choose_for`](crate::pool::ProviderPool::choose_for)).
//!
//! A key at its configured `rpm`, `tpm` (with room for the request's
//! [`RouteTarget::estimated_tokens`]) or `rpd` limit, or one the provider's
//! headers said has nothing left for the model, counts as cooling for a
//! rate limit until its window frees.
//!
//! A key with a budget ([`KeySettings::budget`](crate::pool::KeySettings::budget))
//! is chosen only while its spend and the reservations of requests in
//! flight on it leave anything: the request reserves its
//! [`RouteTarget::max_cost`] under the pool's prices until its answer ends.
//! A key whose remaining budget is all reserved counts as full (the request
//! may wait for a reservation to be freed); a key that spent its budget is
//! skipped and never waited for: when no other key
//! can take the request, it fails at once like keys out of quota
//! ([`AllKeysCooling`], `Retry-After` at the earliest end of a budget's
//! period), or with [`NoUsableKey`] when every such budget is a `total`
//! one, which never resets.
//!
//! When every usable key is full, the request waits for a slot; when every
//! key is cooling, it waits for the earliest if that comes before the
//! request's [`Deadline`], else fails at once with [`AllKeysCooling`] (429
//! with `Retry-After`) when the wait is a rate limit's or a quota's, or with
//! [`KeysRecovering`] (503 with `Retry-After`) when the keys only rest
//! after repeated upstream failures. Other failures: [`NoKeyConfigured`] (503, the
//! provider has no key), [`NoUsableKey`] (503, all invalid or disabled),
//! [`KeysExhausted`] (every remaining key was excluded, even when others
//! cool past the deadline), [`UnknownProvider`]
//! (400), [`MissingExtension`] (500). Errors of the inner service come back
//! wrapped in [`LeasedError`], so that retries know which key to blame.
//!
//! Reads [`RouteTarget`], [`ExcludedKeys`], [`PinnedKey`], [`Deadline`];
//! writes [`KeyLease`] into the request (for KeyConcurrency and the
//! upstream) and into the response (for RetryRotate: which key answered).
//! The time a request waits for a key is nobody's fault: an attempt starts
//! when its key is leased, and a wait the deadline ends blames no key.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use keyrelay_layers::{
//!     extensions::{Endpoint, RouteTarget}, pool::{KeyLease, KeyPool, Secret}, provider::{Provider, ProviderId},
//!     select::KeySelectLayer, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let pool = KeyPool::builder().provider(openai, Default::default(), vec![Secret::new("sk-1")]).build().unwrap();
//! let svc = KeySelectLayer::new(pool.clone()).layer(service_fn(|req: Request<Bytes>| async move {
//!     assert!(req.extensions().get::<KeyLease>().unwrap().key_id().as_str().starts_with("openai:"));
//!     Ok::<_, BoxError>(Response::new(http_body_util::Empty::<Bytes>::new()))
//! }));
//! let mut req = Request::new(Bytes::new());
//! let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, false);
//! req.extensions_mut().insert(target);
//! let res = svc.oneshot(req).await.unwrap();
//! let key = &pool.provider("openai").unwrap().keys()[0];
//! assert_eq!(key.in_flight(), 1, "counted until the body is done");
//! drop(res);
//! assert_eq!(key.in_flight(), 0);
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::{Instant, sleep_until};
use tower::{Layer, Service, ServiceExt};

use crate::{
    BoxError,
    body::LeasedBody,
    error::{
        AllKeysCooling, KeysExhausted, KeysRecovering, LeasedError, MissingExtension, ModelNotServed, NoKeyConfigured,
        NoUsableKey, ResponseKeyGone, ResponseKeyUnavailable, UnknownProvider,
    },
    extensions::{Deadline, ExcludedKeys, PinnedKey, RouteTarget},
    pool::{Choice, InFlight, KeyId, KeyLease, KeyPool},
};

/// Applies [`KeySelect`].
#[derive(Clone, Debug)]
pub struct KeySelectLayer {
    pool: Arc<KeyPool>,
    max_cooldown_wait: Option<Duration>,
}

impl KeySelectLayer {
    /// Chooses keys from `pool`.
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self { pool, max_cooldown_wait: None }
    }

    /// Waits for a cooling key only when it comes back within `wait` (and
    /// within the deadline); otherwise answers at once, with when to come
    /// back. Without it the deadline alone bounds the wait: a long deadline
    /// would then keep a client silent through a whole rate-limit window.
    pub fn max_cooldown_wait(mut self, wait: Duration) -> Self {
        self.max_cooldown_wait = Some(wait);
        self
    }
}

impl<S> Layer<S> for KeySelectLayer {
    type Service = KeySelect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeySelect { inner, pool: self.pool.clone(), max_cooldown_wait: self.max_cooldown_wait }
    }
}

/// Leases a key for each request; see the [module docs](self).
#[derive(Clone)]
pub struct KeySelect<S> {
    inner: S,
    pool: Arc<KeyPool>,
    max_cooldown_wait: Option<Duration>,
}

impl<S: fmt::Debug> fmt::Debug for KeySelect<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySelect").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S> KeySelect<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for KeySelect<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LeasedBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready to choose: the inner service's readiness is taken
        // after the wait for a key, which may be long, so that no slot of
        // the inner service is held while waiting.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let pool = self.pool.clone();
        let max_wait = self.max_cooldown_wait;
        Box::pin(async move {
            let target =
                req.extensions().get::<RouteTarget>().cloned().ok_or_else(|| MissingExtension::new("RouteTarget"))?;
            let wants = Wants {
                excluded: req.extensions_mut().remove::<ExcludedKeys>().unwrap_or_default(),
                pinned: req.extensions_mut().remove::<PinnedKey>(),
                deadline: req.extensions().get::<Deadline>().copied(),
                max_wait,
            };
            if counts_locally(&pool, &target) {
                // A token count the provider cannot make is estimated by
                // the upstream service, with no key.
                let res = inner.ready().await.map_err(Into::into)?.call(req).await.map_err(Into::into)?;
                return Ok(res.map(|body| LeasedBody::new(body, None)));
            }
            let (lease, in_flight) = lease_for(&pool, &target, wants).await?;
            req.extensions_mut().insert(lease.clone());
            let called = match inner.ready().await.map_err(Into::into) {
                Ok(inner) => inner.call(req).await.map_err(Into::into),
                Err(err) => Err(err),
            };
            match called {
                Ok(mut res) => {
                    // The answer names its key, for RetryRotate to judge.
                    res.extensions_mut().insert(lease);
                    Ok(res.map(|body| LeasedBody::new(body, Some(in_flight))))
                }
                Err(err) => Err(LeasedError::new(lease, err).into()),
            }
        })
    }
}

/// Whether the request is a token count that the provider cannot make in
/// the client's dialect (an Anthropic count for an OpenAI model): the
/// proxy estimates it without a key.
fn counts_locally(pool: &KeyPool, target: &RouteTarget) -> bool {
    let endpoint = target.endpoint();
    endpoint.counts_tokens()
        && pool.provider(target.provider().as_str()).is_some_and(|p| !p.provider().passes_through(endpoint))
}

/// What the request asks of the choice.
struct Wants {
    excluded: ExcludedKeys,
    pinned: Option<PinnedKey>,
    deadline: Option<Deadline>,
    max_wait: Option<Duration>,
}

/// Chooses a key, waiting for a free slot, or for a cooldown that ends
/// before the request's deadline.
async fn lease_for(pool: &KeyPool, target: &RouteTarget, wants: Wants) -> Result<(KeyLease, InFlight), BoxError> {
    let id = target.provider().as_str();
    let provider = pool
        .provider(id)
        .ok_or_else(|| UnknownProvider::new(id, pool.providers().map(|p| p.provider().id().as_str())))?;
    // A request bound to one key (a Responses follow-up) may use no other:
    // every other key is excluded, and its key is pinned.
    let required = target.required_key();
    let others: Vec<KeyId>;
    let (excluded, pinned) = match required {
        Some(required) => {
            if !provider.keys().iter().any(|key| *key.id() == required.key) {
                return Err(ResponseKeyGone::new(&required.response_id, required.key.as_str()).into());
            }
            if wants.excluded.0.contains(&required.key) {
                // Tried, and it failed: no other key can take over.
                return Err(KeysExhausted::new(id).into());
            }
            others = provider.keys().iter().map(|key| key.id()).filter(|&key| *key != required.key).cloned().collect();
            (&others[..], Some(&required.key))
        }
        None => (&wants.excluded.0[..], wants.pinned.as_ref().map(|p| &p.0)),
    };
    let deadline = wants.deadline.map(|d| d.0);
    // A model with no price reserves nothing of a key's budget; a provider
    // without budgets prices nothing here.
    let max_cost = if provider.has_budgets() { target.max_cost(pool.prices()).unwrap_or(0.0) } else { 0.0 };
    loop {
        // Registered before looking, so that a slot freed in between is not missed.
        let freed = provider.slot_freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        // A session prefers its key, softly (`choose_for`); a required key
        // is pinned, and wins.
        let tokens = target.estimated_tokens();
        let why = match provider.choose_reserving_cost(
            target.model(),
            excluded,
            pinned,
            target.session(),
            tokens,
            max_cost,
        ) {
            Choice::Leased(lease, in_flight) => return Ok((lease, in_flight)),
            Choice::Unavailable(why) => why,
        };
        if why.no_keys {
            return Err(NoKeyConfigured::new(id).into());
        }
        if why.no_key_for_model {
            return Err(ModelNotServed::new(id, target.model()).into());
        }
        let now = Instant::now();
        let worth_waiting = |until: Instant| {
            deadline.is_none_or(|d| until <= d) && wants.max_wait.is_none_or(|wait| until <= now + wait)
        };
        let cooling = why.cooling_until.filter(|&until| worth_waiting(until));
        if why.full || cooling.is_some() {
            // A slot frees, a key comes back, or the cooldown ends; the
            // deadline layer outside bounds the wait.
            // Past the deadline only a freed slot can help (the deadline layer
            // outside ends the wait): no timer, or it would fire at once, forever.
            // A key full on other replicas' account is looked at again at
            // its recheck time, unless a slot frees first.
            let wake = [cooling, why.recheck_at].into_iter().flatten().min();
            match wake.or(deadline.filter(|&d| d > now)) {
                Some(wake) => {
                    tokio::select! {
                        () = &mut freed => {}
                        () = sleep_until(wake) => {}
                    }
                }
                None => freed.await,
            }
            continue;
        }
        // The request failed on every key it could use (transient failures
        // exclude): that is the upstream's failure (502, with its last error),
        // not a 429 whose `Retry-After` names another key's long cooldown.
        if why.excluded && required.is_none() {
            return Err(KeysExhausted::new(id).into());
        }
        // A key over budget is as good as one out of quota: back when its
        // period ends (or never, for a `total` budget).
        let back = [why.cooling_until, why.budget_until].into_iter().flatten().min();
        if let Some(until) = back {
            // 429 only when the wait is a rate limit's, a quota's or a
            // budget's; keys resting after upstream failures are the
            // upstream's trouble.
            return Err(if why.rate_limited || why.over_budget {
                AllKeysCooling::new(id, target.model(), until - now).into()
            } else {
                KeysRecovering::new(id, target.model(), until - now).into()
            });
        }
        if let Some(required) = required {
            let state = if why.over_budget {
                "over its budget"
            } else if why.invalid_until.is_some() {
                "invalid"
            } else {
                "disabled"
            };
            let why = format!("key {}, which is {state}", required.key);
            return Err(ResponseKeyUnavailable::new(&required.response_id, why).into());
        }
        return Err(NoUsableKey::new(id, why.invalid_until.map(|t| t - now)).into());
    }
}
