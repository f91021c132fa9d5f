//! The pool's state in the store (`pool_state`): restored at start, saved
//! on an interval and at shutdown. It holds key ids (fingerprints), never
//! secrets. Nothing saved means a fresh start; a corrupt document is
//! replaced by the next save, and one of another format version is copied
//! aside (a downgrade must not lose a newer proxy's state): never a reason
//! not to start.
//!
//! The state used to live in `<data dir>/state.json`: on the first start
//! with nothing saved in the database, that file is imported (with the
//! same checks) and renamed `state.json.migrated`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use keyrelay_layers::pool::{KeyPool, PoolSnapshot, SNAPSHOT_VERSION};

use crate::store::{Store, now_ms, pool_state};

/// The file earlier versions kept the state in.
pub const LEGACY_FILE: &str = "state.json";

/// Where the pool's state lives: the store, and the data dir for the
/// legacy file and anything set aside.
#[derive(Clone, Debug)]
pub struct PoolState {
    store: Store,
    data_dir: PathBuf,
}

impl PoolState {
    pub fn new(store: Store, data_dir: &Path) -> Self {
        Self { store, data_dir: data_dir.to_path_buf() }
    }

    /// The database the state is saved in.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Restores what was saved (or, the first time, the legacy file) into
    /// `pool`; returns a note for the start-up banner.
    pub fn restore(&self, pool: &KeyPool) -> Option<String> {
        match self.store.blocking(|conn| pool_state::load(conn)) {
            Ok(Some(saved)) => Some(self.restore_saved(pool, &saved)),
            Ok(None) => self.migrate_legacy_file(pool),
            Err(err) => Some(format!(
                "cannot read the key state from {}: {err}; starting with fresh key state",
                self.path().display()
            )),
        }
    }

    fn restore_saved(&self, pool: &KeyPool, saved: &str) -> String {
        let db = self.path().display();
        match serde_json::from_str::<PoolSnapshot>(saved) {
            Ok(snapshot) if snapshot.version != SNAPSHOT_VERSION => {
                let aside = self.data_dir.join(format!("pool_state.v{}.json", snapshot.version));
                let kept = std::fs::write(&aside, saved).is_ok();
                tracing::warn!(version = snapshot.version, "saved key state has another format version");
                format!(
                    "the key state in {db} has format version {} (this build reads {SNAPSHOT_VERSION}); {} and started fresh",
                    snapshot.version,
                    if kept { format!("copied it to {}", aside.display()) } else { "ignored it".to_owned() }
                )
            }
            Ok(snapshot) => {
                let restored = pool.restore(&snapshot);
                format!("restored the state of {restored} key(s) from {db}")
            }
            Err(err) => {
                tracing::warn!(db = %db, error = %err, "saved key state is corrupt");
                format!("the key state in {db} was corrupt ({err}); started fresh (the next save replaces it)")
            }
        }
    }

    /// Imports `state.json` when the database holds no state yet.
    fn migrate_legacy_file(&self, pool: &KeyPool) -> Option<String> {
        let path = self.data_dir.join(LEGACY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => return Some(format!("cannot read {}: {err}; starting with fresh key state", path.display())),
        };
        match serde_json::from_slice::<PoolSnapshot>(&bytes) {
            Ok(snapshot) if snapshot.version != SNAPSHOT_VERSION => {
                // Kept for the version that wrote it.
                let aside = path.with_extension(format!("json.v{}", snapshot.version));
                let moved = std::fs::rename(&path, &aside).is_ok();
                Some(format!(
                    "state file has format version {} (this build reads {SNAPSHOT_VERSION}); {} and started fresh",
                    snapshot.version,
                    if moved { format!("kept it as {}", aside.display()) } else { "ignored it".to_owned() }
                ))
            }
            Ok(snapshot) => {
                let restored = pool.restore(&snapshot);
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let moved = match self.store.blocking(|conn| pool_state::save(conn, &text, now_ms())) {
                    Ok(()) => {
                        let migrated = path.with_extension("json.migrated");
                        match std::fs::rename(&path, &migrated) {
                            Ok(()) => format!(
                                "it is now kept in {}; the file was renamed {}",
                                self.path().display(),
                                migrated.display()
                            ),
                            Err(err) => format!("cannot rename it ({err}): it is ignored from now on"),
                        }
                    }
                    Err(err) => format!("cannot save it in {} ({err}): it will be read again", self.path().display()),
                };
                Some(format!("restored the state of {restored} key(s) from {}; {moved}", path.display()))
            }
            Err(err) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_ms() / 1000));
                let moved = std::fs::rename(&path, &aside).is_ok();
                tracing::warn!(path = %path.display(), error = %err, "state file is corrupt");
                Some(if moved {
                    format!("state file was corrupt ({err}); moved to {} and started fresh", aside.display())
                } else {
                    format!("state file was corrupt ({err}); started fresh")
                })
            }
        }
    }

    /// Saves the pool's state (one transaction: the old document or the
    /// new one, never half of either).
    pub async fn save(&self, pool: &KeyPool) -> io::Result<()> {
        let json = serde_json::to_string(&pool.snapshot()).map_err(io::Error::other)?;
        self.store.run(move |conn| pool_state::save(conn, &json, now_ms())).await.map_err(io::Error::other)
    }

    /// Saves every `interval` until the task is dropped; failures are
    /// logged, never fatal.
    pub async fn save_every(self, pool: impl Fn() -> Arc<KeyPool>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(err) = self.save(&pool()).await {
                tracing::warn!(db = %self.path().display(), error = %err, "cannot save key state");
            }
        }
    }
}
