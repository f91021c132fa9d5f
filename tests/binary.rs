//! Smoke tests of the real binary: started with a clean environment in an
//! empty temporary directory, on `--port 0`, talking to the in-process mock
//! upstream; stopped with SIGTERM. Plus the refusals that exit with 64.

mod support;

use support::{
    Auth, Gate, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Script, SseReader, TestClient, Valve, assert_no_secret,
    binary::{BANNER, Running, keyrelay, run_to_exit, start},
    chat_body, chat_completion, closed_port, eventually, post, stream_events, within,
};
use tempfile::TempDir;

/// The exit status for a configuration that cannot run (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

async fn chat_through(client: &TestClient, running: &Running) -> support::Reply {
    client
        .fetch(post(
            &running.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await
}

/// The binary with a proxy key and two OpenAI keys, all from the
/// environment, in front of `mock`.
async fn start_with_two_keys(mock: &MockUpstream, dir: &TempDir) -> Running {
    let base = mock.base();
    let env = [
        ("PROXY_API_KEY", PROXY_KEY),
        ("OPENAI_API_KEY_1", KEY_ONE),
        ("OPENAI_API_KEY_2", KEY_TWO),
        ("OPENAI_API_BASE", base.as_str()),
    ];
    start(keyrelay(dir.path(), &env, &["--port", "0"])).await
}

#[tokio::test]
async fn binary_serves_an_env_only_configuration_and_exits_cleanly_on_sigterm() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    let running = start_with_two_keys(&mock, &dir).await;
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

#[tokio::test]
async fn sigterm_stops_accepting_lets_in_flight_requests_and_streams_finish_saves_state_and_exits_0() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    let base = mock.base();
    // One worker: the single-threaded runtime keyrelay picks on one core
    // (the other tests here run the multi-thread one).
    let env = [
        ("PROXY_API_KEY", PROXY_KEY),
        ("OPENAI_API_KEY_1", KEY_ONE),
        ("OPENAI_API_BASE", base.as_str()),
        ("TOKIO_WORKER_THREADS", "1"),
    ];
    let running = start(keyrelay(dir.path(), &env, &["--port", "0"])).await;
    let (valve, gate) = (Valve::new(), Gate::new());
    for _ in 0..3 {
        mock.push(Script::Hold(valve.clone()));
    }
    for _ in 0..2 {
        mock.push(Script::gated_stream(&gate));
    }
    let client = TestClient::http1();
    let url = running.url("/v1/chat/completions");
    let mut in_flight = Vec::new();
    for stream in [false, false, false, true, true] {
        let (client, url) = (client.clone(), url.clone());
        in_flight.push(tokio::spawn(async move {
            let res = client.send(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", stream))).await;
            let status = res.status();
            let body = match stream {
                true => SseReader::new(res.into_body()).rest().await,
                false => vec![support::Reply::read(res).await.text().to_owned()],
            };
            (status, body)
        }));
    }
    eventually("five requests at the upstream", || async { mock.requests().len() == 5 }).await;

    running.signal("TERM");
    let addr = running.addr;
    eventually("the listener to close", || async { tokio::net::TcpStream::connect(addr).await.is_err() }).await;
    valve.open();
    gate.open();
    for request in in_flight {
        let (status, events) = within("an in-flight request to finish", request).await.unwrap();
        assert_eq!(status, 200);
        let last = events.last().map(String::as_str);
        assert!(last == Some("[DONE]") || events.concat().contains("chat.completion"), "{events:?}");
    }
    let exited = running.exited().await;
    assert_eq!(exited.code, Some(0), "stderr:\n{}", exited.stderr);
    let state = support::store::pool_state(&dir.path().join("data")).expect("state saved at shutdown");
    assert!(state.contains(&support::key_id(KEY_ONE)), "{state}");
    assert_eq!(mock.requests().len(), 5, "nothing was retried or lost");
}

#[tokio::test]
async fn sighup_and_admin_reload_reread_keys_keep_state_and_refuse_a_bad_config() {
    let mock = MockUpstream::start().await;
    let dir = TempDir::new().unwrap();
    let base = mock.base();
    let dotenv = |keys: &[&str]| {
        // A short deadline: a key cooling for an hour is not waited for.
        let mut text = format!("PROXY_API_KEY={PROXY_KEY}\nOPENAI_API_BASE={base}\nGLOBAL_TIMEOUT=5\n");
        for (i, key) in keys.iter().enumerate() {
            text.push_str(&format!("OPENAI_API_KEY_{}={key}\n", i + 1));
        }
        std::fs::write(dir.path().join(".env"), text).unwrap();
    };
    dotenv(&[KEY_ONE]);
    let running = start(keyrelay(dir.path(), &[], &["--port", "0"])).await;
    let client = TestClient::http1();
    let keys = |client: TestClient, url: String| async move {
        let reply = client.fetch(support::get(&url, Auth::Bearer(PROXY_KEY))).await;
        reply.json()["data"].as_array().unwrap().clone()
    };
    let keys_url = running.url("/v1/keys");

    // Key one cools down for an hour.
    mock.push_for(KEY_ONE, Script::rate_limited(Some("3600")));
    let cooled = chat_through(&client, &running).await;
    assert_eq!(cooled.status, 429);

    // SIGHUP with a second key in .env: it joins, key one keeps its cooldown.
    dotenv(&[KEY_ONE, KEY_TWO]);
    running.signal("HUP");
    let (one, two) = (support::key_id(KEY_ONE), support::key_id(KEY_TWO));
    eventually("the new key after SIGHUP", || {
        let (client, url) = (client.clone(), keys_url.clone());
        async move { keys(client, url).await.len() == 2 }
    })
    .await;
    let listed = keys(client.clone(), keys_url.clone()).await;
    let state_of = |id: &str| listed.iter().find(|k| k["id"] == id).map(|k| k["state"].clone());
    assert_eq!(state_of(&one), Some("cooling".into()), "{listed:?}");
    assert_eq!(state_of(&two), Some("ok".into()), "{listed:?}");
    let served = chat_through(&client, &running).await;
    assert_eq!(served.status, 200, "the new key serves at once");
    assert_eq!(mock.requests_with(KEY_TWO).len(), 1);

    // A broken config file is refused, by SIGHUP and by the admin route;
    // the running configuration stays.
    std::fs::write(dir.path().join("config.toml"), "[server\nport = ").unwrap();
    running.signal("HUP");
    let reload_url = running.url("/v1/admin/reload");
    let refused = client.fetch(post(&reload_url, Auth::Bearer(PROXY_KEY), "")).await;
    support::assert_openai_error(&refused, 400, "invalid_config", "the running one stays");
    assert_eq!(chat_through(&client, &running).await.status, 200);
    assert_eq!(keys(client.clone(), keys_url.clone()).await.len(), 2);
    std::fs::remove_file(dir.path().join("config.toml")).unwrap();

    // Key two leaves, but the request it is serving finishes first.
    let valve = Valve::new();
    mock.push_for(KEY_TWO, Script::Hold(valve.clone()));
    let held = {
        let (client, url) = (client.clone(), running.url("/v1/chat/completions"));
        tokio::spawn(async move {
            client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await
        })
    };
    eventually("the held request at the upstream", || async { mock.requests_with(KEY_TWO).len() == 3 }).await;
    dotenv(&[KEY_ONE]);
    let reloaded = client.fetch(post(&reload_url, Auth::Bearer(PROXY_KEY), "")).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let report = reloaded.json();
    assert_eq!(report["keys_removed"], serde_json::json!([two]), "{report}");
    assert_eq!(report["keys_kept"], 1, "{report}");
    valve.open();
    assert_eq!(within("the held request", held).await.unwrap().status, 200);
    let listed = keys(client.clone(), keys_url.clone()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "cooling", "key one still cooling after two reloads");

    let unauthorized = client.fetch(post(&reload_url, Auth::None, "")).await;
    assert_eq!(unauthorized.status, 401);
    let exited = running.terminate().await;
    assert_eq!(exited.code, Some(0));
    assert!(exited.stderr.contains("configuration reloaded"), "{}", exited.stderr);
    assert!(exited.stderr.contains("refused"), "{}", exited.stderr);
    for secret in [PROXY_KEY, KEY_ONE, KEY_TWO] {
        assert!(!exited.stderr.contains(secret) && !exited.stdout.contains(secret));
    }
}

/// Issue 12: a request that took several attempts logged `key=` and
/// `attempts=` once per attempt on its completion line, and every `/health`
/// probe logged a line at info level.
#[tokio::test]
async fn the_completion_line_names_each_field_once_and_health_probes_stay_quiet() {
    let mock = MockUpstream::start().await;
    mock.always_for(KEY_ONE, Script::rate_limited(Some("120")));
    let dir = TempDir::new().unwrap();
    let running = start_with_two_keys(&mock, &dir).await;
    let client = TestClient::http1();
    for _ in 0..2 {
        let reply = chat_through(&client, &running).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    for _ in 0..3 {
        assert_eq!(client.fetch(support::get(&running.url("/health"), Auth::None)).await.status, 200);
    }
    let exited = running.terminate().await;
    let finished: Vec<&str> = exited.stderr.lines().filter(|l| l.contains("request finished")).collect();
    assert_eq!(finished.len(), 2, "one line per proxied request, none for /health:\n{}", exited.stderr);
    // The first request met the rate-limited key (least used picks it
    // first or second); whichever did, each field stands once.
    let rotated = finished.iter().find(|l| l.matches("openai:").count() >= 3).expect("a request that rotated");
    for field in [" key=", " attempts=", " provider=", " model=", " status=", " outcome="] {
        assert_eq!(rotated.matches(field).count(), 1, "{field} once in: {rotated}");
    }
    assert!(rotated.contains("rate_limit") && rotated.contains("success"), "{rotated}");
    assert!(rotated.contains("tokens_in=") && rotated.contains("outcome=\"completed\""), "{rotated}");
    assert_no_secret("stderr", &exited.stderr);
}
