//! The yardstick: a bare hyper pass-through hop with no logic. It accepts
//! HTTP/1.1, forwards every request to one upstream over a pooled hyper-util
//! client and streams the answer back; no auth, no parsing, no retries, no
//! logs. Whatever keyrelay costs beyond this is the price of its features.

use std::{convert::Infallible, net::SocketAddr};

use http::{Request, Response, Uri, uri::PathAndQuery};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;

type HopClient = Client<HttpConnector, Incoming>;

async fn forward(
    client: HopClient,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, Infallible> {
    let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(upstream.to_string())
        .path_and_query(path)
        .build()
        .expect("a socket address and a path make a URI");
    req.headers_mut().remove(http::header::HOST);
    match client.request(req).await {
        Ok(res) => Ok(res),
        Err(err) => panic!("bare hop: upstream failed: {err}"),
    }
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HopClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward(client.clone(), upstream, req));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
