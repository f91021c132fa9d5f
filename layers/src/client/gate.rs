//! `ClientGateLayer`: a client key's models, limits and budget, enforced
//! once Parse knows the request's model and before any upstream key is
//! spent on it.
//!
//! For a request that carries a [`Client`] (put there by Auth):
//! 1. a model outside the client's list is refused with 403
//!    `model_not_allowed`;
//! 2. the request's maximum cost ([`RouteTarget::max_cost`]) is reserved
//!    from the client's budget, or it is refused with 429 `budget_exceeded`
//!    (`Retry-After` at the period's end);
//! 3. it must fit the client's `max_parallel`, `rpm` and `tpm`, or it is
//!    refused with 429 `rate_limit_exceeded` and `Retry-After`.
//!
//! With replicas sharing a store ([`KeyPool::admission`]), a request this
//! replica admits is then put to the store, which counts every replica's
//! requests against the same `max_parallel`, `rpm`, `tpm` and budget (one
//! round trip, only for a client with any of them); refused there, it takes
//! back its place here and gets the same 429. A store that does not answer
//! in time leaves this replica's limits alone in force.
//!
//! The admitted request counts in flight until its response body ends; then
//! its real cost (from its [`RequestRecord`]'s usage and the pool's prices)
//! replaces the reservation, and its real tokens the `tpm` estimate. A
//! request without a client (the proxy key) passes untouched.
//!
//! Reads [`Client`], [`RouteTarget`] and [`RequestRecord`].
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use keyrelay_layers::{
//!     BoxError, ProxyBody,
//!     client::{ClientDirectory, ClientPolicy, gate::ClientGateLayer, key_digest},
//!     extensions::{Endpoint, RouteTarget},
//!     pool::KeyPool,
//!     provider::ProviderId,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let pool = KeyPool::builder().build().unwrap();
//! let clients = ClientDirectory::default();
//! let policy = ClientPolicy::new("ci").models(&["openai/gpt-4o-mini".to_owned()]);
//! clients.set_configured(vec![(key_digest("kr-1"), policy)]);
//! let client = clients.find("kr-1", 0).unwrap();
//! let gate = ClientGateLayer::new(pool).layer(service_fn(|_req: Request<Bytes>| async {
//!     Ok::<_, BoxError>(Response::new(http_body_util::Empty::<Bytes>::new().map_err(Into::into).boxed_unsync()))
//! }));
//! let asking = |model: &str| {
//!     let mut req = Request::new(Bytes::new());
//!     req.extensions_mut().insert(client.clone());
//!     req.extensions_mut().insert(RouteTarget::new(ProviderId::new("openai"), model, Endpoint::ChatCompletions, false));
//!     req
//! };
//! assert!(gate.clone().oneshot(asking("gpt-4o-mini")).await.is_ok());
//! let refused = gate.oneshot(asking("o3")).await.unwrap_err();
//! assert!(refused.to_string().contains("may not use model `openai/o3`"));
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{
    Client,
    state::{Admitted, LimitHit},
};
use crate::{
    BoxError, ProxyBody,
    budget::{Budget, BudgetHold},
    error::{BudgetExceeded, ClientModelNotAllowed, ClientRateLimited},
    extensions::RouteTarget,
    pool::{Admission, AdmissionAsk, BudgetAsk, KeyPool, Refusal, RefusalReason, SharedTicket, TicketRelease},
    record::RequestRecord,
};

/// Applies [`ClientGate`].
#[derive(Clone, Debug)]
pub struct ClientGateLayer {
    pool: Arc<KeyPool>,
}

impl ClientGateLayer {
    /// Prices (for budgets) and the clock come from `pool`.
    pub fn new(pool: Arc<KeyPool>) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for ClientGateLayer {
    type Service = ClientGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientGate { inner, pool: self.pool.clone() }
    }
}

/// Enforces a client key's policy; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ClientGate<S> {
    inner: S,
    pool: Arc<KeyPool>,
}

impl<S> Service<Request<Bytes>> for ClientGate<S>
where
    S: Service<Request<Bytes>, Response = Response<ProxyBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let Some(client) = req.extensions().get::<Arc<Client>>().cloned() else {
            return ResponseFuture::called(self.inner.call(req), None);
        };
        let pass = match self.admit(&client, &req) {
            Ok(pass) => pass,
            // The inner service was made ready and is not called: fine for
            // the services of this stack, whose readiness reserves nothing.
            Err(err) => return ResponseFuture { state: State::Refused { err: Some(err) } },
        };
        match self.ask_shared(&client, &req, &pass) {
            None => ResponseFuture::called(self.inner.call(req), Some(pass)),
            Some(admit) => {
                // The ready service goes with the request; a clone takes its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture { state: State::Asking { admit, pending: Some((inner, req, pass, client)) } }
            }
        }
    }
}

/// What an admitted request holds until its body ends.
struct Pass {
    pool: Arc<KeyPool>,
    record: Option<RequestRecord>,
    admitted: Admitted,
    hold: Option<BudgetHold>,
    /// The shared store's ticket, when it admitted the request too.
    ticket: Option<(Arc<dyn SharedTicket>, TicketRelease)>,
}

impl<S> ClientGate<S> {
    fn admit(&self, client: &Arc<Client>, req: &Request<Bytes>) -> Result<Pass, BoxError> {
        let policy = client.policy();
        let target = req.extensions().get::<RouteTarget>();
        if let Some(target) = target
            && !policy.allows(target.provider().as_str(), target.model(), target.alias())
        {
            let asked =
                target.alias().map_or_else(|| format!("{}/{}", target.provider(), target.model()), str::to_owned);
            return Err(ClientModelNotAllowed::new(&policy.name, &asked).into());
        }
        let now = self.pool.clock().now_unix_ms();
        let hold = match client.state().budget() {
            Some(meter) => {
                let max_cost = target.and_then(|t| t.max_cost(self.pool.prices())).unwrap_or(0.0);
                let hold = meter.try_reserve(now, max_cost).map_err(|spent| {
                    let after = spent.resets_at.map(|at| Duration::from_millis(at.saturating_sub(now)));
                    BudgetExceeded::new(&policy.name, spent.limit_usd, spent.period.as_str(), after)
                })?;
                Some(hold)
            }
            None => None,
        };
        let tokens = target.map_or(0, RouteTarget::estimated_tokens);
        let admitted = client.state().admit(policy, now / 1000, tokens).map_err(|hit| {
            let (limit, from_second) = match hit {
                LimitHit::Parallel(max) => (format!("{max} requests in flight (max_parallel)"), now / 1000 + 1),
                LimitHit::Rpm(rpm, from) => (format!("{rpm} requests per minute (rpm)"), from),
                LimitHit::Tpm(tpm, from) => (format!("{tpm} tokens per minute (tpm)"), from),
            };
            ClientRateLimited::new(&policy.name, limit, Duration::from_millis((from_second * 1000).saturating_sub(now)))
        })?;
        let record = req.extensions().get::<RequestRecord>().cloned();
        Ok(Pass { pool: self.pool.clone(), record, admitted, hold, ticket: None })
    }

    /// The shared store's verdict on a request admitted here, when the
    /// pool has a store and the client limits it shares.
    fn ask_shared(&self, client: &Client, req: &Request<Bytes>, pass: &Pass) -> Option<AdmitFuture> {
        let store = self.pool.admission()?;
        let now = self.pool.clock().now_unix_ms();
        let budget = client
            .state()
            .budget()
            .map(|meter| BudgetAsk::of(&meter, now, pass.hold.as_ref().map_or(0.0, BudgetHold::reserved)));
        let tokens = req.extensions().get::<RouteTarget>().map_or(0, RouteTarget::estimated_tokens);
        let ask = AdmissionAsk::client(client.policy(), tokens, budget)?;
        Some(store.admit(ask))
    }
}

/// The error of a request the shared store refused for its client.
fn shared_refusal(client: &Client, refusal: Refusal, now: u64) -> BoxError {
    let policy = client.policy();
    let after = Duration::from_millis(refusal.retry_at_unix_ms.saturating_sub(now));
    match refusal.reason {
        RefusalReason::BudgetSpent | RefusalReason::BudgetReserved => {
            let budget = policy.budget.unwrap_or_else(|| Budget::new(0.0, crate::budget::BudgetPeriod::Total));
            let resets = budget.period.end(now).map(|at| Duration::from_millis(at.saturating_sub(now)));
            BudgetExceeded::new(&policy.name, budget.limit_usd, budget.period.as_str(), resets).into()
        }
        RefusalReason::Slots => {
            let max = policy.max_parallel.unwrap_or_default();
            let limit = format!("{max} requests in flight (max_parallel) over all replicas");
            ClientRateLimited::new(&policy.name, limit, after.max(Duration::from_secs(1))).into()
        }
        _ => {
            let limit = match (policy.rpm, policy.tpm) {
                (Some(rpm), None) => format!("{rpm} requests per minute (rpm) over all replicas"),
                (None, Some(tpm)) => format!("{tpm} tokens per minute (tpm) over all replicas"),
                _ => "its requests or tokens per minute (rpm, tpm) over all replicas".to_owned(),
            };
            ClientRateLimited::new(&policy.name, limit, after.max(Duration::from_secs(1))).into()
        }
    }
}

type AdmitFuture = Pin<Box<dyn Future<Output = Admission> + Send>>;

pin_project! {
    /// The [`ClientGate`] future.
    pub struct ResponseFuture<S: Service<Request<Bytes>>> {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Bytes>>> {
        Asking { admit: AdmitFuture, pending: Option<(S, Request<Bytes>, Pass, Arc<Client>)> },
        Called { #[pin] inner: S::Future, pass: Option<Pass> },
        Refused { err: Option<BoxError> },
    }
}

impl<S: Service<Request<Bytes>>> ResponseFuture<S> {
    fn called(inner: S::Future, pass: Option<Pass>) -> Self {
        Self { state: State::Called { inner, pass } }
    }
}

impl<S: Service<Request<Bytes>>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Bytes>, Response = Response<ProxyBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Asking { admit, pending } => {
                    let admission = ready!(admit.as_mut().poll(cx));
                    let (mut inner, req, mut pass, client) = pending.take().expect("polled after completion");
                    let now = pass.pool.clock().now_unix_ms();
                    match admission {
                        Admission::Admitted { ticket, spent_nanos } => {
                            observe_spent(&client, now, spent_nanos);
                            pass.ticket = Some((ticket.clone(), TicketRelease::new(ticket)));
                        }
                        Admission::Refused(refusal) => {
                            observe_spent(&client, now, refusal.spent_nanos);
                            pass.admitted.cancel(now / 1000);
                            return Poll::Ready(Err(shared_refusal(&client, refusal, now)));
                        }
                        Admission::Local => {}
                    }
                    let call = inner.call(req);
                    self.as_mut().project().state.set(State::Called { inner: call, pass: Some(pass) });
                }
                StateProj::Called { inner, pass } => {
                    let res = ready!(inner.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(match pass.take() {
                        Some(pass) => res.map(|body| GatedBody { inner: body, pass: Some(pass) }.boxed_unsync()),
                        None => res,
                    }));
                }
                StateProj::Refused { err } => return Poll::Ready(Err(err.take().expect("polled after completion"))),
            }
        }
    }
}

/// What the shared store says the client spent, for its meter here.
fn observe_spent(client: &Client, now: u64, spent_nanos: Option<u64>) {
    if let (Some(meter), Some(spent)) = (client.state().budget(), spent_nanos) {
        meter.observe_spent(now, spent);
    }
}

pin_project! {
    /// The answer of an admitted request: when it ends (or is dropped), the
    /// request's real cost and tokens replace its reservations, and it
    /// stops counting in flight.
    struct GatedBody {
        #[pin]
        inner: ProxyBody,
        pass: Option<Pass>,
    }

    impl PinnedDrop for GatedBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pass) = this.project().pass.take() {
                pass.settle();
            }
        }
    }
}

impl Pass {
    fn settle(self) {
        let now = self.pool.clock().now_unix_ms();
        let usage = self.record.as_ref().and_then(RequestRecord::usage);
        let route = self.record.as_ref().and_then(RequestRecord::route);
        if let Some(usage) = usage {
            self.admitted.reconcile(now / 1000, usage.prompt_tokens.saturating_add(usage.completion_tokens));
        }
        let cost = route
            .zip(usage)
            .and_then(|(route, usage)| self.pool.prices().cost(route.provider.as_str(), &route.model, usage));
        if let Some((ticket, _release)) = &self.ticket {
            let tokens = usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens));
            ticket.settle(tokens, cost.map(crate::pool::nanos));
        }
        if let Some(hold) = self.hold {
            hold.settle(now, cost);
        }
    }
}

impl Body for GatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        // The usage is on the record once the inner body ended: settle at
        // once, not when the server gets round to dropping the body.
        if (matches!(frame, None | Some(Err(_))) || this.inner.is_end_stream())
            && let Some(pass) = this.pass.take()
        {
            pass.settle();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
