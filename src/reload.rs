//! Hot reload: SIGHUP and `POST /v1/admin/reload` read the configuration
//! and keys again and swap in a stack built from them.
//!
//! The new key pool is built as a carry-over of the running one
//! ([`KeyPoolBuilder::carry_over`](keyrelay_layers::pool::KeyPoolBuilder::carry_over)):
//! unchanged keys share their state (cooldowns, counters, in-flight counts,
//! concurrency slots) with requests still running on the old stack, new keys
//! serve the next request, and removed keys leave once the requests holding
//! them end. Each request takes the stack that is current when it arrives.
//! A configuration that does not load or validate is refused with its error
//! and the running one stays. Server settings (address, TLS, limits, data
//! dir) take effect at the next start; a reload that changes them says so.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    fmt,
    sync::{Arc, Mutex, OnceLock, RwLock},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use http::{Request, Response};
use keyrelay_layers::BoxError;
use serde::Serialize;
use tower::{Service, ServiceExt, util::Oneshot};

use crate::{config::Settings, stack::App};

/// Reads the configuration again (config file, `.env`, environment, CLI).
pub type SettingsLoader = Arc<dyn Fn() -> Result<Settings, BoxError> + Send + Sync>;

type ReloadFn = Arc<dyn Fn() -> Result<ReloadReport, ReloadError> + Send + Sync>;

/// What the admin route and SIGHUP call; does nothing until the server
/// that owns the stack installs its reloader.
#[derive(Clone, Default)]
pub struct ReloadHandle(Arc<OnceLock<ReloadFn>>);

impl fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle").field("installed", &self.0.get().is_some()).finish()
    }
}

impl ReloadHandle {
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        match self.0.get() {
            Some(reload) => reload(),
            None => Err(ReloadError::Unavailable),
        }
    }

    fn install(&self, reload: ReloadFn) {
        let _ = self.0.set(reload);
    }
}

/// Why a reload did not happen.
#[derive(Debug)]
pub enum ReloadError {
    /// This server was started without a way to read its configuration
    /// again (an embedding that passed settings directly).
    Unavailable,
    /// The new configuration was refused; the running one stays.
    Invalid(String),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable => {
                f.write_str("this server cannot reload: it was started without a configuration source")
            }
            Self::Invalid(why) => write!(f, "the new configuration was refused and the running one stays: {why}"),
        }
    }
}

/// What a reload changed, by key id (never a secret).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadReport {
    pub reloaded: bool,
    pub providers: Vec<String>,
    pub keys_added: Vec<String>,
    pub keys_removed: Vec<String>,
    pub keys_kept: usize,
    pub notes: Vec<String>,
}

/// A service that hands each request to the stack current at its arrival.
///
/// Requests read the current stack through an [`ArcSwap`]: a load is a few
/// atomic operations and never waits, not even behind a reload in progress,
/// so the hot path takes no lock. Each request then clones the stack it
/// loaded (a few `Arc`s: tower's `call` wants it `&mut`). A reload stores a
/// new stack in one atomic swap; requests already running keep the clone of
/// the old one and finish on it, and the old stack is freed with the last of
/// them.
#[derive(Debug)]
pub struct Live<S>(Arc<ArcSwap<S>>);

impl<S> Clone for Live<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Live<S> {
    pub fn new(stack: S) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(stack)))
    }

    fn replace(&self, stack: S) {
        self.0.store(Arc::new(stack));
    }
}

impl<S, B> Service<Request<B>> for Live<S>
where
    S: Service<Request<B>, Error = Infallible> + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Oneshot<S, Request<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The stack is chosen per request; `oneshot` waits for its readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The guard is dropped at the end of the statement: nothing is held
        // while the request runs but its own clone.
        let stack = S::clone(&self.0.load());
        stack.oneshot(req)
    }
}

/// How to read the configuration again, and what the server started with.
#[derive(Clone)]
pub struct ReloadSource {
    pub loader: SettingsLoader,
    pub started_with: ServerShape,
}

impl fmt::Debug for ReloadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadSource").field("started_with", &self.started_with).finish_non_exhaustive()
    }
}

/// Everything a reload needs; one reload runs at a time.
pub struct Reloader<S, F> {
    pub loader: SettingsLoader,
    pub app: Arc<RwLock<App>>,
    pub stack: Live<S>,
    pub build: F,
    /// The server settings the process started with.
    pub started_with: ServerShape,
    pub running: Mutex<()>,
}

impl<S, F> fmt::Debug for Reloader<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").field("started_with", &self.started_with).finish_non_exhaustive()
    }
}

impl<S, F> Reloader<S, F>
where
    S: Send + Sync + 'static,
    F: Fn(&App) -> S + Send + Sync + 'static,
{
    /// Makes `handle` run this reloader.
    pub fn install(self, handle: &ReloadHandle) {
        let this = Arc::new(self);
        handle.install(Arc::new(move || this.reload()));
    }

    fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let settings = (self.loader)().map_err(|err| ReloadError::Invalid(err.to_string()))?;
        let current = self.app.read().unwrap_or_else(|p| p.into_inner()).clone();
        let next = crate::app_reloaded(&settings, &current).map_err(|err| ReloadError::Invalid(err.to_string()))?;
        let report = report(&current, &next, &self.started_with, &ServerShape::of(&settings));
        self.stack.replace((self.build)(&next));
        *self.app.write().unwrap_or_else(|p| p.into_inner()) = next;
        tracing::info!(
            added = report.keys_added.len(),
            removed = report.keys_removed.len(),
            kept = report.keys_kept,
            "configuration reloaded"
        );
        for note in &report.notes {
            tracing::warn!("{note}");
        }
        Ok(report)
    }
}

fn key_ids(app: &App) -> BTreeSet<String> {
    app.pool.providers().flat_map(|p| p.keys().iter().map(|k| k.id().as_str().to_owned())).collect()
}

fn report(current: &App, next: &App, started_with: &ServerShape, now: &ServerShape) -> ReloadReport {
    let (before, after) = (key_ids(current), key_ids(next));
    let mut notes = Vec::new();
    if started_with != now {
        notes.push(
            "server settings (address, TLS, limits, data dir, request logging) changed: they take effect at restart"
                .to_owned(),
        );
    }
    ReloadReport {
        reloaded: true,
        providers: next.pool.providers().map(|p| p.provider().id().as_str().to_owned()).collect(),
        keys_added: after.difference(&before).cloned().collect(),
        keys_removed: before.difference(&after).cloned().collect(),
        keys_kept: after.intersection(&before).count(),
        notes,
    }
}

/// The settings a reload cannot change (the body limit can: Parse takes it
/// from the rebuilt stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerShape {
    listen: std::net::SocketAddr,
    tls: Option<crate::config::TlsFiles>,
    max_header_bytes: usize,
    max_concurrent_requests: usize,
    header_read_timeout: std::time::Duration,
    shutdown_grace: std::time::Duration,
    data_dir: std::path::PathBuf,
    request_logging: bool,
}

impl ServerShape {
    pub fn of(settings: &Settings) -> Self {
        Self {
            listen: settings.listen,
            tls: settings.tls.clone(),
            max_header_bytes: settings.max_header_bytes,
            max_concurrent_requests: settings.max_concurrent_requests,
            header_read_timeout: settings.header_read_timeout,
            shutdown_grace: settings.shutdown_grace,
            data_dir: settings.data_dir.clone(),
            request_logging: settings.request_logging,
        }
    }
}

/// Reloads on every SIGHUP until the process ends.
#[cfg(unix)]
pub fn on_sighup(handle: ReloadHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: reloading the configuration");
            if let Err(err) = handle.reload() {
                tracing::error!("{err}");
            }
        }
    });
    Ok(())
}

/// Reloads on every SIGHUP until the process ends (no SIGHUP here).
#[cfg(not(unix))]
pub fn on_sighup(_handle: ReloadHandle) -> std::io::Result<()> {
    Ok(())
}

/// The admin route's answer.
pub fn answer(handle: &ReloadHandle) -> Response<keyrelay_layers::ProxyBody> {
    use http::StatusCode;
    use http_body_util::BodyExt;
    use keyrelay_layers::{error::ErrorReply, respond::reply_response};
    let reply = match handle.reload() {
        Ok(report) => return crate::status::json(StatusCode::OK, &report),
        Err(err @ ReloadError::Unavailable) => ErrorReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "reload_unavailable",
            err.to_string(),
        ),
        Err(err @ ReloadError::Invalid(_)) => {
            ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_config", err.to_string())
        }
    };
    reply_response(reply).map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::Pin,
        sync::{Arc, Weak},
    };

    use tokio::sync::Semaphore;

    use super::*;

    /// A stack that answers its name, once `open` lets it.
    #[derive(Clone)]
    struct Named {
        name: &'static str,
        open: Arc<Semaphore>,
    }

    impl Service<Request<()>> for Named {
        type Response = &'static str;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<&'static str, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<()>) -> Self::Future {
            let (name, open) = (self.name, self.open.clone());
            Box::pin(async move {
                let _go = open.acquire().await;
                Ok(name)
            })
        }
    }

    #[tokio::test]
    async fn a_request_in_flight_finishes_on_the_stack_it_arrived_on() {
        let open = Arc::new(Semaphore::new(0));
        let live = Live::new(Named { name: "old", open: open.clone() });
        let old: Weak<Semaphore> = Arc::downgrade(&open);
        drop(open);

        // `call` picks the stack at once: this request has arrived.
        let in_flight = tokio::spawn(live.clone().call(Request::new(())));
        live.replace(Named { name: "new", open: Arc::new(Semaphore::new(1)) });
        assert_eq!(live.clone().oneshot(Request::new(())).await.unwrap(), "new", "a new request takes the new stack");
        assert!(!in_flight.is_finished(), "the old request still runs");

        // The old stack lives while its request does, and goes with it.
        old.upgrade().expect("the old stack is still held by its request").add_permits(1);
        assert_eq!(in_flight.await.unwrap().unwrap(), "old");
        assert!(old.upgrade().is_none(), "the old stack is freed with its last request");
    }
}
