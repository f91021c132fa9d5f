//! The one shared hyper-util client: rustls with the webpki roots, HTTP/1.1
//! and HTTP/2 by ALPN, pooled keep-alive connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::BoxError;

/// The client type every upstream call goes through; cloning shares the
/// connection pool.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Tuning for [`build_client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// A TCP connect slower than this fails the attempt (502) instead of
    /// waiting out the whole request deadline.
    pub connect_timeout: Duration,
    /// Idle pooled connections close after this long.
    pub pool_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), pool_idle_timeout: Duration::from_secs(90) }
    }
}

/// Builds the shared client. Plain `http://` bases work too, for local
/// OpenAI-compatible servers.
///
/// ```
/// use std::time::Duration;
/// use keyrelay_layers::upstream::{build_client, ClientOptions, UpstreamService};
///
/// let options = ClientOptions::default();
/// assert_eq!(options.connect_timeout, Duration::from_secs(10));
/// assert_eq!(options.pool_idle_timeout, Duration::from_secs(90));
/// let client = build_client(&options).unwrap();
/// // Clones share one connection pool: build once, hand a clone to each user.
/// let upstream = UpstreamService::new(client.clone()).stream_idle_timeout(Duration::from_secs(60));
/// # drop(upstream);
/// ```
pub fn build_client(options: &ClientOptions) -> Result<HttpsClient, BoxError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .build(https))
}
