//! keyrelay's layers around a plain hyper 1 server: the whole proxy stack,
//! with keyrelay's own `AuthLayer` and `RequestLogLayer`.
//!
//! ```text
//! PROXY_API_KEY=my-proxy-key OPENAI_API_KEY_1=sk-... OPENAI_API_KEY_2=sk-... \
//!     cargo run -p keyrelay-layers --example hyper_mount
//! curl localhost:8080/v1/chat/completions -H 'authorization: Bearer my-proxy-key' \
//!     -d '{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Keys come from `OPENAI_API_KEYS` (comma-separated) or `OPENAI_API_KEY`,
//! `OPENAI_API_KEY_1`, `OPENAI_API_KEY_2`...; the base URL from
//! `OPENAI_BASE_URL` (default `https://api.openai.com/v1`); the port from
//! `PORT` (default 8080). RequestLog writes through `tracing`: install a
//! subscriber (e.g. `tracing_subscriber::fmt::init()`) to see its events.
#![allow(
    clippy::disallowed_methods,
    reason = "a server spawns a task per connection; the no-spawn rule is the library's"
)]

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use keyrelay_layers::{
    BoxError,
    auth::AuthLayer,
    concurrency::KeyConcurrencyLayer,
    filter::ModelFilterLayer,
    log::RequestLogLayer,
    parse::ParseLayer,
    pool::{KeyPool, Secret, Selection},
    provider::Provider,
    respond::ErrorResponseLayer,
    retry::{RetryPolicy, RetryRotateLayer},
    select::KeySelectLayer,
    timeout::DeadlineLayer,
    upstream::{ClientOptions, HttpsClient, UpstreamService, build_client},
};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};

/// The proxy for `POST /v1/chat/completions` and `/v1/embeddings`: any
/// other path is an OpenAI-shaped 404 from Parse. The method is not checked
/// (keyrelay's binary routes by path and method before this stack); put a
/// router in front if that matters to you.
pub fn proxy(
    pool: Arc<KeyPool>,
    client: HttpsClient,
    proxy_key: Secret,
) -> impl Service<
    Request<Incoming>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        // Outermost: one span and one `request finished` event per request,
        // with the final status, also for refused and failed ones.
        .layer(RequestLogLayer::new())
        // Every error below becomes OpenAI-shaped JSON; hyper needs the
        // error type `Infallible` from here on.
        .layer(ErrorResponseLayer::new())
        // The client's proxy key, before any work is done for it; strips
        // `Authorization`/`x-api-key` so it is never forwarded.
        .layer(AuthLayer::require(proxy_key))
        // One deadline for the whole request: body read, waits for a key,
        // every attempt, up to the first byte (the whole body unless it
        // streams).
        .layer(DeadlineLayer::new(Duration::from_secs(120)))
        // Reads the body once (bounded) and finds provider, model, stream.
        .layer(ParseLayer::new(pool.clone(), 16 << 20))
        // Refuses models the provider's `ModelRules` block, before a key is
        // spent on them.
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
        .service(UpstreamService::new(client))
}

/// Serves the proxy on `listener` until accepting fails.
pub async fn serve(
    listener: TcpListener,
    pool: Arc<KeyPool>,
    client: HttpsClient,
    proxy_key: Secret,
) -> std::io::Result<()> {
    let svc = proxy(pool, client, proxy_key);
    loop {
        // A production loop retries after accept errors (EMFILE) and drains
        // connections at shutdown; keyrelay's own server.rs does both.
        let (tcp, _) = listener.accept().await?;
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            // HTTP/1.1 and h2c, by what the client speaks.
            if let Err(err) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
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
    let proxy_key = std::env::var("PROXY_API_KEY").map_err(|_| "set PROXY_API_KEY, the key your clients send")?;
    let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".to_owned());
    // The provider id is the model prefix clients write: `openai/gpt-4o-mini`.
    let provider = Provider::openai_compatible("openai", &base)?;
    let pool = KeyPool::builder().provider(provider, Selection::LeastUsed, keys).build()?;
    let client = build_client(&ClientOptions::default())?;

    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, pool, client, Secret::new(proxy_key)).await?;
    Ok(())
}
