//! Path and method to service. No framework: a match over a handful of
//! paths. Unknown paths are 404 and wrong methods 405 (with `Allow`), both
//! before auth, like OpenAI's own API.
//!
//! The router decides once what a path says and hands it on as a request
//! extension, so that no handler parses the path again: the proxy route gets
//! its [`Endpoint`], `GET /v1/models/{id}` a [`RequestedModel`], and
//! `POST /v1/keys/{id}/{action}` a [`KeyChange`], `GET /ui/...` a
//! [`UiAsset`].

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Method, Request, Response};
use keyrelay_layers::{
    BoxError, ProxyBody,
    error::{MethodNotAllowed, RouteNotFound},
    extensions::{Endpoint, gemini_path, percent_decode, response_resource},
};
use tower::{Service, ServiceExt, util::BoxCloneSyncService, util::Oneshot};

pub use crate::ui::UiAsset;

/// A route's service, boxed so that routes of different shapes fit one table.
pub type RouteService<B> = BoxCloneSyncService<Request<B>, Response<ProxyBody>, BoxError>;

/// The routes keyrelay serves, with what their paths carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'p> {
    Health,
    /// Every proxied endpoint: chat completions, embeddings, Anthropic's
    /// Messages, the Responses API, Gemini's generateContent.
    Proxy(Endpoint),
    Models,
    /// `GET /v1/models/{id}`: the id as the path has it, percent-escapes
    /// and all (`openai%2Fgpt-4o` or `openai/gpt-4o`).
    Model(&'p str),
    Providers,
    Keys,
    /// `POST /v1/keys/{id}/{disable|enable|reset}`; the id as the path has it.
    KeyAction {
        id: &'p str,
        action: KeyAction,
    },
    TokenCount,
    Metrics,
    /// `POST /v1/admin/reload`
    AdminReload,
    /// `GET` (list) and `POST` (make) `/v1/admin/clients`
    AdminClients,
    /// `DELETE /v1/admin/clients/{name}`; the name as the path has it.
    AdminClient(&'p str),
    /// `GET /v1/usage`: the ledger's totals.
    Usage,
    /// `GET /v1/ui/series`, `/v1/ui/recent`: the dashboard's data.
    UiData(crate::ui_data::UiData),
    /// `GET /ui`, `/ui/app.js`, `/ui/app.css`: the dashboard's files.
    Ui(UiAsset),
}

impl<'p> Route<'p> {
    /// Recognises a path, and names the methods it takes (`, `-separated, as
    /// an `Allow` header lists them); the `/v1` prefix
    /// is optional on OpenAI routes so that clients configured with or
    /// without it both work.
    pub fn recognize(path: &'p str) -> Option<(Self, &'static str)> {
        match path {
            "/health" => return Some((Self::Health, "GET")),
            "/metrics" => return Some((Self::Metrics, "GET")),
            _ => {}
        }
        if let Some(asset) = UiAsset::from_path(path) {
            return Some((Self::Ui(asset), "GET"));
        }
        // Gemini's `/v1beta/models/{model}:generateContent` (also under
        // `/v1/models/`, which is not the OpenAI model route).
        if let Some((_, endpoint)) = gemini_path(path) {
            return Some((Self::Proxy(endpoint), "POST"));
        }
        let path = path.strip_prefix("/v1").unwrap_or(path).trim_end_matches('/');
        match path {
            "/chat/completions" => Some((Self::Proxy(Endpoint::ChatCompletions), "POST")),
            "/embeddings" => Some((Self::Proxy(Endpoint::Embeddings), "POST")),
            "/messages" => Some((Self::Proxy(Endpoint::Messages), "POST")),
            "/messages/count_tokens" => Some((Self::Proxy(Endpoint::MessagesCountTokens), "POST")),
            "/responses" => Some((Self::Proxy(Endpoint::Responses), "POST")),
            "/responses/input_tokens" => Some((Self::Proxy(Endpoint::ResponsesInputTokens), "POST")),
            "/models" => Some((Self::Models, "GET")),
            "/providers" => Some((Self::Providers, "GET")),
            "/keys" => Some((Self::Keys, "GET")),
            "/token-count" => Some((Self::TokenCount, "POST")),
            "/admin/reload" => Some((Self::AdminReload, "POST")),
            "/admin/clients" => Some((Self::AdminClients, "GET, POST")),
            "/usage" => Some((Self::Usage, "GET")),
            _ => {
                if let Some(data) = crate::ui_data::UiData::from_path(path) {
                    return Some((Self::UiData(data), "GET"));
                }
                if let Some((_, action)) = response_resource(path) {
                    let methods = match action {
                        None => "GET, DELETE",
                        Some("cancel") => "POST",
                        Some(_) => "GET",
                    };
                    return Some((Self::Proxy(Endpoint::ResponseResource), methods));
                }
                if let Some(name) = path.strip_prefix("/admin/clients/").filter(|n| !n.is_empty() && !n.contains('/')) {
                    return Some((Self::AdminClient(name), "DELETE"));
                }
                if let Some(id) = path.strip_prefix("/models/") {
                    // Model ids hold slashes (`openrouter/meta-llama/llama-3-70b`),
                    // sent raw or as `%2F`: everything after `/models/` is the id.
                    return Some((Self::Model(id), "GET"));
                }
                let (id, action) = path.strip_prefix("/keys/")?.rsplit_once('/')?;
                let action = KeyAction::from_segment(action)?;
                (!id.is_empty()).then_some((Self::KeyAction { id, action }, "POST"))
            }
        }
    }
}

/// What an operator can do to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Take the key out of rotation until enabled again.
    Disable,
    /// Put a disabled key back into rotation.
    Enable,
    /// Forget the key's cooldowns and failures.
    Reset,
}

impl KeyAction {
    fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "disable" => Some(Self::Disable),
            "enable" => Some(Self::Enable),
            "reset" => Some(Self::Reset),
            _ => None,
        }
    }

    /// The action as the path names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Reset => "reset",
        }
    }
}

/// Request extension of `POST /v1/keys/{id}/{action}`: the key id
/// (percent-decoded) and the action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub id: String,
    pub action: KeyAction,
}

/// Request extension of `DELETE /v1/admin/clients/{name}`: the client's
/// name (percent-decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientName(pub String);

/// Request extension of `GET /v1/models/{id}`: the model the path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestedModel {
    /// The id, percent-decoded (`openai%2Fgpt-4o` is `openai/gpt-4o`).
    Id(String),
    /// The path's id as sent, whose percent-escapes do not decode (to
    /// UTF-8): no model has such an id.
    Malformed(String),
}

impl RequestedModel {
    fn from_path(id: &str) -> Self {
        match percent_decode(id) {
            Some(decoded) => Self::Id(decoded),
            None => Self::Malformed(id.to_owned()),
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
    /// Finds the request's [`Endpoint`] in its extensions.
    pub proxy: RouteService<B>,
    pub models: RouteService<B>,
    /// `GET /v1/models/{id}`; finds a [`RequestedModel`] in the extensions.
    pub model: RouteService<B>,
    pub providers: RouteService<B>,
    pub keys: RouteService<B>,
    /// Finds a [`KeyChange`] in the request's extensions.
    pub key_action: RouteService<B>,
    pub token_count: RouteService<B>,
    pub metrics: RouteService<B>,
    pub admin_reload: RouteService<B>,
    /// `GET`/`POST /v1/admin/clients`.
    pub admin_clients: RouteService<B>,
    /// Finds a [`ClientName`] in the request's extensions.
    pub admin_client: RouteService<B>,
    pub usage: RouteService<B>,
    /// Finds a [`UiData`](crate::ui_data::UiData) in the request's extensions.
    pub ui_data: RouteService<B>,
    /// The dashboard's files; finds a [`UiAsset`] in the extensions.
    pub ui: RouteService<B>,
}

impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Self { routes: self.routes.clone() }
    }
}

/// What the router learned from the path, for the route's service.
enum Learned {
    Nothing,
    Endpoint(Endpoint),
    Model(RequestedModel),
    KeyChange(KeyChange),
    Client(ClientName),
    UiData(crate::ui_data::UiData),
    Ui(UiAsset),
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some((route, method)) = Route::recognize(req.uri().path()) else {
            return Either::Left(ready(Err(RouteNotFound::new(req.uri().path()).into())));
        };
        let allowed =
            method.split(", ").any(|m| req.method().as_str() == m || (m == "GET" && req.method() == Method::HEAD));
        if !allowed {
            return Either::Left(ready(Err(MethodNotAllowed::new(method).into())));
        }
        let routes = &*self.routes;
        let (svc, learned) = match route {
            Route::Health => (&routes.health, Learned::Nothing),
            Route::Proxy(endpoint) => (&routes.proxy, Learned::Endpoint(endpoint)),
            Route::Models => (&routes.models, Learned::Nothing),
            Route::Model(id) => (&routes.model, Learned::Model(RequestedModel::from_path(id))),
            Route::Providers => (&routes.providers, Learned::Nothing),
            Route::Keys => (&routes.keys, Learned::Nothing),
            Route::KeyAction { id, action } => {
                // Key ids are `provider:hex`; a client may escape the colon.
                let id = percent_decode(id).unwrap_or_else(|| id.to_owned());
                (&routes.key_action, Learned::KeyChange(KeyChange { id, action }))
            }
            Route::TokenCount => (&routes.token_count, Learned::Nothing),
            Route::Metrics => (&routes.metrics, Learned::Nothing),
            Route::AdminReload => (&routes.admin_reload, Learned::Nothing),
            Route::AdminClients => (&routes.admin_clients, Learned::Nothing),
            Route::AdminClient(name) => {
                let name = percent_decode(name).unwrap_or_else(|| name.to_owned());
                (&routes.admin_client, Learned::Client(ClientName(name)))
            }
            Route::Usage => (&routes.usage, Learned::Nothing),
            Route::UiData(data) => (&routes.ui_data, Learned::UiData(data)),
            Route::Ui(asset) => (&routes.ui, Learned::Ui(asset)),
        };
        let svc = svc.clone();
        let extensions = req.extensions_mut();
        match learned {
            Learned::Nothing => {}
            Learned::Endpoint(endpoint) => {
                extensions.insert(endpoint);
            }
            Learned::Model(model) => {
                extensions.insert(model);
            }
            Learned::KeyChange(change) => {
                extensions.insert(change);
            }
            Learned::Client(name) => {
                extensions.insert(name);
            }
            Learned::UiData(data) => {
                extensions.insert(data);
            }
            Learned::Ui(asset) => {
                extensions.insert(asset);
            }
        }
        Either::Right(svc.oneshot(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_routes_with_and_without_v1() {
        let chat = Route::Proxy(Endpoint::ChatCompletions);
        assert_eq!(Route::recognize("/v1/chat/completions"), Some((chat, "POST")));
        assert_eq!(Route::recognize("/chat/completions"), Some((chat, "POST")));
        assert_eq!(Route::recognize("/v1/embeddings/"), Some((Route::Proxy(Endpoint::Embeddings), "POST")));
        assert_eq!(Route::recognize("/v1/models"), Some((Route::Models, "GET")));
        assert_eq!(Route::recognize("/v1/models/"), Some((Route::Models, "GET")));
        assert_eq!(Route::recognize("/health"), Some((Route::Health, "GET")));
        assert_eq!(Route::recognize("/v1/usage"), Some((Route::Usage, "GET")));
        assert_eq!(Route::recognize("/ui"), Some((Route::Ui(UiAsset::Page), "GET")));
        assert_eq!(Route::recognize("/ui/app.js"), Some((Route::Ui(UiAsset::Script), "GET")));
        assert_eq!(Route::recognize("/v1/ui"), None);
        let reset = Route::KeyAction { id: "openai:1a2b3c4d", action: KeyAction::Reset };
        assert_eq!(Route::recognize("/v1/keys/openai:1a2b3c4d/reset"), Some((reset, "POST")));
        assert_eq!(Route::recognize("/v1/health"), None);
        assert_eq!(Route::recognize("/v1/completions"), None);
        assert_eq!(Route::recognize("/"), None);
    }

    #[test]
    fn a_model_id_is_the_rest_of_the_path_slashes_and_all() {
        for (path, id) in [
            ("/v1/models/openai%2Fgpt-4o", "openai%2Fgpt-4o"),
            ("/v1/models/openai/gpt-4o", "openai/gpt-4o"),
            ("/models/openrouter/meta-llama/llama-3-70b/", "openrouter/meta-llama/llama-3-70b"),
        ] {
            assert_eq!(Route::recognize(path), Some((Route::Model(id), "GET")), "{path}");
        }
        // Not `/v1` + `beta/models/...`: Gemini's paths are not OpenAI's.
        assert_eq!(Route::recognize("/v1beta/models/gemini-2.0-flash"), None);
    }

    #[test]
    fn key_paths_without_a_known_action_or_an_id_are_no_route() {
        for path in ["/v1/keys/openai:1a2b3c4d", "/v1/keys/openai:1a2b3c4d/explode", "/v1/keys//reset", "/v1/keys/"] {
            assert!(!matches!(Route::recognize(path), Some((Route::KeyAction { .. }, _))), "{path}");
        }
    }

    /// What a route's service found in its request's extensions.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Seen(&'static str, Option<Endpoint>, Option<RequestedModel>, Option<KeyChange>);

    fn seeing(route: &'static str) -> RouteService<()> {
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<()>| {
            let ext = req.extensions();
            let seen = Seen(route, ext.get().copied(), ext.get().cloned(), ext.get().cloned());
            let mut res = Response::new(keyrelay_layers::body::full(bytes::Bytes::new()));
            res.extensions_mut().insert(seen);
            std::future::ready(Ok::<_, BoxError>(res))
        }))
    }

    async fn seen(router: &Router<()>, method: Method, path: &str) -> Seen {
        let req = Request::builder().method(method).uri(path).body(()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        res.extensions().get::<Seen>().cloned().unwrap()
    }

    #[tokio::test]
    async fn the_router_hands_on_what_the_path_said() {
        let router = Router::new(Routes {
            health: seeing("health"),
            proxy: seeing("proxy"),
            models: seeing("models"),
            model: seeing("model"),
            providers: seeing("providers"),
            keys: seeing("keys"),
            key_action: seeing("key_action"),
            token_count: seeing("token_count"),
            metrics: seeing("metrics"),
            admin_reload: seeing("admin_reload"),
            admin_clients: seeing("admin_clients"),
            admin_client: seeing("admin_client"),
            usage: seeing("usage"),
            ui_data: seeing("ui_data"),
            ui: seeing("ui"),
        });
        let chat = Some(Endpoint::ChatCompletions);
        assert_eq!(seen(&router, Method::POST, "/v1/chat/completions").await, Seen("proxy", chat, None, None));
        let embeddings = Some(Endpoint::Embeddings);
        assert_eq!(seen(&router, Method::POST, "/embeddings").await, Seen("proxy", embeddings, None, None));
        let model = Some(RequestedModel::Id("openai/gpt-4o".to_owned()));
        assert_eq!(seen(&router, Method::GET, "/v1/models/openai%2Fgpt-4o").await, Seen("model", None, model, None));
        let malformed = Some(RequestedModel::Malformed("openai%2".to_owned()));
        assert_eq!(seen(&router, Method::HEAD, "/v1/models/openai%2").await, Seen("model", None, malformed, None));
        let change = Some(KeyChange { id: "openai:1a2b3c4d".to_owned(), action: KeyAction::Disable });
        let path = "/v1/keys/openai%3A1a2b3c4d/disable";
        assert_eq!(seen(&router, Method::POST, path).await, Seen("key_action", None, None, change));
        assert_eq!(seen(&router, Method::GET, "/v1/models").await, Seen("models", None, None, None));
    }

    #[test]
    fn percent_decoding_takes_escapes_and_refuses_broken_ones() {
        assert_eq!(percent_decode("openai%2Fgpt-4o").as_deref(), Some("openai/gpt-4o"));
        assert_eq!(percent_decode("openai%2fgpt-4o").as_deref(), Some("openai/gpt-4o"));
        assert_eq!(percent_decode("a%3Ab+c").as_deref(), Some("a:b+c"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        for broken in ["%", "a%2", "%zz", "%+1", "%-1", "%FF", "%C3"] {
            assert_eq!(percent_decode(broken), None, "{broken}");
        }
    }
}
