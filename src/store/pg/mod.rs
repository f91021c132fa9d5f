//! The shared store on Postgres (`ledger.url = "postgres://..."`): the
//! usage ledger, the spend per budget period and the runtime client keys,
//! one database for every replica. The pool's state is not here: it stays
//! in each replica's own SQLite file.
//!
//! The client is the sync `postgres` crate, used only off tokio's workers:
//! on the ledger's own thread ([`super::ledger`]) and on tokio's blocking
//! pool ([`super::Store`]). TLS is rustls, as `sslmode` asks ([`tls`]).
//!
//! Migrations are the SQL files under `migrations/postgres/`, applied in
//! order, each in one transaction, recorded in `keyrelay_schema`, under an
//! advisory lock so that replicas starting together migrate once.

pub mod clients;
pub mod ledger;
pub mod report;
pub mod tls;

use std::time::Duration;

use postgres::Client;

use crate::config::ledger::PostgresUrl;

/// Each migration: the version it brings the database to, and its SQL.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../../migrations/postgres/0001_ledger_clients.sql"))];

/// The advisory lock held while migrating ("keyrelay" in ASCII): any
/// number works, as long as every replica takes the same one.
const MIGRATION_LOCK: i64 = 0x6b65_7972_656c_6179;

/// How long a connection attempt may take: a replica starting beside a
/// dead database says so rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the database answered, or why it could not be reached, shown with
/// its causes: the client's own message stops at "error performing TLS
/// handshake" or "db error", and the why (`invalid peer certificate:
/// UnknownIssuer`, the server's `ERROR: ...`) is in its source.
#[derive(Debug)]
pub struct PgError(postgres::Error);

impl From<postgres::Error> for PgError {
    fn from(err: postgres::Error) -> Self {
        Self(err)
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            if let Some(hint) = tls::hint(err) {
                write!(f, " ({hint})")?;
            }
            cause = err.source();
        }
        Ok(())
    }
}

/// The causes are in the message already, so none is given as a source
/// (a caller printing the chain would repeat them).
impl std::error::Error for PgError {}

/// Connects to `url` (never on a tokio worker thread: the client runs a
/// runtime of its own).
pub fn connect(url: &PostgresUrl) -> Result<Client, PgError> {
    let mut config = url.config();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("keyrelay");
    }
    Ok(config.connect(tls::connector(url.tls()))?)
}

/// Connects to `url` and brings its schema up to date.
pub fn open(url: &PostgresUrl) -> Result<Client, PgError> {
    let mut client = connect(url)?;
    migrate(&mut client)?;
    Ok(client)
}

/// Applies the migrations the database has not seen, holding the
/// migration lock (another replica migrating makes this one wait, then
/// find nothing to do); returns the schema's version.
pub fn migrate(client: &mut Client) -> Result<i32, PgError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let migrated = apply_migrations(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let version = migrated?;
    unlocked?;
    Ok(version)
}

fn apply_migrations(client: &mut Client) -> Result<i32, PgError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS keyrelay_schema (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )?;
    let mut version: i32 = client.query_one("SELECT COALESCE(MAX(version), 0) FROM keyrelay_schema", &[])?.get(0);
    for &(to, sql) in MIGRATIONS {
        if version >= to {
            continue;
        }
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO keyrelay_schema (version, applied_ms) VALUES ($1, $2)",
            &[&to, &super::sql_int(super::now_ms())],
        )?;
        tx.commit()?;
        tracing::info!(version = to, "Postgres ledger schema migrated");
        version = to;
    }
    Ok(version)
}

/// A connection that comes back: a closed one (the server restarted, the
/// network dropped it) is replaced on the next use.
pub struct Reconnecting {
    url: PostgresUrl,
    client: Option<Client>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting").field("url", &self.url).field("connected", &self.client.is_some()).finish()
    }
}

impl Drop for Reconnecting {
    fn drop(&mut self) {
        // The sync client closes its connection by blocking on its own
        // runtime, which panics on a tokio thread (the last store handle
        // often goes with the app, there): closed on a thread of its own.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let spawned = std::thread::Builder::new().name("keyrelay-pg-close".to_owned()).spawn(move || drop(client));
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot close a Postgres connection cleanly");
            }
        }
    }
}

impl Reconnecting {
    /// Starts with `client`, connected to `url`.
    pub fn new(url: PostgresUrl, client: Client) -> Self {
        Self { url, client: Some(client) }
    }

    /// The database it connects to (password hidden when shown).
    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    /// Runs `op` on a live connection, connecting first if need be.
    pub fn with<T>(&mut self, op: impl FnOnce(&mut Client) -> Result<T, PgError>) -> Result<T, PgError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(connect(&self.url)?);
        }
        let client = self.client.as_mut().expect("connected above");
        let result = op(client);
        if client.is_closed() {
            self.client = None;
        }
        result
    }
}
