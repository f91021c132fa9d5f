//! keyrelay's key pool inside your own axum app.
//!
//! Your routes (`GET /hello`) sit next to keyrelay's pool stack, mounted at
//! `/llm`, so `POST /llm/v1/chat/completions` with
//! `{"model": "openai/gpt-4o-mini", ...}` goes to OpenAI with one of your
//! keys, rotating away from keys that are rate limited. Your own auth (here
//! an `x-team-token` header) guards it instead of keyrelay's `AuthLayer`.
//!
//! ```text
//! OPENAI_API_KEY_1=sk-... OPENAI_API_KEY_2=sk-... TEAM_TOKEN=let-me-in \
//!     cargo run -p keyrelay-layers --example axum_mount
//! curl localhost:8080/llm/v1/chat/completions -H 'x-team-token: let-me-in' \
//!     -d '{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Keys come from `OPENAI_API_KEYS` (comma-separated) or `OPENAI_API_KEY`,
//! `OPENAI_API_KEY_1`, `OPENAI_API_KEY_2`...; the base URL from
//! `OPENAI_BASE_URL` (default `https://api.openai.com/v1`, any
//! OpenAI-compatible server works); the port from `PORT` (default 8080).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use keyrelay_layers::{
    BoxError,
    concurrency::KeyConcurrencyLayer,
    error::ErrorReply,
    filter::ModelFilterLayer,
    parse::ParseLayer,
    pool::{KeyPool, Secret, Selection},
    provider::Provider,
    respond::{ErrorResponseLayer, reply_response},
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
    timeout::DeadlineLayer,
    upstream::{ClientOptions, HttpsClient, UpstreamService, build_client},
};
use tower::ServiceBuilder;

/// The header your clients send; it never reaches the provider.
pub const TEAM_TOKEN_HEADER: &str = "x-team-token";

/// Your app: your routes, and keyrelay's pool stack under `/llm`.
pub fn app(pool: Arc<KeyPool>, client: HttpsClient, team_token: Arc<str>) -> Router {
    let llm = ServiceBuilder::new()
        // Your auth, in place of keyrelay's `AuthLayer` (which checks
        // `Authorization: Bearer <proxy key>`). It runs first, so strangers
        // cost no body read and no key.
        .layer(middleware::from_fn_with_state(team_token, team_auth))
        // Every error below becomes OpenAI-shaped JSON here, and the error
        // type becomes `Infallible`, as axum requires of a service. (The
        // response body is already one axum accepts: bytes, `Send`.)
        .layer(ErrorResponseLayer::new())
        // One deadline for the whole request: body read, waits for a key,
        // every attempt, up to the first byte (the whole body unless it
        // streams).
        .layer(DeadlineLayer::new(Duration::from_secs(120)))
        // Reads the body once (bounded) and finds provider, model and
        // endpoint. axum's `nest_service` strips `/llm`, so Parse sees
        // `/v1/chat/completions` (or `/chat/completions`: both are
        // accepted); other paths below `/llm` are an OpenAI-shaped 404.
        // The method is not checked: mount with `route_service` and
        // `routing::post_service` instead if a GET must be a 405.
        .layer(ParseLayer::new(pool.clone(), 16 << 20))
        // Optional: refuses models blocked by the provider's `ModelRules`
        // before any key is spent on them.
        .layer(ModelFilterLayer::new(pool.clone()))
        // Classifies each answer, cools a rate-limited key and tries
        // another. Inside the deadline, outside the key choice.
        .layer(RetryRotateLayer::new(RetryPolicy::default()))
        // Picks a key for each attempt.
        .layer(KeySelectLayer::new(pool))
        // Holds the per-(key, model) concurrency slot until the body ends.
        .layer(KeyConcurrencyLayer::new())
        // Swaps in the provider key and the bare model name, and streams
        // the answer back.
        .service(UpstreamService::new(client));

    Router::new().route("/hello", get(hello)).nest_service("/llm", llm)
}

async fn hello() -> &'static str {
    "hello from your own route\n"
}

/// Your own auth, as an axum middleware. It answers in OpenAI's error shape
/// so that SDK clients of `/llm` read one kind of error, and removes the
/// token: keyrelay drops `Authorization` and `x-api-key` before the
/// provider, but it does not know your header.
async fn team_auth(State(expected): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    // Real code compares in constant time, as keyrelay's AuthLayer does.
    let presented = req.headers_mut().remove(TEAM_TOKEN_HEADER);
    if presented.as_ref().and_then(|value| value.to_str().ok()) != Some(&*expected) {
        let reply = ErrorReply::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_team_token",
            format!("send your team token in `{TEAM_TOKEN_HEADER}`"),
        );
        return reply_response(reply).into_response();
    }
    next.run(req).await
}

/// Keys from `OPENAI_API_KEYS` (comma-separated), `OPENAI_API_KEY`, and
/// `OPENAI_API_KEY_1`, `_2`... up to the first gap.
pub fn keys_from_env() -> Vec<Secret> {
    let mut keys: Vec<String> = std::env::var("OPENAI_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect();
    keys.extend(std::env::var("OPENAI_API_KEY"));
    keys.extend((1..).map_while(|n| std::env::var(format!("OPENAI_API_KEY_{n}")).ok()));
    keys.into_iter().map(Secret::new).collect()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let keys = keys_from_env();
    if keys.is_empty() {
        return Err("set OPENAI_API_KEY_1, OPENAI_API_KEY_2, ... (or OPENAI_API_KEYS=sk-a,sk-b)".into());
    }
    let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".to_owned());
    // The provider id is the model prefix clients write: `openai/gpt-4o-mini`.
    let provider = Provider::openai_compatible("openai", &base)?;
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, keys).build()?;
    let client = build_client(&ClientOptions::default())?;
    let team_token: Arc<str> = std::env::var("TEAM_TOKEN").unwrap_or_else(|_| "let-me-in".to_owned()).into();

    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(pool, client, team_token)).await?;
    Ok(())
}
