//! keyrelay: an OpenAI-compatible gateway in front of a pool of LLM provider
//! keys. The binary is thin: CLI, config, the stack from
//! [`keyrelay_layers`], and a hyper server.

pub mod access_log;
pub mod admin_clients;
pub mod check;
pub mod cli;
pub mod config;
pub mod persist;
pub mod reload;
pub mod request_log;
pub mod routes;
pub mod server;
pub mod shared;
pub mod stack;
pub mod status;
pub mod status_cli;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token_count;
pub mod ui;
pub mod ui_data;
pub mod usage;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use keyrelay_layers::{
    BoxError,
    pool::KeyPool,
    upstream::{ClientOptions, ModelCatalog, build_client},
};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    config::Settings,
    persist::PoolState,
    reload::{Live, ReloadHandle, ReloadSource, Reloader, ServerShape, SettingsLoader},
    request_log::RequestLogWriter,
    server::{ServerOptions, Shutdown},
    stack::App,
    store::{
        Store,
        ledger::{LedgerDb, LedgerWriter},
        pg::Reconnecting,
    },
};

/// How long one provider's model list may take to fetch.
const MODEL_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the shared state from validated settings.
pub fn app(settings: &Settings) -> Result<App, BoxError> {
    let client = build_client(&ClientOptions::default())?;
    let shed = keyrelay_layers::shed::LoadShedLayer::new(settings.max_concurrent_requests);
    let clients = Arc::new(keyrelay_layers::client::ClientDirectory::default());
    let shared = settings.shared.as_ref().map(|shared| shared::channel(shared, &settings.data_dir));
    app_from(settings, client, shed, None, ReloadHandle::default(), clients, shared)
}

/// The state for reloaded `settings`: keys, providers and proxy settings
/// anew, carrying over key state, the upstream client, the request log, the
/// in-flight cap and the reload handle of `current`.
pub fn app_reloaded(settings: &Settings, current: &App) -> Result<App, BoxError> {
    let mut app = app_from(
        settings,
        current.client.clone(),
        current.shed.clone(),
        Some(current.pool.clone()),
        current.reload.clone(),
        current.clients.clone(),
        // Redis is a start-up setting: a reload keeps the connection.
        current.shared.clone(),
    )?;
    app.request_log = current.request_log.clone();
    // Spend since start is one counter across reloads: it never goes back.
    app.cost_totals = current.cost_totals.clone();
    app.ledger = current.ledger.clone();
    app.store = current.store.clone();
    Ok(app)
}

fn app_from(
    settings: &Settings,
    client: keyrelay_layers::upstream::HttpsClient,
    shed: keyrelay_layers::shed::LoadShedLayer,
    carry_over: Option<Arc<KeyPool>>,
    reload: ReloadHandle,
    clients: Arc<keyrelay_layers::client::ClientDirectory>,
    shared: Option<(Arc<shared::Outbox>, Arc<shared::Shared>)>,
) -> Result<App, BoxError> {
    let (remembered, ttl) = settings.remembered_responses;
    let mut pool = KeyPool::builder()
        .daily_reset_utc(settings.daily_reset)
        .remembered_responses(remembered, ttl)
        .prices(settings.prices.clone());
    if let Some((outbox, redis)) = &shared {
        pool = pool.events(outbox.clone()).admission(redis.admission());
    }
    if let Some(previous) = carry_over {
        pool = pool.carry_over(previous);
    }
    for p in &settings.providers {
        pool = pool.provider_keys(p.provider.clone(), p.options, p.keys.clone());
    }
    let pool = pool.build()?;
    // Only once the new state is sure to be built: a refused reload
    // leaves the clients as they were.
    clients.set_configured(settings.clients.clone());
    Ok(App {
        pool,
        catalog: Arc::new(ModelCatalog::new(client.clone(), settings.models_cache_ttl, MODEL_LIST_TIMEOUT)),
        client,
        proxy_key: settings.proxy_key.clone(),
        admin_key: settings.admin_key.clone(),
        global_timeout: settings.global_timeout,
        stream_idle_timeout: settings.stream_idle_timeout,
        max_cooldown_wait: settings.max_cooldown_wait,
        route_defaults: settings.route_defaults.clone(),
        max_body_bytes: settings.max_body_bytes,
        metrics_open: settings.metrics_open,
        configured_providers: settings
            .providers
            .iter()
            .filter(|p| p.configured)
            .map(|p| p.provider.id().as_str().to_owned())
            .collect(),
        request_log: None,
        usage_ledger: settings.ledger.backend.clone(),
        cost_totals: Arc::default(),
        ledger: None,
        store: None,
        shed,
        reload,
        clients,
        shared,
    })
}

/// A bound, not yet serving, keyrelay.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    app: App,
    options: ServerOptions,
    state: PoolState,
    state_save_interval: Duration,
    notes: Vec<String>,
    request_log: Option<RequestLogWriter>,
    ledger: LedgerWriter,
    reload_source: Option<ReloadSource>,
}

impl Bound {
    /// Builds the app, opens the store, restores the pool's saved state,
    /// starts the ledger's writer, and binds.
    pub async fn bind(settings: &Settings) -> Result<Self, BoxError> {
        let mut app = app(settings)?;
        let request_log = settings.request_logging.then(|| {
            let (queue, writer) = request_log::channel(&settings.data_dir, request_log::QUEUE_CAPACITY);
            app.request_log = Some(queue);
            writer
        });
        let db = settings.ledger.db_path.clone();
        let cannot_open = |err: rusqlite::Error| format!("cannot open the database {}: {err}", db.display());
        let mut store = Store::open(&db).map_err(cannot_open)?;
        // The writer's own connection: its batches never wait for the
        // admin's, and the other way round only at SQLite's write lock.
        let ledger_db = match &settings.ledger.backend {
            config::ledger::LedgerBackend::Sqlite(_) => LedgerDb::Sqlite(store::open(&db).map_err(cannot_open)?),
            config::ledger::LedgerBackend::Postgres(url) => {
                let (shared, writer) = open_postgres(url.clone()).await?;
                store = store.with_postgres(shared);
                LedgerDb::Postgres(Box::new(writer))
            }
        };
        let (queue, ledger) =
            store::ledger::start(ledger_db, store::ledger::QUEUE_CAPACITY, settings.ledger.retention_days);
        app.ledger = Some(queue);
        app.store = Some(store.clone());
        let state = PoolState::new(store.clone(), &settings.data_dir);
        let mut notes: Vec<String> = state.restore(&app.pool).into_iter().collect();
        notes.extend(admin_clients::restore(&app.clients, &store).await);
        notes.extend(restore_spend(&app).await);
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {}: {err}", settings.listen)))?;
        let options = ServerOptions {
            header_read_timeout: settings.header_read_timeout,
            max_header_bytes: settings.max_header_bytes,
            shutdown_grace: settings.shutdown_grace,
            tls: settings.tls.as_ref().map(tls::acceptor).transpose()?,
        };
        Ok(Self {
            listener,
            app,
            options,
            state,
            state_save_interval: settings.state_save_interval,
            notes,
            request_log,
            ledger,
            reload_source: None,
        })
    }

    /// Lets SIGHUP and `POST /v1/admin/reload` read the configuration again
    /// with `loader` (the binary passes the same sources it started from).
    pub fn reload_with(mut self, settings: &Settings, loader: SettingsLoader) -> Self {
        self.reload_source = Some(ReloadSource { loader, started_with: ServerShape::of(settings) });
        self
    }

    /// What binding learned that the operator should hear (restored state).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` resolves and in-flight requests drain, saving
    /// the pool's state on an interval and once more at the end and running
    /// the metrics recorder's upkeep; commits the ledger rows still queued
    /// and, with request logging, writes what is still queued before
    /// returning.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Shutdown {
        let build = stack::build::<hyper::body::Incoming>;
        let service = Live::new(build(&self.app));
        let current = Arc::new(RwLock::new(self.app.clone()));
        if let Some(ReloadSource { loader, started_with }) = self.reload_source {
            let reloader = Reloader {
                loader,
                app: current.clone(),
                stack: service.clone(),
                build,
                started_with,
                running: Default::default(),
            };
            reloader.install(&self.app.reload);
            if let Err(err) = reload::on_sighup(self.app.reload.clone()) {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: reload only through POST /v1/admin/reload");
            }
        }
        let pool_now = {
            let current = current.clone();
            move || current.read().unwrap_or_else(|p| p.into_inner()).pool.clone()
        };
        let saver = tokio::spawn(self.state.clone().save_every(pool_now.clone(), self.state_save_interval));
        let shared = self
            .app
            .shared
            .as_ref()
            .map(|(_, shared)| {
                let (clients, store) = (self.app.clients.clone(), self.app.store.clone());
                shared.run(pool_now.clone(), move || {
                    // Another replica made or revoked a client key: read
                    // them again from the store we share.
                    let (clients, store) = (clients.clone(), store.clone());
                    tokio::spawn(async move {
                        let Some(store) = store else { return };
                        match admin_clients::resync(&clients, &store).await {
                            Ok((0, 0)) => {}
                            Ok((added, removed)) => tracing::info!(added, removed, "client keys changed elsewhere"),
                            Err(err) => tracing::warn!(error = %err, "cannot read the client keys again"),
                        }
                    });
                })
            })
            .unwrap_or_default();
        let upkeep = tokio::spawn(telemetry::metrics_upkeep(telemetry::METRICS_UPKEEP_INTERVAL));
        let request_log = self.request_log.map(|writer| {
            let (stop, stopped) = oneshot::channel();
            (stop, tokio::spawn(writer.run(stopped)))
        });
        let outcome = server::serve(self.listener, service, &self.options, shutdown).await;
        saver.abort();
        for task in shared {
            task.abort();
        }
        upkeep.abort();
        if let Some((stop, writer)) = request_log {
            let _ = stop.send(());
            if let Err(err) = writer.await {
                tracing::warn!(error = %err, "the request log writer failed");
            }
        }
        self.ledger.finish().await;
        if let Err(err) = self.state.save(&pool_now()).await {
            tracing::warn!(path = %self.state.path().display(), error = %err, "cannot save key state at shutdown");
        }
        outcome
    }
}

/// Connects to the Postgres ledger (migrating it): one connection for the
/// store's rare operations, one for the ledger's writer. Off tokio's
/// workers: the sync client runs a runtime of its own.
async fn open_postgres(url: config::ledger::PostgresUrl) -> Result<(Reconnecting, Reconnecting), BoxError> {
    let shown = url.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let shared = store::pg::open(&url)?;
        let writer = store::pg::connect(&url)?;
        Ok::<_, store::pg::PgError>((Reconnecting::new(url.clone(), shared), Reconnecting::new(url, writer)))
    })
    .await?;
    opened.map_err(|err| format!("cannot open the Postgres ledger {shown}: {err}").into())
}

/// Gives each key's budget what the store says it spent in the key's
/// current period (the ledger writer keeps it per period); a note when the
/// store cannot be read.
async fn restore_spend(app: &App) -> Option<String> {
    let store = app.store.as_ref()?;
    let now = store::now_ms();
    let rows = match store.current_spend(now).await {
        Ok(rows) => rows,
        Err(err) => return Some(format!("cannot read what keys spent from {}: {err}", store.describe())),
    };
    for row in rows.into_iter().filter(|row| row.kind == store::spend::KEY) {
        if app.pool.key_budget(&row.name).is_some_and(|budget| budget.period == row.period) {
            app.pool.restore_key_spend(&row.name, row.period_start, row.usd);
        }
    }
    None
}

/// The start-up banner: where it listens and what it holds, never a secret.
pub fn banner(addr: SocketAddr, settings: &Settings, bound: &Bound) -> String {
    let app = bound.app();
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let mut out = format!("keyrelay listening on {scheme}://{addr}\n");
    let mut any = false;
    for pool in app.pool.providers().filter(|p| !p.keys().is_empty()) {
        any = true;
        let p = pool.provider();
        out.push_str(&format!(
            "  {:<12} {} key{} ({}{}) -> {}\n",
            p.id().as_str(),
            pool.keys().len(),
            if pool.keys().len() == 1 { "" } else { "s" },
            pool.selection(),
            match pool.options().max_concurrent_per_key {
                0 => String::new(),
                cap => format!(", {cap} in flight per key and model"),
            },
            p.api_base()
        ));
    }
    if !any {
        out.push_str("  no provider keys configured: set e.g. OPENAI_API_KEY_1 (see .env.example)\n");
    }
    for note in settings.notes.iter().chain(bound.notes()) {
        out.push_str(&format!("  note: {note}\n"));
    }
    out
}
