//! End-to-end load bench: keyrelay against a bare hyper hop and against the
//! mock upstream reached directly, in one run on this machine.
//!
//! ```text
//! cargo bench --bench load                  # the README's table (about 2 minutes)
//! cargo bench --bench load -- --secs 1      # shorter runs
//! ```
//!
//! The bench starts three processes from this same executable or keyrelay's:
//! the mock upstream, the bare hop and keyrelay (release build, 4 keys, a
//! proxy key, info logs to /dev/null, request logging off). With `taskset`
//! available, keyrelay and the bare hop share core 0 (only one is loaded at
//! a time) and the mock and this load generator share core 1, so the proxy
//! under test has a core of its own. Each point is a warm-up, then a timed
//! run of keep-alive connections sending back to back.
#![allow(clippy::disallowed_methods)] // a bench measures wall-clock time and spawns freely
#![allow(clippy::print_stderr)]

mod bare_hop;
mod drive;
mod mock;
mod report;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use drive::{Mode, Target};

const PROXY_KEY: &str = "bench-proxy-key";
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match args.first().map(String::as_str) {
        Some("serve-mock") => runtime().block_on(async {
            let (listener, addr) = mock::bind().await;
            announce(addr);
            mock::serve(listener).await
        }),
        Some("serve-bare-hop") => {
            let upstream: SocketAddr = args[1].parse().expect("serve-bare-hop <upstream addr>");
            runtime().block_on(async {
                let (listener, addr) = mock::bind().await;
                announce(addr);
                bare_hop::serve(listener, upstream).await
            })
        }
        _ => orchestrate(&args),
    }
}

fn announce(addr: SocketAddr) {
    println!("listening on {addr}");
}

struct Settings {
    warmup: Duration,
    run: Duration,
}

fn orchestrate(args: &[String]) {
    let secs = flag(args, "--secs").unwrap_or(2.0);
    let settings = Settings { warmup: Duration::from_millis(500), run: Duration::from_secs_f64(secs) };
    let pinned = Command::new("taskset").arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if pinned {
        // This process becomes the load generator on core 1, with the mock.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    } else {
        eprintln!("taskset not found: processes are not pinned to cores");
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let mock = Server::start(pinned.then_some("1"), Command::new(&exe).arg("serve-mock"));
    let bare =
        Server::start(pinned.then_some("0"), Command::new(&exe).args(["serve-bare-hop", &mock.addr.to_string()]));
    let data_dir = tempfile::tempdir().expect("a temp dir for keyrelay's state");
    let keyrelay = Server::start(pinned.then_some("0"), &mut keyrelay_command(mock.addr, data_dir.path()));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let mut rows = Vec::new();
    for mode in [Mode::Chat, Mode::Stream] {
        for concurrency in CONCURRENCY {
            let point = |server: &Server, target: Target| {
                let cpu_before = server.cpu_ticks();
                let samples = rt.block_on(drive::run(&target, mode, concurrency, settings.warmup, settings.run));
                let cpu = server.cpu_ticks() - cpu_before;
                report::Point::new(samples, cpu, server.peak_rss_kib())
            };
            let direct = point(&mock, target(mock.addr, "/v1/chat/completions", None, "gpt-4o-mini"));
            let hop = point(&bare, target(bare.addr, "/v1/chat/completions", None, "gpt-4o-mini"));
            let proxy = point(
                &keyrelay,
                target(keyrelay.addr, "/v1/chat/completions", Some("Bearer bench-proxy-key"), "openai/gpt-4o-mini"),
            );
            let row = report::Row { mode, concurrency, direct, hop, proxy };
            eprintln!("{}", row.progress());
            rows.push(row);
        }
    }
    report::print(&rows, pinned, secs);
}

fn target(addr: SocketAddr, path: &'static str, bearer: Option<&'static str>, model: &'static str) -> Target {
    Target { addr, path, bearer, model }
}

fn flag(args: &[String], name: &str) -> Option<f64> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn keyrelay_command(upstream: SocketAddr, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.env_clear()
        .current_dir(data_dir)
        .env("PROXY_API_KEY", PROXY_KEY)
        .env("OPENAI_API_BASE", format!("http://{upstream}/v1"))
        .args(["--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--data-dir"])
        .arg(data_dir);
    for n in 1..=4 {
        cmd.env(format!("OPENAI_API_KEY_{n}"), format!("sk-bench-{n:0>40}"));
    }
    cmd
}

/// A child process serving on loopback, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(core: Option<&str>, cmd: &mut Command) -> Server {
        let mut cmd = match core {
            Some(core) => {
                let mut pinned = Command::new("taskset");
                pinned.args(["-c", core]).arg(cmd.get_program()).args(cmd.get_args());
                for (key, value) in cmd.get_envs() {
                    match value {
                        Some(value) => pinned.env(key, value),
                        None => pinned.env_remove(key),
                    };
                }
                if let Some(dir) = cmd.get_current_dir() {
                    pinned.current_dir(dir);
                }
                pinned
            }
            None => std::mem::replace(cmd, Command::new("true")),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start a bench server");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest =
                    line.strip_prefix("listening on ").or_else(|| line.strip_prefix("keyrelay listening on "))?;
                rest.trim_start_matches("http://").trim().parse().ok()
            })
            .expect("the server says where it listens");
        // Keep reading, or a chatty server blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }

    /// The process's user plus system CPU time, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th of the whole line.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        field(11) + field(12)
    }

    /// The process's peak resident set so far, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
