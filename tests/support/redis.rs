//! A real `redis-server` (Debian's package, which `.ci/run` installs when
//! missing) for tests: on a free loopback port, persisting nothing, in a
//! temporary directory, stopped when dropped. It can be stopped and started
//! again on the same port, as an operator's Redis might go away and come
//! back.

use std::{net::TcpListener, path::PathBuf, process::Stdio, time::Duration};

use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use super::within;

/// A running (or stopped) Redis.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut server = Self { port, dir: tempfile::tempdir().expect("a temporary dir"), child: None };
        server.resume().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): clients see their connections drop.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn resume(&mut self) {
        let binary = which("redis-server").expect("redis-server is installed (.ci/servers.sh installs it)");
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        within("redis-server to answer PING", async move {
            while ping(port).await.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// One command in Redis' inline protocol, and the first line of its
    /// answer (`+PONG`, `:3`...).
    pub async fn command(&self, line: &str) -> String {
        send(self.port, line).await.unwrap_or_else(|| panic!("redis-server did not answer {line:?}"))
    }
}

async fn ping(port: u16) -> Option<String> {
    send(port, "PING").await.filter(|answer| answer == "+PONG")
}

async fn send(port: u16, line: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    Some(text.lines().next().unwrap_or_default().to_owned())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|p| p.exists())
}
