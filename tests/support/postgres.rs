//! A real PostgreSQL for a test: the distribution's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, installed by `.ci/servers.sh`),
//! a cluster made by `initdb` in a temporary directory, served on a free
//! loopback port and stopped (the process killed, the directory removed)
//! when the [`PostgresServer`] is dropped. Durability is off (`--no-sync`,
//! `fsync=off`): a test's cluster never outlives it.
//!
//! [`PostgresServer::start_tls`] serves TLS too, with a certificate signed
//! by a [`TestCa`]; [`PostgresServer::restart`] takes the server down and
//! up again on the same port and data, as an outage would.
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
    /// The `-c` settings it runs with (TLS's among them), again on restart.
    settings: Vec<String>,
    /// False once stopped: the child is reaped, its pid no longer its own.
    running: bool,
    /// How long initdb and the start took.
    pub started_in: Duration,
}

impl PostgresServer {
    /// Makes a cluster and starts it (plain connections only); panics with
    /// the server's log when it does not come up within [`WAIT`].
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// As [`start`](Self::start), serving TLS (`ssl=on`) with a
    /// certificate for `names` (e.g. `localhost`, `127.0.0.1`) signed by
    /// `ca`; plain connections are still accepted.
    pub fn start_tls(ca: &TestCa, names: &[&str]) -> Self {
        Self::start_with(|dir| {
            let (cert, key) = ca.server_cert(names);
            let cert_path = dir.join("server.crt");
            let key_path = dir.join("server.key");
            std::fs::write(&cert_path, cert).expect("the server's certificate written");
            std::fs::write(&key_path, key).expect("the server's key written");
            // Postgres refuses a key that others can read.
            std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("the key made private");
            if is_root() {
                chown_to_postgres(&cert_path);
                chown_to_postgres(&key_path);
            }
            vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert_path.display()),
                format!("ssl_key_file={}", key_path.display()),
            ]
        })
    }

    fn start_with(settings: impl FnOnce(&Path) -> Vec<String>) -> Self {
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
        drop(log);
        let settings = settings(dir.path());
        let child = spawn(dir.path(), port, &settings);
        let mut server = Self { child, port, dir, settings, running: true, started_in: Duration::ZERO };
        server.wait_ready();
        server.started_in = began.elapsed();
        server
    }

    /// Stops the server (see [`stop`](Self::stop)) and starts it again on
    /// the same port and data, as a managed database's restart looks to
    /// the replicas.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the server as a restart for maintenance would: Postgres's fast
    /// shutdown (SIGINT) cuts the clients off and rolls back what is open;
    /// what was committed stays. No connections until
    /// [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        self.shut_down("-INT");
    }

    /// Starts a [stopped](Self::stop) server again, on the same port and
    /// data; returns once it accepts queries.
    pub fn start_again(&mut self) {
        assert!(!self.running, "postgres is running already");
        self.child = spawn(self.dir.path(), self.port, &self.settings);
        self.running = true;
        self.wait_ready();
    }

    fn shut_down(&mut self, signal: &str) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
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
        self.shut_down("-QUIT");
    }
}

/// The server process on `port`, its data and socket in `dir`, its log
/// appended to `dir/postgres.log`.
fn spawn(dir: &Path, port: u16, settings: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().append(true).open(dir.join("postgres.log")).expect("the log file");
    let mut command = run_as(is_root(), &server_bin().join("postgres"));
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=100"]);
    for setting in settings {
        command.args(["-c", setting]);
    }
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("postgres starts")
}

/// A certificate authority made for a test: it signs servers'
/// certificates, and its own certificate is the `sslrootcert` a client
/// trusts.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

impl TestCa {
    /// A new CA, named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert_pem = params.self_signed(&key).expect("the CA's certificate").pem();
        Self { issuer: rcgen::Issuer::new(params, key), cert_pem }
    }

    /// The CA's certificate written to `dir/<file>`; its path.
    pub fn write_cert(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.cert_pem).expect("the CA's certificate written");
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its
    /// key, both PEM.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("server params");
        let cert = params.signed_by(&key, &self.issuer).expect("the server's certificate");
        (cert.pem(), key.serialize_pem())
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
