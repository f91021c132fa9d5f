//! A real headless Chromium (Debian's `chromium`, which `.ci/servers.sh`
//! installs when missing), driven over the Chrome DevTools Protocol on one
//! WebSocket: no WebDriver, no X server. The browser gets a fresh profile
//! in a temporary directory and is killed when dropped.
//!
//! [`Browser::page`] opens a tab (a target attached with a flat session);
//! [`Page`] navigates, evaluates JavaScript (awaiting promises, returning
//! values as JSON), types, waits for a condition in the DOM and takes
//! screenshots. Uncaught exceptions and security errors (a CSP violation)
//! in any page are collected: [`Browser::errors`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::oneshot,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

/// How long the browser may take to do one thing (start, navigate, let a
/// condition become true): generous, since CI machines are slow, and still
/// a bound, so a broken page fails instead of hanging.
pub const BROWSER_WAIT: Duration = Duration::from_secs(30);

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running headless Chromium.
#[derive(Debug)]
pub struct Browser {
    _child: Child,
    cdp: Arc<Cdp>,
    errors: Arc<Mutex<Vec<String>>>,
    dir: Option<TempDir>,
}

impl Drop for Browser {
    /// With `KEYRELAY_KEEP_SCREENSHOTS=1` the temporary directory (and the
    /// screenshots in it) outlives the test, to be looked at.
    fn drop(&mut self) {
        if std::env::var("KEYRELAY_KEEP_SCREENSHOTS").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            println!("screenshots kept in {}", dir.keep().join("screenshots").display());
        }
    }
}

/// The DevTools connection: commands out, answers matched back by id.
#[derive(Debug)]
struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink.lock().await.send(Message::Text(msg.to_string().into())).await.expect("DevTools socket open");
        let answer = tokio::time::timeout(BROWSER_WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method} within {BROWSER_WAIT:?}"))
            .expect("the DevTools socket closed");
        if let Some(error) = answer.get("error") {
            panic!("{method} failed: {error}");
        }
        answer["result"].clone()
    }
}

impl Browser {
    /// Starts `chromium` (or `$CHROMIUM`) headless with a fresh profile and
    /// connects to it.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let mut child = Command::new(&program)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            // Nothing of its own on the network, no first-run work.
            .args(["--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"])
            .args(["--hide-scrollbars", "--mute-audio", "about:blank"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program} ({err}); .ci/servers.sh installs Debian's chromium"));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let ws_url = tokio::time::timeout(BROWSER_WAIT, async {
            while let Some(line) = lines.next_line().await.expect("chromium's stderr") {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium announced its DevTools address in time");
        // Keep reading, so that chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = connect_async(ws_url.as_str()).await.expect("connect to chromium's DevTools");
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (answers, seen) = (pending.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                match value.get("id").and_then(Value::as_u64) {
                    Some(id) => {
                        if let Some(tx) = answers.lock().unwrap().remove(&id) {
                            let _ = tx.send(value);
                        }
                    }
                    None => note_error(&value, &seen),
                }
            }
        });
        let cdp = Arc::new(Cdp { sink: tokio::sync::Mutex::new(sink), pending, next_id: AtomicU64::new(1) });
        Self { _child: child, cdp, errors, dir: Some(dir) }
    }

    /// A new tab, `width` CSS pixels wide.
    pub async fn page(&self, width: u32) -> Page {
        let target = self.cdp.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let attach = json!({ "targetId": target["targetId"], "flatten": true });
        let session = self.cdp.call(None, "Target.attachToTarget", attach).await["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let page = Page { cdp: self.cdp.clone(), session, shots: self.dir().join("screenshots") };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "Page.bringToFront"] {
            page.call(domain, json!({})).await;
        }
        // As if the window had the focus: timers run at full speed even
        // when another tab of this browser was opened later.
        page.call("Emulation.setFocusEmulationEnabled", json!({ "enabled": true })).await;
        page.resize(width, 900).await;
        page
    }

    /// Uncaught exceptions and security errors (CSP violations) seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// The temporary directory screenshots go to (`screenshots/`).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("kept until dropped").path()
    }
}

/// Keeps what a test should fail on: an exception nobody caught, or the
/// browser refusing something for security (a CSP violation). Failed
/// fetches (a 404 of a data route) are the page's business, not errors.
fn note_error(event: &Value, errors: &Mutex<Vec<String>>) {
    let params = &event["params"];
    let error = match event["method"].as_str() {
        Some("Runtime.exceptionThrown") => Some(params["exceptionDetails"].to_string()),
        Some("Log.entryAdded") if params["entry"]["source"] == "security" => Some(params["entry"]["text"].to_string()),
        _ => None,
    };
    errors.lock().unwrap().extend(error);
}

/// One tab.
#[derive(Debug)]
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    shots: PathBuf,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Sets the viewport (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 });
        self.call("Emulation.setDeviceMetricsOverride", metrics).await;
    }

    /// Runs `script` in every document this tab opens from now on, before
    /// the page's own scripts (as an extension would; the page's CSP does
    /// not apply to it).
    pub async fn add_init_script(&self, script: &str) {
        self.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": script })).await;
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
        self.wait_for("the page to load", "document.readyState === 'complete'").await;
    }

    /// Evaluates `expression` in the page (awaiting a promise), its value
    /// as JSON. An exception fails the test.
    pub async fn eval(&self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let answer = self.call("Runtime.evaluate", params).await;
        if let Some(details) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {details}");
        }
        answer["result"]["value"].clone()
    }

    /// Polls `condition` (a JavaScript expression) until it is true,
    /// failing the test after [`BROWSER_WAIT`] with what `what` says.
    pub async fn wait_for(&self, what: &str, condition: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if self.eval(condition).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let html = self.eval("document.body ? document.body.outerHTML : ''").await;
                panic!("timed out after {BROWSER_WAIT:?} waiting for {what} ({condition}); the page:\n{html}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Focuses the element `selector` finds and types `text` into it, as
    /// a keyboard would.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let focus = format!(
            "(() => {{ const e = document.querySelector({selector:?}); e.focus(); e.value = ''; return true; }})()"
        );
        assert_eq!(self.eval(&focus).await, json!(true), "{selector} found");
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the element `selector` finds (it must exist).
    pub async fn click(&self, selector: &str) {
        let click = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return false; e.click(); return true; }})()"
        );
        assert_eq!(self.eval(&click).await, json!(true), "{selector} found to click");
    }

    /// Saves the whole page as `screenshots/<name>.png` in the browser's
    /// temporary directory, and returns the PNG's bytes.
    pub async fn screenshot(&self, name: &str) -> Vec<u8> {
        let params = json!({ "format": "png", "captureBeyondViewport": true });
        let shot = self.call("Page.captureScreenshot", params).await;
        let png = decode_base64(shot["data"].as_str().expect("base64 PNG data"));
        std::fs::create_dir_all(&self.shots).expect("screenshots dir");
        std::fs::write(self.shots.join(format!("{name}.png")), &png).expect("screenshot written");
        png
    }
}

/// Standard base64 (what DevTools sends binary data as), padding ignored.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        out.extend(n.to_be_bytes()[1..chunk.len()].iter());
    }
    out
}
