//! [`Store`]: the connection for everything but the ledger's rows (runtime
//! clients, the pool's state, spend read back at start). Those operations
//! are rare, so one connection behind a mutex does, and each runs on
//! tokio's blocking pool, never on a request's thread.
//!
//! The pool's state is always in the local SQLite file; the runtime
//! clients and the spend are there too, unless the ledger is on Postgres
//! ([`Store::with_postgres`]), where they are shared by the replicas.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use rusqlite::Connection;

use super::{
    clients::{self, InsertError, StoredClient},
    pg::{self, PgError, Reconnecting},
    spend::{self, SpendRow},
};

/// A shared connection to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
    /// The shared database of the clients and the spend, when configured.
    shared: Option<Arc<Mutex<Reconnecting>>>,
}

/// An operation that did not run to the end (the blocking task panicked
/// or the runtime is shutting down), or that the database refused.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    Db(rusqlite::Error),
    /// The shared (Postgres) store refused it or could not be reached.
    Shared(PgError),
    /// The blocking task did not finish.
    Task(tokio::task::JoinError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(err) => write!(f, "database: {err}"),
            Self::Shared(err) => write!(f, "shared database: {err}"),
            Self::Task(err) => write!(f, "database task: {err}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Db(err)
    }
}

impl From<PgError> for StoreError {
    fn from(err: PgError) -> Self {
        Self::Shared(err)
    }
}

impl Store {
    /// Opens (creating, migrating) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Ok(Self { conn: Arc::new(Mutex::new(super::open(path)?)), path: Arc::from(path), shared: None })
    }

    /// Keeps the runtime clients and the spend in the Postgres database
    /// `shared` is connected to (migrated), not in the local file.
    pub fn with_postgres(mut self, shared: Reconnecting) -> Self {
        self.shared = Some(Arc::new(Mutex::new(shared)));
        self
    }

    /// The local database file (the pool's state).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the runtime clients and the spend are, for notes and logs: the
    /// local file, or the Postgres URL without its password.
    pub fn describe(&self) -> String {
        match &self.shared {
            Some(shared) => shared.lock().unwrap_or_else(PoisonError::into_inner).url().to_string(),
            None => self.path.display().to_string(),
        }
    }

    /// Runs `op` on the shared database if there is one, else `local` on
    /// the local file; on tokio's blocking pool either way.
    async fn either<T: Send + 'static>(
        &self,
        shared: impl FnOnce(&mut postgres::Client) -> Result<T, PgError> + Send + 'static,
        local: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let Some(pg) = self.shared.clone() else { return self.run(local).await };
        let task = tokio::task::spawn_blocking(move || {
            pg.lock().unwrap_or_else(PoisonError::into_inner).with(shared).map_err(StoreError::Shared)
        });
        task.await.map_err(StoreError::Task)?
    }

    /// Runs `op` on the connection, on this thread (it may block).
    pub fn blocking<T>(&self, op: impl FnOnce(&mut Connection) -> T) -> T {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        op(&mut conn)
    }

    /// Runs `op` on the connection, on tokio's blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.blocking(op)).await {
            Ok(result) => result.map_err(StoreError::Db),
            Err(err) => Err(StoreError::Task(err)),
        }
    }

    /// Stores a runtime client; a name or key already there is
    /// [`InsertError::NameTaken`] or [`InsertError::KeyTaken`].
    pub async fn insert_client(&self, client: StoredClient) -> Result<(), InsertError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || match &store.shared {
            Some(pg) => {
                let mut pg = pg.lock().unwrap_or_else(PoisonError::into_inner);
                let mut outcome = Ok(());
                // The connection's own failure is the Err; the insert's
                // answer (name or key taken) travels in `outcome`.
                pg.with(|conn| {
                    outcome = pg::clients::insert(conn, &client);
                    Ok(())
                })
                .map_err(|err| InsertError::Shared(err.to_string()))?;
                outcome
            }
            None => store.blocking(|conn| clients::insert(conn, &client)),
        })
        .await
        .map_err(|err| InsertError::Task(err.to_string()))?
    }

    /// Deletes the runtime client `name`; whether there was one.
    pub async fn delete_client(&self, name: String) -> StoreResult<bool> {
        let local = name.clone();
        self.either(move |pg| pg::clients::delete(pg, &name), move |conn| clients::delete(conn, &local)).await
    }

    /// Every runtime client.
    pub async fn load_clients(&self) -> StoreResult<Vec<StoredClient>> {
        self.either(pg::clients::load_all, |conn| clients::load_all(conn)).await
    }

    /// The spend of the periods that hold `now_ms`; see [`spend::current`].
    pub async fn current_spend(&self, now_ms: u64) -> StoreResult<Vec<SpendRow>> {
        self.either(move |pg| pg::clients::current_spend(pg, now_ms), move |conn| spend::current(conn, now_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn async_operations_share_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&super::super::db_path(dir.path())).unwrap();
        let client = StoredClient {
            name: "ci-bot".to_owned(),
            key_sha256: "ab".repeat(32),
            key_prefix: "kr-abab".to_owned(),
            settings: "{}".to_owned(),
            created_ms: 1,
            expires_ms: None,
        };
        store.insert_client(client.clone()).await.unwrap();
        assert!(matches!(store.insert_client(client.clone()).await, Err(InsertError::NameTaken)));
        assert_eq!(store.load_clients().await.unwrap(), [client]);
        assert!(store.delete_client("ci-bot".to_owned()).await.unwrap());
        assert!(store.current_spend(super::super::now_ms()).await.unwrap().is_empty());
    }
}
