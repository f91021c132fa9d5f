//! A real PostgreSQL for a test: the distribution's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, installed by `.ci/servers.sh`),
//! a cluster made by `initdb` in a temporary directory, served on a free
//! loopback port and stopped (the process killed, the directory removed)
//! when the [`PostgresServer`] is dropped. Durability is off (`--no-sync`,
//! `fsync=off`): a test's cluster never outlives it.
//!
//! Postgres refuses to run as root; when the tests do, the cluster belongs
//! to the `postgres` user and its programs run through `setpriv`.

// Start and stop are sync (stop runs in Drop) and wait on a real process
// in real time, which tokio's pausable clock has nothing to do with.
#![allow(clippy::disallowed_methods)]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{WAIT, closed_port};

/// The role the tests connect as (trusted: no password).
pub const USER: &str = "keyrelay";

/// A running cluster; stopped on drop.
#[derive(Debug)]
pub struct PostgresServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// How long initdb and the start took.
    pub started_in: Duration,
}

impl PostgresServer {
    /// Makes a cluster and starts it; panics with the server's log when it
    /// does not come up within [`WAIT`].
    pub fn start() -> Self {
        let began = Instant::now();
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let as_root = is_root();
        if as_root {
            chown_to_postgres(dir.path());
        }
        let initdb = run_as(as_root, &bin.join("initdb"))
            .args(["-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8", "--locale", "C", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let port = closed_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("a log file");
        if as_root {
            chown_to_postgres(&dir.path().join("postgres.log"));
        }
        let child = run_as(as_root, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let mut server = Self { child, port, dir, started_in: Duration::ZERO };
        server.wait_ready();
        server.started_in = began.elapsed();
        server
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database's URL (`postgres://keyrelay@127.0.0.1:PORT/t_...`).
    pub fn create_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` on database `db` and returns its rows, tab-separated
    /// (the psql of the same install; unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(server_bin().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("psql prints UTF-8")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited ({status}) before it accepted connections:\n{}", self.log());
            }
            // Listening is not yet accepting sessions (recovery, start-up):
            // a query is the real test.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.accepts_queries() {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start within {WAIT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn accepts_queries(&self) -> bool {
        Command::new(server_bin().join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", "postgres"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGQUIT is Postgres's immediate shutdown: no checkpoint, but the
        // backends and the shared memory go with it (a SIGKILL could leave
        // a SysV segment behind each test). The directory goes afterwards.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql (run .ci/servers.sh)")
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    bins.sort();
    bins.pop().map(|(_, bin)| bin).expect("an initdb under /usr/lib/postgresql/*/bin (run .ci/servers.sh)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown").arg("postgres:").arg(path).status().expect("chown runs");
    assert!(status.success(), "cannot give {} to the postgres user", path.display());
}

/// `program` as this user, or as `postgres` when root. `setpriv` execs
/// the program (unlike `runuser`, which forks and waits), so the child's
/// pid is the server's own and a signal to it reaches the server.
fn run_as(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}
