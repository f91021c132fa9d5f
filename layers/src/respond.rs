//! `ErrorResponseLayer`: the one place an error becomes a response.
//!
//! Every error from the layers inside is looked up in
//! [`ErrorReply::from_error`] and answered in OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}` — or, on Anthropic's
//! and Gemini's routes, in theirs ([`Inbound::from_path`],
//! [`crate::error::shape`]) — with the status it gives,
//! plus `Retry-After` or `Allow` where they apply. From here outward the
//! error type is [`Infallible`]. The response carries an [`ErrorCode`]
//! extension for logs and metrics.
//!
//! ```
//! use http::{Request, Response};
//! use keyrelay_layers::{error::MissingModel, respond::ErrorResponseLayer, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let fails = service_fn(|_: Request<()>| async { Err::<Response<String>, BoxError>(MissingModel::new().into()) });
//! let res = ErrorResponseLayer::new().layer(fails).oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 400);
//! # });
//! ```

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, Response,
    header::{ALLOW, CONTENT_TYPE, RETRY_AFTER},
};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{
    BoxError,
    error::ErrorReply,
    extensions::{ErrorCode, Inbound},
};

/// Applies [`ErrorResponse`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer {
    _private: (),
}

impl ErrorResponseLayer {
    /// The layer; it has no settings.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner, ready_error: None }
    }
}

/// Turns errors into responses in the client's error shape; see the [module docs](self).
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    /// A `poll_ready` failure cannot be returned as `Infallible`; it is kept
    /// and answered to the next request instead.
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), ready_error: None }
    }
}

impl<S> ErrorResponse<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The body of a response that passed through [`ErrorResponse`].
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

impl<S, B, ResBody> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_none()
            && let Err(err) = ready!(self.inner.poll_ready(cx))
        {
            self.ready_error = Some(err.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inbound = Inbound::from_path(req.uri().path());
        match self.ready_error.take() {
            Some(err) => ResponseFuture { state: State::Failed { err: Some(err) }, inbound },
            None => ResponseFuture { state: State::Called { inner: self.inner.call(req) }, inbound },
        }
    }
}

pin_project! {
    /// The [`ErrorResponse`] future.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        inbound: Inbound,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] inner: F },
        Failed { err: Option<BoxError> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err = match this.state.project() {
            StateProj::Called { inner } => match ready!(inner.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(Either::Left))),
                Err(err) => err.into(),
            },
            StateProj::Failed { err } => err.take().expect("polled after completion"),
        };
        Poll::Ready(Ok(error_response_for(*this.inbound, &*err)))
    }
}

/// Builds the response for an error; public so that handlers outside a
/// stack answer the same way.
pub fn error_response<B>(err: &(dyn std::error::Error + 'static)) -> Response<Either<B, Full<Bytes>>> {
    error_response_for(Inbound::OpenAi, err)
}

/// [`error_response`] in the error shape of `inbound`'s clients.
pub fn error_response_for<B>(
    inbound: Inbound,
    err: &(dyn std::error::Error + 'static),
) -> Response<Either<B, Full<Bytes>>> {
    let reply = ErrorReply::from_error(err);
    if reply.status.is_server_error() {
        tracing::warn!(code = reply.code, status = reply.status.as_u16(), "{}", reply.message);
    } else {
        tracing::debug!(code = reply.code, status = reply.status.as_u16(), "{}", reply.message);
    }
    reply_response_for(inbound, reply).map(Either::Right)
}

/// The response for an [`ErrorReply`]: status, OpenAI-shaped JSON body,
/// `Retry-After` and `Allow` where they apply, and the [`ErrorCode`]
/// extension. For failures of your own that should read like keyrelay's.
///
/// ```
/// use http::StatusCode;
/// use keyrelay_layers::{error::ErrorReply, respond::reply_response};
///
/// let reply = ErrorReply::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "team_budget", "budget spent")
///     .with_retry_after(30);
/// let res = reply_response(reply);
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "30");
/// ```
pub fn reply_response(reply: ErrorReply) -> Response<Full<Bytes>> {
    reply_response_for(Inbound::OpenAi, reply)
}

/// [`reply_response`] in the error shape of `inbound`'s clients.
pub fn reply_response_for(inbound: Inbound, reply: ErrorReply) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(reply.to_json_for(inbound))));
    *res.status_mut() = reply.status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = reply.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = reply.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    res.extensions_mut().insert(ErrorCode(reply.code));
    res
}
