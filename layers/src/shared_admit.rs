//! `SharedAdmitLayer`: the limits replicas share, checked for the key
//! KeySelect chose.
//!
//! When the pool has a [`SharedAdmission`](crate::pool::SharedAdmission)
//! (the binary's Redis) and the chosen key a concurrency cap, windows or a
//! budget, the attempt is put to the shared store before it is sent: one
//! round trip. Admitted, the store's ticket moves into the response body
//! (a stream holds its slot until it ends) and the answer's usage settles
//! it. Refused, the key is marked full here until the store's time and the
//! layer fails at once with [`KeyBusy`], which RetryRotate answers by
//! choosing again, with no penalty for the key. A store that does not
//! answer in time admits: this replica's own limits still hold.
//!
//! Without a shared store, or for a key with no such limit, the request
//! goes straight through. Reads [`KeyLease`] and [`RouteTarget`].
//!
//! ```
//! use std::{future::Future, pin::Pin, sync::Arc};
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use keyrelay_layers::{
//!     error::KeyBusy, extensions::{Endpoint, RouteTarget},
//!     pool::{Admission, AdmissionAsk, KeyPool, ProviderOptions, Refusal, RefusalReason, Secret, Selection, SharedAdmission},
//!     provider::{Provider, ProviderId}, shared_admit::SharedAdmitLayer, BoxError,
//! };
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! /// Every other replica holds the key's one slot.
//! #[derive(Debug)]
//! struct Busy;
//! impl SharedAdmission for Busy {
//!     fn admit(&self, _: AdmissionAsk) -> Pin<Box<dyn Future<Output = Admission> + Send>> {
//!         Box::pin(async { Admission::Refused(Refusal::new(RefusalReason::Slots, u64::MAX)) })
//!     }
//! }
//!
//! # tokio_test::block_on(async {
//! let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
//! let options = ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(1);
//! let pool = KeyPool::builder()
//!     .provider_with(openai, options, vec![Secret::new("sk-1")])
//!     .admission(Arc::new(Busy))
//!     .build()
//!     .unwrap();
//! let (lease, _in_flight) = pool.provider("openai").unwrap().lease().unwrap();
//!
//! let svc = SharedAdmitLayer::new().layer(service_fn(|_: Request<Bytes>| async {
//!     Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new()))
//! }));
//! let mut req = Request::new(Bytes::new());
//! req.extensions_mut().insert(RouteTarget::new(ProviderId::new("openai"), "", Endpoint::ChatCompletions, false));
//! req.extensions_mut().insert(lease);
//! let err = svc.oneshot(req).await.unwrap_err();
//! assert!(err.downcast_ref::<KeyBusy>().is_some(), "choose another key");
//! assert!(pool.provider("openai").unwrap().lease().is_none(), "full here too, for now");
//! # });
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    BoxError,
    body::GuardedBody,
    error::KeyBusy,
    extensions::RouteTarget,
    pool::{Admission, KeyLease, TicketRelease},
};

/// Applies [`SharedAdmit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedAdmitLayer {
    _private: (),
}

impl SharedAdmitLayer {
    /// The shared store comes from each lease's pool.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for SharedAdmitLayer {
    type Service = SharedAdmit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SharedAdmit { inner }
    }
}

/// Puts each attempt to the shared store first; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct SharedAdmit<S> {
    inner: S,
}

impl<S> SharedAdmit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type AdmitFuture = Pin<Box<dyn Future<Output = Admission> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for SharedAdmit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody, TicketRelease>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ask = req.extensions().get::<KeyLease>().and_then(|lease| {
            let model = req.extensions().get::<RouteTarget>().map_or("", RouteTarget::model);
            let asked_at = lease.freed_seq();
            lease.admission(model).map(|(store, ask)| (lease.clone(), asked_at, store.admit(ask)))
        });
        let state = match ask {
            None => State::Called { inner: self.inner.call(req), release: None },
            Some((lease, asked_at, admit)) => {
                // The ready service goes with the request; a clone takes its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Asking { admit, pending: Some((inner, req, lease, asked_at)) }
            }
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The [`SharedAdmit`] future.
    pub struct ResponseFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        Asking { admit: AdmitFuture, pending: Option<(S, Request<B>, KeyLease, u64)> },
        Called { #[pin] inner: S::Future, release: Option<TicketRelease> },
    }
}

impl<S: Service<Request<B>>, B> fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<ResBody, TicketRelease>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Asking { admit, pending } => {
                    let admission = ready!(admit.as_mut().poll(cx));
                    let (mut inner, req, lease, asked_at) = pending.take().expect("polled after completion");
                    let model = req.extensions().get::<RouteTarget>().map_or("", RouteTarget::model);
                    let release = match admission {
                        Admission::Admitted { ticket, spent_nanos } => {
                            lease.admitted(spent_nanos);
                            lease.hold_ticket(&ticket);
                            Some(TicketRelease::new(ticket))
                        }
                        Admission::Refused(refusal) => {
                            lease.refused(model, refusal, asked_at);
                            return Poll::Ready(Err(KeyBusy::new(lease.key_id().as_str()).into()));
                        }
                        Admission::Local => None,
                    };
                    let call = inner.call(req);
                    self.as_mut().project().state.set(State::Called { inner: call, release });
                }
                StateProj::Called { inner, release } => {
                    let res = ready!(inner.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(res.map(|body| GuardedBody::new(body, release.take()))));
                }
            }
        }
    }
}
