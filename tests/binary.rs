//! Smoke tests of the real binary: started with a clean environment in an
//! empty temporary directory, on `--port 0`, talking to the in-process mock
//! upstream; stopped with SIGTERM. Plus the refusals that exit with 64.

mod support;

use std::{net::SocketAddr, path::Path, process::Stdio};

use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, SseReader, TestClient, assert_no_secret, chat_body,
    chat_completion, closed_port, post, stream_events, within,
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};

const BANNER: &str = "keyrelay listening on http://";
/// The exit status for a configuration that cannot run (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

/// The binary with nothing from this process's environment but `PATH`.
fn keyrelay(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
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

/// A started binary that announced its address.
struct Running {
    child: Child,
    addr: SocketAddr,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// Everything a finished binary printed.
struct Exited {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn start(mut cmd: Command) -> Running {
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
            assert!(n > 0, "stdout closed before the banner:\n{seen}");
            seen.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix(BANNER) {
                break addr.parse::<SocketAddr>().expect("a socket address");
            }
        }
    })
    .await;
    let stdout = tokio::spawn(read_rest(lines, seen));
    Running { child, addr, stdout, stderr }
}

async fn read_rest(mut lines: BufReader<ChildStdout>, mut seen: String) -> String {
    let _ = lines.read_to_string(&mut seen).await;
    seen
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then waits (bounded) for the exit and the output.
    async fn terminate(mut self) -> Exited {
        let pid = self.child.id().expect("the child is running");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let status = within("the binary to exit after SIGTERM", self.child.wait()).await.expect("wait for the child");
        Exited {
            code: status.code(),
            stdout: within("stdout to close", self.stdout).await.unwrap(),
            stderr: within("stderr to close", self.stderr).await.unwrap(),
        }
    }
}

/// Runs the binary to completion (bounded).
async fn run_to_exit(mut cmd: Command) -> Exited {
    let out = within("the binary to exit", cmd.output()).await.expect("run the keyrelay binary");
    Exited {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn chat_through(client: &TestClient, running: &Running) -> support::Reply {
    client
        .fetch(post(
            &running.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await
}

#[tokio::test]
async fn binary_serves_an_env_only_configuration_and_exits_cleanly_on_sigterm() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    let base = mock.base();
    let env = [
        ("PROXY_API_KEY", PROXY_KEY),
        ("OPENAI_API_KEY_1", KEY_ONE),
        ("OPENAI_API_KEY_2", KEY_TWO),
        ("OPENAI_API_BASE", base.as_str()),
    ];
    let running = start(keyrelay(dir.path(), &env, &["--port", "0"])).await;
    assert!(running.addr.ip().is_loopback(), "{}", running.addr);
    let client = TestClient::http1();

    let reply = chat_through(&client, &running).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), chat_completion("gpt-4o-mini"));

    let res = client
        .send(post(
            &running.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", true),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let events: Vec<String> = SseReader::new(res.into_body()).rest().await.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(events, stream_events("gpt-4o-mini"));

    let mut keys = mock.keys_seen();
    keys.sort();
    assert_eq!(keys, [KEY_ONE, KEY_TWO], "both keys, once each");

    let exited = running.terminate().await;
    assert_eq!(exited.code, Some(0), "stderr:\n{}", exited.stderr);
    assert!(
        exited.stdout.contains("openai") && exited.stdout.contains("2 keys"),
        "the banner names the provider and its key count:\n{}",
        exited.stdout
    );
    assert_no_secret("stdout", &exited.stdout);
    assert_no_secret("stderr", &exited.stderr);
}

#[tokio::test]
async fn binary_reads_its_configuration_from_dotenv_in_the_working_directory() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# keys for the test\nPROXY_API_KEY={PROXY_KEY}\nOPENAI_API_KEY_1=\"{KEY_ONE}\"\nOPENAI_API_BASE={}\n",
            mock.base()
        ),
    )
    .unwrap();
    let running = start(keyrelay(dir.path(), &[], &["--port", "0"])).await;
    let client = TestClient::http1();

    let reply = chat_through(&client, &running).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.keys_seen(), [KEY_ONE]);

    let exited = running.terminate().await;
    assert_eq!(exited.code, Some(0), "stderr:\n{}", exited.stderr);
    assert_no_secret("stdout", &exited.stdout);
    assert_no_secret("stderr", &exited.stderr);
}

#[tokio::test]
async fn binary_process_environment_overrides_dotenv_and_keys_from_both_add_up() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    // `.env` points at a dead upstream; the process environment wins.
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "PROXY_API_KEY={PROXY_KEY}\nOPENAI_API_KEY_1={KEY_ONE}\nOPENAI_API_BASE=http://127.0.0.1:{}/v1\n",
            closed_port()
        ),
    )
    .unwrap();
    let base = mock.base();
    let env = [("OPENAI_API_KEY_2", KEY_TWO), ("OPENAI_API_BASE", base.as_str())];
    let running = start(keyrelay(dir.path(), &env, &["--port", "0"])).await;
    let client = TestClient::http1();

    for _ in 0..2 {
        let reply = chat_through(&client, &running).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let mut keys = mock.keys_seen();
    keys.sort();
    assert_eq!(keys, [KEY_ONE, KEY_TWO], "the .env key and the process key");

    let exited = running.terminate().await;
    assert_eq!(exited.code, Some(0), "stderr:\n{}", exited.stderr);
    assert!(exited.stdout.contains("2 keys"), "{}", exited.stdout);
    assert_no_secret("stdout", &exited.stdout);
    assert_no_secret("stderr", &exited.stderr);
}

#[tokio::test]
async fn binary_refuses_a_non_loopback_host_without_a_proxy_key() {
    let dir = TempDir::new().unwrap();
    let exited =
        run_to_exit(keyrelay(dir.path(), &[("OPENAI_API_KEY_1", KEY_ONE)], &["--host", "0.0.0.0", "--port", "0"]))
            .await;
    assert_eq!(exited.code, Some(EXIT_CONFIG), "stderr:\n{}", exited.stderr);
    assert!(
        exited.stderr.contains("PROXY_API_KEY") && exited.stderr.contains("0.0.0.0"),
        "names the fix:\n{}",
        exited.stderr
    );
    assert!(!exited.stdout.contains(BANNER), "{}", exited.stdout);
    assert_no_secret("stderr", &exited.stderr);
}

#[tokio::test]
async fn binary_names_the_variable_that_holds_a_bad_value() {
    let dir = TempDir::new().unwrap();
    let exited =
        run_to_exit(keyrelay(dir.path(), &[("KEYRELAY_SERVER__PORT", "notaport"), ("OPENAI_API_KEY_1", KEY_ONE)], &[]))
            .await;
    assert_eq!(exited.code, Some(EXIT_CONFIG), "stderr:\n{}", exited.stderr);
    assert!(exited.stderr.contains("KEYRELAY_SERVER__PORT"), "names the variable:\n{}", exited.stderr);
    assert!(!exited.stdout.contains(BANNER), "{}", exited.stdout);
    assert_no_secret("stderr", &exited.stderr);
}

#[tokio::test]
async fn binary_shows_the_bad_value_of_a_variable_that_is_no_secret() {
    let dir = TempDir::new().unwrap();
    let exited = run_to_exit(keyrelay(dir.path(), &[("KEYRELAY_SERVER__HOST", "example.com")], &[])).await;
    assert_eq!(exited.code, Some(EXIT_CONFIG), "stderr:\n{}", exited.stderr);
    assert!(exited.stderr.contains("example.com"), "shows what is wrong:\n{}", exited.stderr);
}
