//! THE function that assembles keyrelay: every layer, top-down in request
//! order, each with the reason it sits where it does.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use keyrelay_layers::{
    BoxError, ProxyBody,
    auth::AuthLayer,
    body::GuardedBody,
    client::{ClientDirectory, gate::ClientGateLayer},
    concurrency::KeyConcurrencyLayer,
    credentials::CREDENTIAL_HEADERS,
    fallback::FallbackLayer,
    filter::ModelFilterLayer,
    log::{LoggedBody, RequestLogLayer, TeeBody},
    parse::ParseLayer,
    pool::{KeyPool, Secret},
    respond::{ErrorResponseLayer, ResponseBody},
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
    shared_admit::SharedAdmitLayer,
    shed::{Admitted, LoadShedLayer},
    timeout::{DeadlineBody, DeadlineLayer},
    upstream::{HttpsClient, ModelCatalog, UpstreamService},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::routes::{RouteService, Router, Routes};

/// Everything the stack is built from: shared state and settings.
#[derive(Clone, Debug)]
pub struct App {
    pub pool: Arc<KeyPool>,
    pub client: HttpsClient,
    pub catalog: Arc<ModelCatalog>,
    pub proxy_key: Option<Secret>,
    pub admin_key: Option<Secret>,
    pub global_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// How long a request may wait for a cooling key (within the deadline).
    pub max_cooldown_wait: Duration,
    /// Where the dialect routes send a model without a provider prefix.
    pub route_defaults: keyrelay_layers::parse::RouteDefaults,
    pub max_body_bytes: usize,
    /// Whether `GET /metrics` is served without the proxy key.
    pub metrics_open: bool,
    /// Providers named in config or env, listed by `/v1/providers` even
    /// without keys.
    pub configured_providers: Vec<String>,
    /// The ledger's database (`ledger.url`, else `keyrelay.db` in the data
    /// dir): `GET /v1/usage` reads it.
    pub usage_ledger: crate::config::ledger::LedgerBackend,
    /// Where finished requests go when request logging is on.
    pub request_log: Option<crate::request_log::RequestLogQueue>,
    /// USD spent since start (`keyrelay_cost_usd_total`); kept across reloads.
    pub cost_totals: Arc<keyrelay_layers::price::CostTotals>,
    /// The usage ledger's queue (one row per finished proxied request);
    /// kept across reloads.
    pub ledger: Option<crate::store::ledger::LedgerQueue>,
    /// The durable store (runtime clients, pool state, spend); kept across
    /// reloads.
    pub store: Option<crate::store::Store>,
    /// The cap on proxied requests in flight; shared by every stack built
    /// from this app (and kept across reloads).
    pub shed: LoadShedLayer,
    /// What `POST /v1/admin/reload` calls.
    pub reload: crate::reload::ReloadHandle,
    /// Client keys (configured and made at run time); kept across reloads.
    pub clients: Arc<ClientDirectory>,
    /// The keys' state shared on Redis (`shared.redis_url`): where the pool
    /// announces, and the tasks `serve` starts; kept across reloads.
    pub shared: Option<(Arc<crate::shared::Outbox>, Arc<crate::shared::Shared>)>,
}

/// The response body the server writes.
pub type AppBody = LoggedBody<ResponseBody<ProxyBody>>;

/// Builds the whole service for request bodies of type `B` (hyper's
/// `Incoming` in the server; anything in tests).
pub fn build<B>(
    app: &App,
) -> impl Service<Request<B>, Response = Response<AppBody>, Error = Infallible, Future: Send> + Clone + Send + use<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request_log = match &app.request_log {
        Some(queue) => RequestLogLayer::new().with_sink(Arc::new(queue.clone())),
        None => RequestLogLayer::new(),
    };
    let request_log = match &app.ledger {
        Some(queue) => request_log.with_ledger(Arc::new(queue.clone())),
        None => request_log,
    };
    let request_log = match crate::telemetry::access_log() {
        Some(access) => request_log.with_access_log(access),
        None => request_log,
    };
    let request_log = request_log.with_prices(app.pool.prices().clone(), app.cost_totals.clone());
    ServiceBuilder::new()
        // Mark credentials sensitive before anything could log a header.
        .layer(SetSensitiveRequestHeadersLayer::new(CREDENTIAL_HEADERS.iter().cloned()))
        // Outermost observer: sees every request, including refused ones,
        // and the final status after errors became responses. With request
        // logging it copies both bodies (bounded) as they pass.
        .layer(request_log)
        // The one place errors become OpenAI-shaped responses.
        .layer(ErrorResponseLayer::new())
        .service(router::<TeeBody<B>>(app))
}

/// Every route, for request bodies of type `B` (as RequestLog passes them).
fn router<B>(app: &App) -> Router<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let proxy_auth = match &app.proxy_key {
        Some(key) => AuthLayer::require(key.clone()),
        None => AuthLayer::disabled(),
    };
    // Client keys work wherever the proxy key does for models, but never
    // on key status, metrics or admin routes.
    let auth = proxy_auth.clone().with_clients(app.clients.clone());
    // Reading key status is for either key; changing keys wants the admin
    // key when there is one (the proxy key then gets 403).
    let (status_auth, admin_auth) = match (&app.admin_key, &app.proxy_key) {
        (Some(admin), Some(proxy)) => (
            AuthLayer::require_any(vec![proxy.clone(), admin.clone()]),
            AuthLayer::admin(admin.clone(), Some(proxy.clone())),
        ),
        // No proxy key (loopback only): reading is as open as the other
        // status routes; changing keys still wants the admin key.
        (Some(admin), None) => (proxy_auth.clone(), AuthLayer::admin(admin.clone(), None)),
        (None, _) => (proxy_auth.clone(), proxy_auth.clone()),
    };

    let proxy = ServiceBuilder::new()
        // Route services share one body type.
        .map_response(|res: Response<GuardedBody<DeadlineBody<ProxyBody>, Admitted>>| {
            res.map(|body| body.boxed_unsync())
        })
        // Past the cap of requests in flight, answer 503 at once rather
        // than slow everyone down; a stream holds its place until it ends.
        .layer(app.shed.clone())
        // Reject strangers before doing any work for them; also strips the
        // client's credentials so they can never be forwarded.
        .layer(auth.clone())
        // One clock for the whole request: body read, key waits, every
        // attempt and backoff, up to the first byte (the whole body unless
        // it streams). Inner layers read it as an extension.
        .layer(DeadlineLayer::new(app.global_timeout))
        // Read the body once (bounded) and learn provider, model and stream;
        // everything inside works on `Request<Bytes>`, so retries resend it.
        .layer(ParseLayer::new(app.pool.clone(), app.max_body_bytes).route_defaults(app.route_defaults.clone()))
        // Refuse models the operator blocked, before any key is spent on them.
        .layer(ModelFilterLayer::new(app.pool.clone()))
        // A client key's models, limits and budget (its maximum cost
        // reserved until the answer ends): once the model is known, before
        // any upstream key is chosen; outside Fallback, so that an alias's
        // later targets spend from the same reservation.
        .layer(ClientGateLayer::new(app.pool.clone()))
        // A model alias moves to its next target when a whole pool cannot
        // serve: outside RetryRotate, which rotates keys within one
        // provider and answers for the pool when it is spent; inside Parse
        // (the body's bytes, resent as they are) and ModelFilter (which
        // refused a blocked first target; this layer checks the others).
        .layer(FallbackLayer::new(app.pool.clone()))
        // Classify each answer, cool or mark the key, and try another; only
        // what comes out of here reaches the client (the 200 of a stream
        // waits for the upstream's success headers).
        .layer(RetryRotateLayer::new(RetryPolicy::default()))
        // Choose a key for this attempt (waiting for a slot or a cooldown
        // inside the deadline); it counts in flight until the body ends.
        .layer(KeySelectLayer::new(app.pool.clone()).max_cooldown_wait(app.max_cooldown_wait))
        // Hold the (key, model) concurrency permit until the body ends.
        .layer(KeyConcurrencyLayer::new())
        // With replicas on Redis: the caps, windows and budgets they share
        // (one round trip, only for keys that have any).
        .layer(SharedAdmitLayer::new())
        // Rewrite for the provider and send over the pooled client; the
        // response streams back untouched.
        .service(UpstreamService::new(app.client.clone()).stream_idle_timeout(app.stream_idle_timeout));

    let aliases = Arc::new(app.route_defaults.aliases().clone());
    let client_admin = crate::admin_clients::ClientAdmin {
        clients: app.clients.clone(),
        store: app.store.clone(),
        shared: app.shared.as_ref().map(|(outbox, _)| outbox.clone()),
    };
    Router::new(Routes {
        health: route(service_fn(|_: Request<B>| async {
            // Probed all day: its completion line is logged at debug level.
            let mut res = crate::status::health();
            res.extensions_mut().insert(keyrelay_layers::log::Quiet);
            Ok::<_, Infallible>(res)
        })),
        proxy: BoxCloneSyncService::new(proxy),
        models: {
            let (pool, catalog, aliases) = (app.pool.clone(), app.catalog.clone(), aliases.clone());
            route(auth.layer(service_fn(move |_: Request<B>| {
                crate::status::models(pool.clone(), catalog.clone(), aliases.clone())
            })))
        },
        model: {
            let (pool, catalog, aliases) = (app.pool.clone(), app.catalog.clone(), aliases.clone());
            route(auth.layer(service_fn(move |req: Request<B>| {
                let requested = req.extensions().get::<crate::routes::RequestedModel>().cloned();
                crate::status::model(pool.clone(), catalog.clone(), aliases.clone(), requested)
            })))
        },
        providers: {
            let (pool, configured) = (app.pool.clone(), Arc::new(app.configured_providers.clone()));
            route(auth.layer(service_fn(move |_: Request<B>| {
                std::future::ready(Ok::<_, Infallible>(crate::status::providers(&pool, &configured)))
            })))
        },
        keys: {
            let pool = app.pool.clone();
            let counters = app.shared.as_ref().map(|(_, shared)| shared.counters().clone());
            route(status_auth.layer(service_fn(move |_: Request<B>| {
                let (pool, counters) = (pool.clone(), counters.clone());
                // Polled by the dashboard and `keyrelay status` every few
                // seconds: answered at debug level, like /health.
                async move { Ok::<_, Infallible>(quiet(crate::status::keys(&pool, counters.as_deref()).await)) }
            })))
        },
        key_action: {
            let pool = app.pool.clone();
            route(admin_auth.layer(service_fn(move |req: Request<B>| {
                std::future::ready(crate::status::key_action(&pool, req.extensions().get()))
            })))
        },
        token_count: {
            let (pool, limit) = (app.pool.clone(), app.max_body_bytes);
            route(auth.layer(service_fn(move |req: Request<B>| {
                let pool = pool.clone();
                async move { crate::token_count::handle(&pool, limit, req).await }
            })))
        },
        admin_reload: {
            let handle = app.reload.clone();
            route(admin_auth.layer(service_fn(move |_: Request<B>| {
                std::future::ready(Ok::<_, Infallible>(crate::reload::answer(&handle)))
            })))
        },
        admin_clients: {
            let admin = client_admin.clone();
            route(admin_auth.layer(service_fn(move |req: Request<B>| {
                let admin = admin.clone();
                async move {
                    if req.method() == http::Method::POST {
                        crate::admin_clients::create(&admin, req).await
                    } else {
                        crate::admin_clients::list(&admin).await
                    }
                }
            })))
        },
        admin_client: {
            let admin = client_admin;
            route(admin_auth.layer(service_fn(move |req: Request<B>| {
                let admin = admin.clone();
                async move {
                    let name = req.extensions().get::<crate::routes::ClientName>().map(|n| n.0.clone());
                    let name = name.ok_or_else(|| keyrelay_layers::error::MissingExtension::new("ClientName"))?;
                    crate::admin_clients::revoke(&admin, &name).await
                }
            })))
        },
        usage: {
            let db = Arc::new(app.usage_ledger.clone());
            route(admin_auth.layer(service_fn(move |req: Request<B>| {
                crate::usage::route::answer(db.clone(), req.uri().query().map(str::to_owned))
            })))
        },
        ui_data: {
            let db = Arc::new(app.usage_ledger.clone());
            route(status_auth.layer(service_fn(move |req: Request<B>| {
                let db = db.clone();
                async move {
                    let data = req.extensions().get::<crate::ui_data::UiData>().copied();
                    let data = data.ok_or_else(|| keyrelay_layers::error::MissingExtension::new("UiData"))?;
                    let query = req.uri().query().map(str::to_owned);
                    Ok::<_, BoxError>(quiet(crate::ui_data::answer(db, data, query).await?))
                }
            })))
        },
        // The dashboard's files hold no data: no key, so a browser can load
        // the page that asks for one.
        ui: route(service_fn(|req: Request<B>| {
            let asset = req.extensions().get::<crate::routes::UiAsset>().copied();
            std::future::ready(match asset {
                Some(asset) => Ok(crate::ui::serve(asset)),
                None => Err(keyrelay_layers::error::MissingExtension::new("UiAsset")),
            })
        })),
        metrics: {
            let (pool, clients, totals) = (app.pool.clone(), app.clients.clone(), app.cost_totals.clone());
            let handle = crate::telemetry::metrics_handle();
            let scrape = service_fn(move |_: Request<B>| {
                std::future::ready(Ok::<_, Infallible>(crate::status::metrics(&pool, &clients, &totals, handle)))
            });
            let metrics_auth = if app.metrics_open { AuthLayer::disabled() } else { proxy_auth.clone() };
            route(metrics_auth.layer(scrape))
        },
    })
}

/// Marks an answer to be logged at debug level (see `log::Quiet`).
fn quiet(mut res: Response<ProxyBody>) -> Response<ProxyBody> {
    res.extensions_mut().insert(keyrelay_layers::log::Quiet);
    res
}

fn route<S, B, E>(svc: S) -> RouteService<B>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = E> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    E: Into<BoxError> + 'static,
{
    BoxCloneSyncService::new(svc.map_err(Into::into))
}
