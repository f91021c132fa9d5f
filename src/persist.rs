//! The pool's state file: restored at start, saved atomically (temp file +
//! rename) on an interval and at shutdown. It holds key ids (fingerprints),
//! never secrets. A missing file means a fresh start; a corrupt one is set
//! aside with a warning, never a reason not to start.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use keyrelay_layers::pool::{KeyPool, PoolSnapshot, SNAPSHOT_VERSION};

const FILE_NAME: &str = "state.json";

/// Where the state lives.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restores what the file holds into `pool`; returns a note for the
    /// start-up banner.
    pub fn restore(&self, pool: &KeyPool) -> Option<String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                return Some(format!("cannot read {}: {err}; starting with fresh key state", self.path.display()));
            }
        };
        match serde_json::from_slice::<PoolSnapshot>(&bytes) {
            Ok(snapshot) if snapshot.version != SNAPSHOT_VERSION => {
                // Kept for the version that wrote it (a downgrade must not
                // overwrite a newer proxy's state).
                let aside = self.path.with_extension(format!("json.v{}", snapshot.version));
                let moved = std::fs::rename(&self.path, &aside).is_ok();
                Some(format!(
                    "state file has format version {} (this build reads {SNAPSHOT_VERSION}); {} and started fresh",
                    snapshot.version,
                    if moved { format!("kept it as {}", aside.display()) } else { "ignored it".to_owned() }
                ))
            }
            Ok(snapshot) => {
                let restored = pool.restore(&snapshot);
                Some(format!("restored the state of {restored} key(s) from {}", self.path.display()))
            }
            Err(err) => {
                let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let aside = self.path.with_extension(format!("json.corrupt-{stamp}"));
                let moved = std::fs::rename(&self.path, &aside).is_ok();
                tracing::warn!(path = %self.path.display(), error = %err, "state file is corrupt");
                Some(if moved {
                    format!("state file was corrupt ({err}); moved to {} and started fresh", aside.display())
                } else {
                    format!("state file was corrupt ({err}); started fresh")
                })
            }
        }
    }

    /// Writes the pool's state atomically.
    pub async fn save(&self, pool: &KeyPool) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&pool.snapshot()).map_err(io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let tmp = self.path.with_extension("json.tmp");
        tokio::fs::write(&tmp, &json).await?;
        tokio::fs::rename(&tmp, &self.path).await
    }

    /// Saves every `interval` until the task is dropped; failures are
    /// logged, never fatal.
    pub async fn save_every(self, pool: impl Fn() -> std::sync::Arc<KeyPool>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(err) = self.save(&pool()).await {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot save key state");
            }
        }
    }
}
