//! keyrelay in process: configured through `keyrelay::config::load` exactly
//! as the binary is, from an explicit environment and an empty temporary
//! working directory, then bound on `127.0.0.1:0` and served on the test's
//! runtime until [`Proxy::begin_shutdown`]. Its data dir (the pool's
//! `state.json`) is `data/` in that working directory unless a test names
//! one ([`Proxy::start_in`]), e.g. to restart on the same state.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use keyrelay::{
    Bound,
    config::{self, Settings, Sources},
    server::Shutdown,
};
use keyrelay_layers::pool::KeyPool;
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{Dialect, MockUpstream, dialect_env, within};

/// The usual environment: the proxy key, `keys` pool keys for `openai`
/// (`OPENAI_API_KEY_1`, `_2`, ...) and `OPENAI_API_BASE` at the mock.
pub fn openai_env(mock: &MockUpstream, keys: usize) -> Vec<(String, String)> {
    assert_eq!(mock.dialect(), Dialect::OpenAi, "openai_env wants an OpenAI mock");
    dialect_env(&[mock], keys)
}

/// Settings as the binary loads them, from `env` and an otherwise empty
/// working directory `dir`, on port 0.
pub fn load_settings(
    dir: &Path,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
) -> Result<Settings, config::ConfigError> {
    config::load(Sources {
        config_path: None,
        working_dir: dir.to_path_buf(),
        env,
        host: None,
        port: Some(0),
        data_dir,
        request_logging: false,
    })
}

/// A running keyrelay.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: JoinHandle<Shutdown>,
    data_dir: PathBuf,
    notes: Vec<String>,
    pool: Arc<KeyPool>,
    _dir: TempDir,
}

impl Proxy {
    pub async fn start(env: Vec<(String, String)>) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// Starts with settings adjusted by `tweak` after loading (e.g. a short
    /// `global_timeout` that the env, in whole seconds, cannot express).
    pub async fn start_with(env: Vec<(String, String)>, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_from(env, None, tweak).await
    }

    /// Starts with its state in `data_dir` (as `--data-dir` gives it), so
    /// that another proxy can later start on the same state.
    pub async fn start_in(env: Vec<(String, String)>, data_dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_from(env, Some(data_dir.to_path_buf()), tweak).await
    }

    /// Starts with `config_toml` as the working dir's `config.toml`, and
    /// its state in `data_dir` when given.
    pub async fn start_with_config(env: Vec<(String, String)>, config_toml: &str, data_dir: Option<&Path>) -> Self {
        Self::start_configured(env, Some(config_toml), data_dir.map(Path::to_path_buf), |_| {}).await
    }

    async fn start_from(
        env: Vec<(String, String)>,
        data_dir: Option<PathBuf>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::start_configured(env, None, data_dir, tweak).await
    }

    async fn start_configured(
        env: Vec<(String, String)>,
        config_toml: Option<&str>,
        data_dir: Option<PathBuf>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary working dir");
        if let Some(toml) = config_toml {
            std::fs::write(dir.path().join("config.toml"), toml).expect("config.toml written");
        }
        let env_sets_reset = env.iter().any(|(name, _)| name == "KEYRELAY_PROXY__DAILY_RESET_UTC");
        let mut settings =
            load_settings(dir.path(), env, data_dir).unwrap_or_else(|err| panic!("test configuration refused: {err}"));
        if !env_sets_reset {
            // Far from now: no reset, nor a cooldown cut by one, mid-test.
            settings.daily_reset = super::test_daily_reset();
        }
        tweak(&mut settings);
        let bound = Bound::bind(&settings).await.unwrap_or_else(|err| panic!("keyrelay did not bind: {err}"));
        let addr = bound.local_addr().expect("bound address");
        assert!(addr.ip().is_loopback(), "tests listen on loopback: {addr}");
        let notes = bound.notes().to_vec();
        let pool = bound.app().pool.clone();
        let data_dir = settings.data_dir.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(bound.serve(async move {
            // A dropped sender (the test ended) also stops the server.
            let _ = rx.await;
        }));
        Self { addr, shutdown: Some(tx), served, data_dir, notes, pool, _dir: dir }
    }

    /// The key pool it serves from (the one it started with).
    pub fn pool(&self) -> &Arc<KeyPool> {
        &self.pool
    }

    /// Where the pool's state file lives.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What binding told the operator (e.g. state restored or set aside).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Tells the server to stop accepting and drain.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether `serve` is still running.
    pub fn is_serving(&self) -> bool {
        !self.served.is_finished()
    }

    /// Waits (bounded) for `serve` to return and says how it went.
    pub async fn finished(self) -> Shutdown {
        within("keyrelay's serve() to return", self.served).await.expect("serve() did not panic")
    }

    /// Shuts down and waits (bounded) for `serve` to return, which saves
    /// the pool's state.
    pub async fn stop(mut self) -> Shutdown {
        self.begin_shutdown();
        self.finished().await
    }
}
