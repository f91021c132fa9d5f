//! The accept loop: HTTP/1.1 and h2c on one port, graceful shutdown.

use std::{convert::Infallible, fmt, future::Future, time::Duration};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use keyrelay_layers::BoxError;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Inbound connection limits.
#[derive(Clone)]
pub struct ServerOptions {
    /// A client that has not sent its request headers within this is cut off.
    pub header_read_timeout: Duration,
    /// Request heads larger than this are refused (431 on HTTP/1.1).
    pub max_header_bytes: usize,
    /// After a shutdown signal, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this acceptor (HTTP/2 or HTTP/1.1 by ALPN).
    pub tls: Option<TlsAcceptor>,
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tls", &self.tls.is_some())
            .finish()
    }
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
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
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
    builder.http2().timer(TokioTimer::new()).max_header_list_size(options.max_header_bytes as u32);

    let graceful = GracefulShutdown::new();
    let (stopping_tx, stopping_rx) = watch::channel(false);
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
        let (head_timeout, mut stopping, tls) = (options.header_read_timeout, stopping_rx.clone(), options.tls.clone());
        tokio::spawn(async move {
            if let Some(tls) = tls {
                // The handshake is bounded like a request head, and a
                // connection still shaking hands is dropped when shutdown begins.
                let handshake = tokio::select! {
                    done = tokio::time::timeout(head_timeout, tls.accept(stream)) => done,
                    _ = stopping.wait_for(|stop| *stop) => return,
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => return tracing::debug!(error = %err, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                // ALPN has chosen the version, so hyper need not sniff it
                // (and HTTP/1.1's header timeout applies from the start).
                let builder = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => builder.http2_only(),
                    _ => builder.http1_only(),
                };
                return serve_io(&builder, stream, service, watcher).await;
            }
            // A connection that never shows its HTTP version is dropped
            // here, and at once when shutdown begins (it has no request in
            // flight), so that it cannot hold up the drain.
            let shown = tokio::select! {
                shown = tokio::time::timeout(head_timeout, version_shown(&stream)) => shown.unwrap_or(false),
                _ = stopping.wait_for(|stop| *stop) => false,
            };
            if shown {
                serve_io(&builder, stream, service, watcher).await;
            }
        });
    }
    let _ = stopping_tx.send(true);
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

/// Serves one connection until it closes, as part of the graceful drain.
async fn serve_io<I, S, B>(builder: &auto::Builder<TokioExecutor>, io: I, service: S, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(err) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// HTTP/2's connection preface; hyper-util reads this much to tell h2c
/// from HTTP/1.1, with no timeout of its own.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the connection's first bytes tell its HTTP version: either
/// the whole h2 preface or a byte that departs from it. `false` when the
/// peer closes first. Peeking leaves the bytes for hyper.
async fn version_shown(stream: &TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n == buf.len() || !H2_PREFACE.starts_with(&buf[..n]) => return true,
            // A prefix of the preface: peek returns at once while those
            // bytes wait unread, so poll for more at a gentle pace.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called,
/// so that a signal right after start-up is not missed; the future resolves
/// on the first of them.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("received SIGINT"),
                _ = terminate.recv() => tracing::info!("received SIGTERM"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("received Ctrl-C");
        })
    }
}
