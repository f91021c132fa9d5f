//! The accept loop: HTTP/1.1 and h2c on one port, graceful shutdown.

use std::{convert::Infallible, future::Future, time::Duration};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use keyrelay_layers::BoxError;
use tokio::net::TcpListener;
use tower::Service;

/// Inbound connection limits.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A client that has not sent its request headers within this is cut off.
    pub header_read_timeout: Duration,
    /// Request heads larger than this are refused (431 on HTTP/1.1).
    pub max_header_bytes: usize,
    /// After a shutdown signal, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
}

/// How a shutdown went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection finished its requests.
    Drained,
    /// The grace period ran out with connections still open.
    GraceExpired,
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (at most the grace period) for in-flight requests.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: &ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Shutdown
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(options.max_header_bytes as u32);

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        let first_byte_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            // hyper-util sniffs the HTTP version with no timeout of its own,
            // and hyper's header timer starts only after that: a client that
            // connects and stays silent is cut off here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(err) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        grace_secs = options.shutdown_grace.as_secs(),
        "shutting down: no new connections, draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => Shutdown::Drained,
        () = tokio::time::sleep(options.shutdown_grace) => Shutdown::GraceExpired,
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
