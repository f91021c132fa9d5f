//! THE function that assembles keyrelay: every layer, top-down in request
//! order, each with the reason it sits where it does.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, Request, Response, header::AUTHORIZATION};
use http_body::Body;
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError, ProxyBody,
    auth::AuthLayer,
    body::LeasedBody,
    log::{LoggedBody, RequestLogLayer},
    parse::ParseLayer,
    pool::{KeyPool, Secret},
    respond::{ErrorResponseLayer, ResponseBody},
    select::KeySelectLayer,
    timeout::{DeadlineBody, DeadlineLayer},
    upstream::{HttpsClient, ModelCatalog, UpstreamService},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::routes::{RouteService, Router};

/// Everything the stack is built from: shared state and settings.
#[derive(Clone, Debug)]
pub struct App {
    pub pool: Arc<KeyPool>,
    pub client: HttpsClient,
    pub catalog: Arc<ModelCatalog>,
    pub proxy_key: Option<Secret>,
    pub global_timeout: Duration,
    pub max_body_bytes: usize,
    /// Providers named in config or env, listed by `/v1/providers` even
    /// without keys.
    pub configured_providers: Vec<String>,
}

/// The response body the server writes.
pub type AppBody = LoggedBody<ResponseBody<ProxyBody>>;

/// Builds the whole service for request bodies of type `B` (hyper's
/// `Incoming` in the server; anything in tests).
pub fn build<B>(
    app: &App,
) -> impl Service<Request<B>, Response = Response<AppBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let auth = match &app.proxy_key {
        Some(key) => AuthLayer::require(key.clone()),
        None => AuthLayer::disabled(),
    };

    let proxy = ServiceBuilder::new()
        // Route services share one body type.
        .map_response(|res: Response<DeadlineBody<LeasedBody<ProxyBody>>>| {
            res.map(|body| body.boxed_unsync())
        })
        // Reject strangers before doing any work for them; also strips the
        // client's credentials so they can never be forwarded.
        .layer(auth.clone())
        // One clock for the whole request: body read, key choice, upstream
        // call up to the response headers. Inner layers read it as an extension.
        .layer(DeadlineLayer::new(app.global_timeout))
        // Read the body once (bounded) and learn provider, model and stream;
        // everything inside works on `Request<Bytes>`.
        .layer(ParseLayer::new(app.pool.clone(), app.max_body_bytes))
        // Choose the key; it counts in flight until the response body ends.
        .layer(KeySelectLayer::new(app.pool.clone()))
        // Rewrite for the provider and send over the pooled client; the
        // response streams back untouched.
        .service(UpstreamService::new(app.client.clone()));

    let router = Router {
        health: route(service_fn(|_: Request<B>| async {
            Ok::<_, Infallible>(crate::status::health())
        })),
        proxy: BoxCloneSyncService::new(proxy),
        models: {
            let (pool, catalog) = (app.pool.clone(), app.catalog.clone());
            route(auth.layer(service_fn(move |_: Request<B>| {
                crate::status::models(pool.clone(), catalog.clone())
            })))
        },
        providers: {
            let (pool, configured) = (app.pool.clone(), Arc::new(app.configured_providers.clone()));
            route(auth.layer(service_fn(move |_: Request<B>| {
                std::future::ready(Ok::<_, Infallible>(crate::status::providers(
                    &pool,
                    &configured,
                )))
            })))
        },
        keys: {
            let pool = app.pool.clone();
            route(auth.layer(service_fn(move |_: Request<B>| {
                std::future::ready(Ok::<_, Infallible>(crate::status::keys(&pool)))
            })))
        },
    };

    ServiceBuilder::new()
        // Mark credentials sensitive before anything could log a header.
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ]))
        // Outermost observer: sees every request, including refused ones,
        // and the final status after errors became responses.
        .layer(RequestLogLayer::new())
        // The one place errors become OpenAI-shaped responses.
        .layer(ErrorResponseLayer::new())
        .service(router)
}

fn route<S, B, E>(svc: S) -> RouteService<B>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    E: Into<BoxError> + 'static,
{
    BoxCloneSyncService::new(svc.map_err(Into::into))
}
