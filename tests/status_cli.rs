//! `keyrelay status` end to end: the real binary reads an in-process
//! keyrelay's `GET /v1/keys` and shows the pool as a table (once when
//! piped, live on a terminal until `q`), failing clearly on a wrong key or
//! a server out of reach, never printing a key.

mod support;

use std::process::Stdio;

use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, assert_no_secret,
    binary::{Exited, keyrelay, run_to_exit},
    chat_body, closed_port, eventually, keys_by_id, openai_env, post, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(env: &[(&str, &str)], args: &[&str]) -> Exited {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(keyrelay(dir.path(), env, &[&["status"][..], args].concat())).await;
    assert_no_secret("status's stdout", &out.stdout);
    assert_no_secret("status's stderr", &out.stderr);
    out
}

/// A proxy over two OpenAI keys, the first cooling after a 429 with a
/// minute's `Retry-After`.
async fn pool_with_a_cooling_key() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await;
    mock.always_for(KEY_ONE, Script::rate_limited(Some("60")));
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();
    let cooling = mock.key_id(KEY_ONE);
    eventually("the first key to cool", || async {
        let reply = client
            .fetch(post(
                &proxy.url("/v1/chat/completions"),
                Auth::Bearer(PROXY_KEY),
                chat_body("openai/gpt-4o-mini", false),
            ))
            .await;
        assert_eq!(reply.status, 200, "the other key answers: {}", reply.text());
        keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await[&cooling]["state"] == "cooling"
    })
    .await;
    (mock, proxy)
}

#[tokio::test]
async fn piped_it_prints_the_pool_once_with_countdowns() {
    let (mock, proxy) = pool_with_a_cooling_key().await;
    let url = proxy.url("");
    let out = status(&[], &["--url", &url, "--key", PROXY_KEY]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("keyrelay at {url}: 2 keys (")), "{}", out.stdout);
    assert_eq!(lines[1].split_whitespace().next(), Some("provider"), "{}", out.stdout);
    let row = |id: &str| *lines.iter().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id}:\n{}", out.stdout));
    let cooling: Vec<&str> = row(&mock.key_id(KEY_ONE)).split_whitespace().collect();
    assert_eq!(&cooling[..3], ["openai", &mock.key_id(KEY_ONE), "cooling"], "{}", out.stdout);
    // A countdown of at most a minute, then the model.
    let secs: u64 = cooling[3].strip_suffix('s').and_then(|s| s.parse().ok()).expect("a countdown in seconds");
    assert!((1..=60).contains(&secs), "{}", out.stdout);
    assert_eq!(cooling[4], "gpt-4o-mini");
    let ok: Vec<&str> = row(&mock.key_id(KEY_TWO)).split_whitespace().collect();
    assert_eq!(&ok[..4], ["openai", &mock.key_id(KEY_TWO), "ok", "-"], "{}", out.stdout);
    assert_eq!(out.stderr, "");

    // Without --key, the proxy key comes from the environment (or `.env`).
    let from_env = status(&[("PROXY_API_KEY", PROXY_KEY)], &["--url", &url]).await;
    assert_eq!(from_env.code, Some(0), "{}", from_env.stderr);
    assert!(from_env.stdout.contains(&mock.key_id(KEY_ONE)), "{}", from_env.stdout);
}

#[tokio::test]
async fn a_wrong_key_or_no_server_is_a_clear_failure() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let url = proxy.url("");

    let wrong = status(&[], &["--url", &url, "--key", "not-the-proxy-key"]).await;
    assert_eq!(wrong.code, Some(1));
    assert!(wrong.stderr.contains("401") && wrong.stderr.contains("invalid proxy API key"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("not-the-proxy-key"), "{}", wrong.stderr);
    assert_eq!(wrong.stdout, "");

    let none = status(&[], &["--url", &url]).await;
    assert_eq!(none.code, Some(1));
    assert!(none.stderr.contains("missing proxy API key") && none.stderr.contains("--key"), "{}", none.stderr);

    let closed = format!("http://127.0.0.1:{}", closed_port());
    let gone = status(&[], &["--url", &closed, "--key", PROXY_KEY]).await;
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.contains(&format!("cannot reach {closed}")), "{}", gone.stderr);
}

/// How the live table is ended.
#[derive(Clone, Copy, Debug)]
enum Quit {
    /// `q` typed.
    Key,
    /// SIGTERM from outside (a `kill`, a closing terminal's SIGHUP alike).
    Signal,
}

/// On a terminal (a pty from util-linux's `script`), the table is drawn on
/// the alternate screen and `q` ends it with the terminal restored.
#[tokio::test]
async fn on_a_terminal_it_refreshes_until_q() {
    live_table_ends(Quit::Key).await;
}

/// A `kill` ends it as cleanly: the terminal is not left raw.
#[tokio::test]
async fn on_a_terminal_sigterm_restores_the_terminal() {
    live_table_ends(Quit::Signal).await;
}

async fn live_table_ends(quit: Quit) {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        // Debian's bsdutils (essential) ships it: CI always has it.
        assert!(std::env::var_os("CI").is_none(), "no `script` (util-linux) on CI");
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipped: no `script` (util-linux) here");
        }
        return;
    }
    let (mock, proxy) = pool_with_a_cooling_key().await;
    let command = format!(
        "stty cols 160 rows 40; exec '{}' status --url '{}' --key '{PROXY_KEY}' --interval 1",
        env!("CARGO_BIN_EXE_keyrelay"),
        proxy.url("")
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start script");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    within("the live table", async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("q to quit") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "script ended early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let mut stdin = child.stdin.take().unwrap();
    match quit {
        Quit::Key => {
            stdin.write_all(b"q").await.unwrap();
            stdin.flush().await.unwrap();
        }
        Quit::Signal => {
            // `script` runs the command (exec'd: keyrelay itself) as its child.
            let pid = child_of(child.id().expect("script runs")).expect("keyrelay under script");
            let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
            assert!(killed.success());
        }
    }
    let status = within("status to quit", child.wait()).await.unwrap();
    let mut rest = Vec::new();
    let _ = within("the rest of the output", stdout.read_to_end(&mut rest)).await;
    seen.extend_from_slice(&rest);
    let screen = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(screen.contains(&mock.key_id(KEY_ONE)) && screen.contains("cooling"), "{screen}");
    assert!(screen.contains("\x1b[?1049h") && screen.contains("\x1b[?1049l"), "the alternate screen, left: {screen}");
    // The command line script ran holds the key; what keyrelay drew does not.
    let drawn = screen.split("\x1b[?1049h").nth(1).unwrap_or_default();
    assert_no_secret("the live table", drawn);
}

/// A child process of `parent`, from /proc (no procps needed).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so after its `)`.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}
