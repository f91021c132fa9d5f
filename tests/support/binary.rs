//! The real keyrelay binary as a child process: started with nothing from
//! this process's environment but `PATH`, in a directory the test chooses,
//! read until its banner gives the address, signalled with `kill`, and its
//! output kept for the test to scan.

use std::{net::SocketAddr, path::Path, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};

use super::within;

/// The line the binary prints first, before its address.
pub const BANNER: &str = "keyrelay listening on http://";

/// The binary in `dir` with `args`, and nothing from this process's
/// environment but `PATH` and `env`.
pub fn keyrelay(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A started binary that announced its address; its output is drained
/// from the start, so the child never blocks on a full pipe.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// Everything a finished binary printed.
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub async fn start(mut cmd: Command) -> Running {
    let mut child = cmd.spawn().expect("start the keyrelay binary");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Drain stderr from the start so the child never blocks on a full pipe.
    let stderr = tokio::spawn(async move {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out).await;
        out
    });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    let addr = within("the banner on stdout", async {
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).await.expect("read the child's stdout");
            if n == 0 {
                break None;
            }
            seen.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix(BANNER) {
                break Some(addr.parse::<SocketAddr>().expect("a socket address"));
            }
        }
    })
    .await;
    let Some(addr) = addr else {
        // It exited: what it said on stderr (a refused configuration) is why.
        let stderr = within("stderr to close", stderr).await.unwrap_or_default();
        panic!("stdout closed before the banner:\n{seen}\nstderr:\n{stderr}");
    };
    let stdout = tokio::spawn(read_rest(lines, seen));
    Running { child, addr, stdout, stderr }
}

async fn read_rest(mut lines: BufReader<ChildStdout>, mut seen: String) -> String {
    let _ = lines.read_to_string(&mut seen).await;
    seen
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the child is running");
        let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        assert!(status.expect("run kill").success(), "kill -{signal} {pid} failed");
    }

    /// SIGTERM, then waits (bounded) for the exit and the output.
    pub async fn terminate(self) -> Exited {
        self.signal("TERM");
        self.exited().await
    }

    /// SIGKILL: no shutdown, no drain, nothing flushed; waits (bounded) for
    /// the exit and the output.
    pub async fn kill(mut self) -> Exited {
        within("the binary to die", self.child.kill()).await.expect("SIGKILL the child");
        self.exited().await
    }

    /// Waits (bounded) for the exit and the output.
    pub async fn exited(mut self) -> Exited {
        let status = within("the binary to exit after SIGTERM", self.child.wait()).await.expect("wait for the child");
        Exited {
            code: status.code(),
            stdout: within("stdout to close", self.stdout).await.unwrap(),
            stderr: within("stderr to close", self.stderr).await.unwrap(),
        }
    }
}

/// Runs the binary to completion (bounded).
pub async fn run_to_exit(mut cmd: Command) -> Exited {
    let out = within("the binary to exit", cmd.output()).await.expect("run the keyrelay binary");
    Exited {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
