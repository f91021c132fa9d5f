//! Path and method to service. No framework: a match over a handful of
//! paths. Unknown paths are 404 and wrong methods 405 (with `Allow`), both
//! before auth, like OpenAI's own API.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Method, Request, Response};
use keyrelay_layers::{
    BoxError, ProxyBody,
    error::{MethodNotAllowed, RouteNotFound},
};
use tower::{Service, ServiceExt, util::BoxCloneSyncService, util::Oneshot};

/// A route's service, boxed so that routes of different shapes fit one table.
pub type RouteService<B> = BoxCloneSyncService<Request<B>, Response<ProxyBody>, BoxError>;

/// The routes keyrelay serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Proxy,
    Models,
    Providers,
    Keys,
    /// `POST /v1/keys/{id}/{disable|enable|reset}`
    KeyAction,
    TokenCount,
    Metrics,
    /// `POST /v1/admin/reload`
    AdminReload,
}

impl Route {
    /// Recognises a path; the `/v1` prefix is optional on OpenAI routes so
    /// that clients configured with or without it both work.
    pub fn recognize(path: &str) -> Option<(Self, &'static str)> {
        match path {
            "/health" => return Some((Self::Health, "GET")),
            "/metrics" => return Some((Self::Metrics, "GET")),
            _ => {}
        }
        let path = path.strip_prefix("/v1").unwrap_or(path).trim_end_matches('/');
        match path {
            "/chat/completions" | "/embeddings" => Some((Self::Proxy, "POST")),
            "/models" => Some((Self::Models, "GET")),
            "/providers" => Some((Self::Providers, "GET")),
            "/keys" => Some((Self::Keys, "GET")),
            "/token-count" => Some((Self::TokenCount, "POST")),
            "/admin/reload" => Some((Self::AdminReload, "POST")),
            _ if path.starts_with("/keys/") => Some((Self::KeyAction, "POST")),
            _ => None,
        }
    }
}

/// Dispatches each request to its route's service. Cloning it (once per
/// request, by the server) shares the table; only the route a request takes
/// is cloned for it.
#[derive(Debug)]
pub struct Router<B> {
    routes: std::sync::Arc<Routes<B>>,
}

impl<B> Router<B> {
    pub fn new(routes: Routes<B>) -> Self {
        Self { routes: std::sync::Arc::new(routes) }
    }
}

/// Each route's service.
#[derive(Debug)]
pub struct Routes<B> {
    pub health: RouteService<B>,
    pub proxy: RouteService<B>,
    pub models: RouteService<B>,
    pub providers: RouteService<B>,
    pub keys: RouteService<B>,
    pub key_action: RouteService<B>,
    pub token_count: RouteService<B>,
    pub metrics: RouteService<B>,
    pub admin_reload: RouteService<B>,
}

impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Self { routes: self.routes.clone() }
    }
}

impl<B> Service<Request<B>> for Router<B> {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<ProxyBody>, BoxError>>, Oneshot<RouteService<B>, Request<B>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Which route is busy depends on the request, so readiness is
        // decided per request: `call` drives the chosen route with `oneshot`,
        // which waits for that route's own readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some((route, method)) = Route::recognize(req.uri().path()) else {
            return Either::Left(ready(Err(RouteNotFound::new(req.uri().path()).into())));
        };
        let allowed = req.method().as_str() == method || (method == "GET" && req.method() == Method::HEAD);
        if !allowed {
            return Either::Left(ready(Err(MethodNotAllowed::new(method).into())));
        }
        let routes = &*self.routes;
        let svc = match route {
            Route::Health => &routes.health,
            Route::Proxy => &routes.proxy,
            Route::Models => &routes.models,
            Route::Providers => &routes.providers,
            Route::Keys => &routes.keys,
            Route::KeyAction => &routes.key_action,
            Route::TokenCount => &routes.token_count,
            Route::Metrics => &routes.metrics,
            Route::AdminReload => &routes.admin_reload,
        };
        Either::Right(svc.clone().oneshot(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_routes_with_and_without_v1() {
        assert_eq!(Route::recognize("/v1/chat/completions"), Some((Route::Proxy, "POST")));
        assert_eq!(Route::recognize("/chat/completions"), Some((Route::Proxy, "POST")));
        assert_eq!(Route::recognize("/v1/embeddings/"), Some((Route::Proxy, "POST")));
        assert_eq!(Route::recognize("/v1/models"), Some((Route::Models, "GET")));
        assert_eq!(Route::recognize("/health"), Some((Route::Health, "GET")));
        assert_eq!(Route::recognize("/v1/keys/openai:1a2b3c4d/reset"), Some((Route::KeyAction, "POST")));
        assert_eq!(Route::recognize("/v1/health"), None);
        assert_eq!(Route::recognize("/v1/completions"), None);
        assert_eq!(Route::recognize("/"), None);
    }
}
