//! `ParseLayer`: reads the request body once and finds where it goes.
//!
//! The body is read whole, bounded by `max_body_bytes` (413 above it, checked
//! against `Content-Length` before reading when the client sends one), and
//! kept as [`Bytes`] so that every later attempt can resend it without
//! copying. Only `model` and `stream` are looked at; the rest of the JSON is
//! validated but never re-serialised. `model` is `provider/model`, split at
//! the first `/`, so `openrouter/meta-llama/llama-3-70b` goes to provider
//! `openrouter` with model `meta-llama/llama-3-70b`.
//!
//! Reads the [`Endpoint`] a router recognised (else the path); writes
//! [`RouteTarget`], and the provider and model into the request's
//! [`RequestRecord`]. Fails with [`InvalidBody`], [`MissingModel`],
//! [`InvalidModel`], [`UnknownProvider`] (400), [`BodyTooLarge`] (413) or
//! [`RouteNotFound`] (404) for a path that is not a proxied endpoint.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use keyrelay_layers::{extensions::RouteTarget, parse::ParseLayer, pool::KeyPool, provider::Provider, BoxError};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio_test::block_on(async {
//! let provider = Provider::openai_compatible("openrouter", "https://openrouter.ai/api/v1").unwrap();
//! let pool = KeyPool::builder().provider(provider, Default::default(), vec![]).build().unwrap();
//! let svc = ParseLayer::new(pool, 1 << 20).layer(service_fn(|req: Request<Bytes>| async move {
//!     let target = req.extensions().get::<RouteTarget>().unwrap();
//!     assert_eq!((target.provider().as_str(), target.model()), ("openrouter", "meta-llama/llama-3-70b"));
//!     Ok::<_, BoxError>(Response::new(()))
//! }));
//! let body = r#"{"model": "openrouter/meta-llama/llama-3-70b", "messages": []}"#;
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
//! svc.oneshot(req).await.unwrap();
//! # });
//! ```

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, header::CONTENT_LENGTH};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower::{Layer, Service, ServiceExt};

use crate::{
    BoxError,
    error::{BodyTooLarge, InvalidBody, InvalidModel, MissingModel, RouteNotFound, UnknownProvider},
    extensions::{Endpoint, RouteTarget},
    pool::KeyPool,
    record::RequestRecord,
};

/// Applies [`Parse`].
#[derive(Clone, Debug)]
pub struct ParseLayer {
    pool: Arc<KeyPool>,
    max_body_bytes: usize,
}

impl ParseLayer {
    /// `pool` says which providers exist; bodies above `max_body_bytes` are
    /// refused with 413.
    pub fn new(pool: Arc<KeyPool>, max_body_bytes: usize) -> Self {
        Self { pool, max_body_bytes }
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Parse { inner, pool: self.pool.clone(), max_body_bytes: self.max_body_bytes }
    }
}

/// Buffers the body and inserts [`RouteTarget`]; see the [module docs](self).
#[derive(Clone)]
pub struct Parse<S> {
    inner: S,
    pool: Arc<KeyPool>,
    max_body_bytes: usize,
}

impl<S: fmt::Debug> fmt::Debug for Parse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parse").field("inner", &self.inner).field("max_body_bytes", &self.max_body_bytes).finish()
    }
}

impl<S> Parse<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Bytes>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready to read a body: the inner service's readiness is
        // taken once the body is in, so a slow upload holds nothing inside.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let pool = self.pool.clone();
        let limit = self.max_body_bytes;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // The router, when there is one, has already said which endpoint.
            let endpoint = match parts.extensions.get::<Endpoint>() {
                Some(endpoint) => *endpoint,
                None => Endpoint::from_path(parts.uri.path()).ok_or_else(|| RouteNotFound::new(parts.uri.path()))?,
            };
            let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit as u64) {
                return Err(BodyTooLarge::new(limit as u64).into());
            }
            let bytes = read_bounded(body, limit).await?;
            let target = route_target(&bytes, endpoint, &pool)?;
            if let Some(record) = parts.extensions.get::<RequestRecord>()
                && let Some(provider) = pool.provider(target.provider().as_str())
            {
                let label = provider.model_label(target.model());
                record.set_route(target.provider().clone(), target.model_arc(), label);
            }
            parts.extensions.insert(target);
            let inner = inner.ready().await.map_err(Into::into)?;
            inner.call(Request::from_parts(parts, bytes)).await.map_err(Into::into)
        })
    }
}

async fn read_bounded<B>(body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyTooLarge::new(limit as u64).into()),
        Err(err) => Err(InvalidBody::new(format_args!("could not read it: {err}")).into()),
    }
}

/// The two fields the proxy needs; serde still checks the whole document.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    /// `Some` whenever the key is there, `null` included: the usage
    /// request must then replace it, not add a second `stream_options`.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(value).map(Some)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Finds provider, model and stream flag in a JSON request body.
pub fn route_target(body: &[u8], endpoint: Endpoint, pool: &KeyPool) -> Result<RouteTarget, BoxError> {
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(InvalidBody::new)?;
    let raw = probe.model.ok_or_else(MissingModel::new)?;
    let model: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| InvalidModel::not_a_string())?;
    let (provider, upstream_model) = match model.split_once('/') {
        Some((provider, upstream_model)) if !provider.is_empty() && !upstream_model.is_empty() => {
            (provider, upstream_model)
        }
        _ => return Err(InvalidModel::new(&model).into()),
    };
    let provider = pool
        .provider(provider)
        .ok_or_else(|| UnknownProvider::new(provider, pool.providers().map(|p| p.provider().id().as_str())))?
        .provider()
        .id()
        .clone();
    // The raw value borrows from `body`, so its address gives its position:
    // the upstream can swap the model token without re-serialising the body.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let span = start..start + raw.get().len();
    // Read here once, so that the upstream need not parse the body again.
    let include_usage = probe
        .stream_options
        .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
        .is_some_and(|options| options.include_usage);
    Ok(RouteTarget::new(provider, upstream_model, endpoint, probe.stream.unwrap_or(false))
        .with_model_span(span)
        .with_stream_options(probe.stream_options.is_some(), include_usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{error::ErrorReply, pool::Secret, provider::Provider};

    fn pool() -> Arc<KeyPool> {
        let p = |id| Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap();
        KeyPool::builder()
            .provider(p("openai"), Default::default(), vec![Secret::new("k")])
            .provider(p("openrouter"), Default::default(), vec![])
            .build()
            .unwrap()
    }

    fn parse(body: &str) -> Result<RouteTarget, u16> {
        route_target(body.as_bytes(), Endpoint::ChatCompletions, &pool())
            .map_err(|err| ErrorReply::from_error(&*err).status.as_u16())
    }

    #[test]
    fn splits_model_at_the_first_slash() {
        let t = parse(r#"{"model":"openrouter/meta-llama/llama-3-70b"}"#).unwrap();
        assert_eq!((t.provider().as_str(), t.model()), ("openrouter", "meta-llama/llama-3-70b"));
        assert!(!t.stream());
    }

    #[test]
    fn reads_stream_and_records_the_model_token_span() {
        let body = r#"{ "stream" : true, "model" :  "openai/gpt-4o" , "messages": [] }"#;
        let t = parse(body).unwrap();
        assert!(t.stream());
        assert_eq!(&body[t.model_span().unwrap()], r#""openai/gpt-4o""#);
    }

    #[test]
    fn reads_stream_options_once_for_the_layers_inside() {
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(t.has_stream_options() && t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":{"other":1}}"#).unwrap();
        assert!(t.has_stream_options() && !t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true}"#).unwrap();
        assert!(!t.has_stream_options() && !t.wants_usage());
        let t = parse(r#"{"model":"openai/x","stream":true,"stream_options":null}"#).unwrap();
        assert!(t.has_stream_options() && !t.wants_usage(), "a null is there, to be replaced");
    }

    #[test]
    fn escaped_model_strings_are_understood() {
        let body = r#"{"model":"openai\/gpt-4o"}"#;
        let t = parse(body).unwrap();
        assert_eq!(t.model(), "gpt-4o");
        assert_eq!(&body[t.model_span().unwrap()], r#""openai\/gpt-4o""#);
    }

    #[test]
    fn bad_input_is_a_400_never_a_500() {
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"messages":[]}"#,
            r#"{"model":42}"#,
            r#"{"model":null}"#,
            r#"{"model":"gpt-4o"}"#,
            r#"{"model":"/gpt-4o"}"#,
            r#"{"model":"openai/"}"#,
            r#"{"model":"nope/gpt-4o"}"#,
            r#"{"model":"openai/gpt-4o","stream":"yes"}"#,
            r#"{"model":"openai/gpt-4o","model":"openai/x"}"#,
            r#"{"model":"openai/gpt-4o""#,
        ] {
            assert_eq!(parse(body).unwrap_err(), 400, "{body}");
        }
    }

    #[test]
    fn unknown_provider_names_the_known_ones() {
        let err = route_target(br#"{"model":"nope/x"}"#, Endpoint::ChatCompletions, &pool()).unwrap_err();
        let message = ErrorReply::from_error(&*err).message;
        assert!(message.contains("`nope`") && message.contains("openai, openrouter"), "{message}");
    }
}
