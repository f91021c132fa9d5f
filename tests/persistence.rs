//! The pool's state across restarts: the `pool_state` row of the data
//! dir's database is written on an interval and when `serve()` returns,
//! holds key ids and never secrets, and a new proxy on the same dir and
//! keys starts with the cooldowns, invalid marks, disabled switches and
//! counters the last one left. The `state.json` of earlier versions is
//! imported once and renamed; a corrupt file is set aside, a corrupt saved
//! document replaced, and the proxy starts fresh; an invalid key whose
//! cooldown ended (while the proxy was down) gets one probe.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::Method;
use keyrelay::server::Shutdown;
use serde_json::{Value, json};
use support::{
    Auth, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Reply, Script, TestClient, Valve,
    assert_no_secret, assert_openai_error, chat_body, chat_completion, eventually, key_id, keys_by_id, openai_env,
    post, request, within,
};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "openai/gpt-4o-mini";

async fn chat(client: &TestClient, proxy: &Proxy) -> Reply {
    client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false))).await
}

#[track_caller]
fn assert_answered(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), chat_completion("gpt-4o-mini"));
}

async fn keys(client: &TestClient, proxy: &Proxy) -> BTreeMap<String, Value> {
    keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// The saved state, read and checked: JSON, version 1, no secret.
fn read_state(dir: &Path) -> Value {
    let text = support::store::pool_state(dir).expect("the pool's state is saved in the database");
    assert_no_secret("the saved state", &text);
    let state: Value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("the saved state is JSON ({err}): {text}"));
    assert_eq!(state["version"], 1, "{state}");
    state
}

/// Keeps the fields of a key status that must survive a restart.
fn lasting(status: &Value) -> Value {
    json!({
        "state": status["state"],
        "requests": status["requests"],
        "last_used_unix_ms": status["last_used_unix_ms"],
        "invalid_until_unix_ms": status["invalid_until_unix_ms"],
        "cooldowns": status["cooldowns"].as_array().unwrap().iter()
            .map(|c| json!({"model": c["model"], "reason": c["reason"], "until_unix_ms": c["until_unix_ms"]}))
            .collect::<Vec<_>>(),
        "today": status["today"],
        "models": status["models"],
    })
}

#[tokio::test]
async fn cooling_disabled_and_invalid_keys_survive_a_restart() {
    let data = tempfile::tempdir().expect("a data dir");
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();

    let first = Proxy::start_in(openai_env(&mock, 3), data.path(), |_| {}).await;
    assert!(first.notes().is_empty(), "nothing to restore yet: {:?}", first.notes());
    mock.push_for(KEY_ONE, Script::rate_limited(Some("600")));
    mock.push_for(KEY_THREE, Script::invalid_key());
    for _ in 0..4 {
        assert_answered(&chat(&client, &first).await);
    }
    assert_eq!(mock.requests_with(KEY_ONE).len(), 1);
    assert_eq!(mock.requests_with(KEY_THREE).len(), 1);
    let path = format!("/v1/keys/{}/disable", key_id(KEY_TWO));
    let reply = client.fetch(request(Method::POST, &first.url(&path), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let before = keys(&client, &first).await;
    assert_eq!(before[&key_id(KEY_ONE)]["state"], "cooling");
    assert_eq!(before[&key_id(KEY_TWO)]["state"], "disabled");
    assert_eq!(before[&key_id(KEY_THREE)]["state"], "invalid");
    assert_eq!(first.stop().await, Shutdown::Drained);

    // Saved when serve() returned: ids, never secrets.
    let state = read_state(data.path());
    let saved = state["keys"].as_object().expect("keys by id");
    assert_eq!(saved.len(), 3, "{state}");
    for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
        assert!(saved.contains_key(&key_id(key)), "{state}");
    }
    assert_eq!(saved[&key_id(KEY_TWO)]["disabled"], true, "{state}");
    assert_eq!(saved[&key_id(KEY_ONE)]["models"]["gpt-4o-mini"]["cooldown_reason"], "rate_limit", "{state}");
    assert!(!data.path().join("state.json").exists(), "no state file any more");

    // A new proxy on the same dir and keys starts where the last one left off.
    let second = Proxy::start_in(openai_env(&mock, 3), data.path(), |_| {}).await;
    assert!(
        second.notes().iter().any(|n| n.contains("restored the state of 3 key(s)")),
        "the operator is told: {:?}",
        second.notes()
    );
    let after = keys(&client, &second).await;
    assert_eq!(after.len(), 3);
    for key in [KEY_ONE, KEY_TWO, KEY_THREE] {
        let (was, is) = (lasting(&before[&key_id(key)]), lasting(&after[&key_id(key)]));
        assert_eq!(was, is, "{} after the restart", key_id(key));
    }

    // And acts on it: nothing usable, key one frees first.
    let calls = mock.requests().len();
    let reply = chat(&client, &second).await;
    assert_openai_error(&reply, 429, "rate_limit_exceeded", "is cooling down for model");
    let after: u64 = reply.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(support::near_capped(after, 600, 20), "when key one's cooldown ends: {after}");
    assert_eq!(mock.requests().len(), calls, "no key was used");
    second.stop().await;
}

#[tokio::test]
async fn state_is_saved_on_an_interval_while_serving() {
    let data = tempfile::tempdir().expect("a data dir");
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |s| {
        s.state_save_interval = Duration::from_millis(50);
    })
    .await;
    let path = format!("/v1/keys/{}/disable", key_id(KEY_ONE));
    let reply = client.fetch(request(Method::POST, &proxy.url(&path), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    eventually("a save that shows the disabled key", || async {
        support::store::pool_state(data.path()).and_then(|s| serde_json::from_str::<Value>(&s).ok()).is_some_and(
            |state| {
                state["keys"][key_id(KEY_ONE)]["disabled"] == true
                    && state["keys"][key_id(KEY_TWO)]["disabled"] == false
            },
        )
    })
    .await;
    read_state(data.path());
    assert!(proxy.is_serving());
}

#[tokio::test]
async fn corrupt_state_file_is_set_aside_and_the_proxy_starts_fresh() {
    let data = tempfile::tempdir().expect("a data dir");
    let garbage = "{\"version\": 1, \"keys\": {\"openai:";
    std::fs::write(data.path().join("state.json"), garbage).unwrap();
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();

    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    assert!(proxy.notes().iter().any(|n| n.contains("corrupt")), "the operator is told: {:?}", proxy.notes());
    let aside: Vec<_> = data
        .path()
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept for a look: {aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), garbage);

    for status in keys(&client, &proxy).await.values() {
        assert_eq!(status["state"], "ok", "{status}");
        assert_eq!(status["requests"], 0, "{status}");
    }
    assert_answered(&chat(&client, &proxy).await);
    proxy.stop().await;
    let state = read_state(data.path());
    assert_eq!(state["keys"].as_object().unwrap().len(), 2, "a good save replaces it: {state}");
}

#[tokio::test]
async fn state_file_of_another_format_version_restores_nothing() {
    let data = tempfile::tempdir().expect("a data dir");
    let state = json!({
        "version": 2,
        "saved_at_unix_ms": now_unix_ms(),
        "keys": { key_id(KEY_ONE): { "disabled": true } }
    });
    std::fs::write(data.path().join("state.json"), state.to_string()).unwrap();
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["state"], "ok", "not restored");
    assert!(data.path().join("state.json.v2").exists(), "kept for the version that wrote it");
    assert_answered(&chat(&client, &proxy).await);
}

#[tokio::test]
async fn the_state_file_of_an_earlier_version_is_imported_once_and_renamed() {
    let data = tempfile::tempdir().expect("a data dir");
    let legacy = json!({
        "version": 1,
        "saved_at_unix_ms": now_unix_ms() - 60_000,
        "keys": { key_id(KEY_TWO): { "disabled": true } }
    });
    std::fs::write(data.path().join("state.json"), serde_json::to_vec_pretty(&legacy).unwrap()).unwrap();
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();

    let first = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    let note = first.notes().join("\n");
    assert!(note.contains("restored the state of 1 key(s)"), "{note}");
    assert!(note.contains("keyrelay.db") && note.contains("state.json.migrated"), "the operator is told: {note}");
    assert!(!data.path().join("state.json").exists());
    let migrated = std::fs::read_to_string(data.path().join("state.json.migrated")).expect("the file, renamed");
    assert_eq!(serde_json::from_str::<Value>(&migrated).unwrap(), legacy, "kept as it was");
    // In the database at once: a crash before the first save loses nothing.
    assert_eq!(read_state(data.path())["keys"][key_id(KEY_TWO)]["disabled"], true);
    assert_eq!(keys(&client, &first).await[&key_id(KEY_TWO)]["state"], "disabled");
    assert_answered(&chat(&client, &first).await);
    first.stop().await;

    // The next start reads the database; the renamed file is left alone.
    let second = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    let note = second.notes().join("\n");
    assert!(note.contains("restored the state of 2 key(s)") && note.contains("keyrelay.db"), "{note}");
    assert!(!note.contains("state.json"), "{note}");
    let keys = keys(&client, &second).await;
    assert_eq!(keys[&key_id(KEY_TWO)]["state"], "disabled");
    assert_eq!(keys[&key_id(KEY_ONE)]["requests"], 1, "the counters of the first run");
    second.stop().await;
}

#[tokio::test]
async fn a_corrupt_saved_state_is_replaced_and_another_version_copied_aside() {
    let data = tempfile::tempdir().expect("a data dir");
    let db = keyrelay::store::open(&keyrelay::store::db_path(data.path())).unwrap();
    db.execute("INSERT INTO pool_state (id, snapshot, saved_ms) VALUES (1, '{\"version\": 1, \"keys\": {', 0)", [])
        .unwrap();
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    assert!(proxy.notes().iter().any(|n| n.contains("corrupt")), "the operator is told: {:?}", proxy.notes());
    assert_answered(&chat(&client, &proxy).await);
    proxy.stop().await;
    assert_eq!(read_state(data.path())["keys"].as_object().unwrap().len(), 2, "a good save replaced it");

    let newer = json!({"version": 2, "saved_at_unix_ms": 0, "keys": {key_id(KEY_ONE): {"disabled": true}}}).to_string();
    db.execute("UPDATE pool_state SET snapshot = ?1", [&newer]).unwrap();
    drop(db);
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    assert!(proxy.notes().iter().any(|n| n.contains("format version 2")), "{:?}", proxy.notes());
    assert_eq!(std::fs::read_to_string(data.path().join("pool_state.v2.json")).unwrap(), newer);
    assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["state"], "ok", "not restored");
    proxy.stop().await;
}

#[tokio::test]
async fn saved_state_of_a_removed_key_is_ignored_and_a_new_key_starts_fresh() {
    let data = tempfile::tempdir().expect("a data dir");
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let first = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    for key in [KEY_ONE, KEY_TWO] {
        let path = format!("/v1/keys/{}/disable", key_id(key));
        let reply = client.fetch(request(Method::POST, &first.url(&path), Auth::Bearer(PROXY_KEY))).await;
        assert_eq!(reply.status, 200);
    }
    first.stop().await;

    let env = vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("OPENAI_API_BASE".to_owned(), mock.base()),
        ("OPENAI_API_KEY_1".to_owned(), KEY_TWO.to_owned()),
        ("OPENAI_API_KEY_2".to_owned(), KEY_THREE.to_owned()),
    ];
    let second = Proxy::start_in(env, data.path(), |_| {}).await;
    assert!(second.notes().iter().any(|n| n.contains("restored the state of 1 key(s)")), "{:?}", second.notes());
    let keys = keys(&client, &second).await;
    assert_eq!(keys.keys().cloned().collect::<Vec<_>>().len(), 2);
    assert!(!keys.contains_key(&key_id(KEY_ONE)));
    assert_eq!(keys[&key_id(KEY_TWO)]["state"], "disabled", "kept across the restart");
    assert_eq!(keys[&key_id(KEY_THREE)]["state"], "ok", "a new key starts fresh");
    assert_answered(&chat(&client, &second).await);
    assert_eq!(mock.keys_seen(), [KEY_THREE]);
}

/// A state file as an earlier run would have left it: key one invalid with
/// `strikes` strikes, its cooldown over a second ago; key two disabled.
fn write_invalid_state(dir: &Path, strikes: u32) {
    let now = now_unix_ms();
    let state = json!({
        "version": 1,
        "saved_at_unix_ms": now - 60_000,
        "keys": {
            key_id(KEY_ONE): { "invalid_until_unix_ms": now - 1_000, "invalid_strikes": strikes },
            key_id(KEY_TWO): { "disabled": true },
        }
    });
    std::fs::write(dir.join("state.json"), serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

#[tokio::test]
async fn invalid_key_whose_cooldown_ended_gets_one_probe_and_a_good_answer_clears_it() {
    let data = tempfile::tempdir().expect("a data dir");
    write_invalid_state(data.path(), 1);
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    let statuses = keys(&client, &proxy).await;
    assert_eq!(statuses[&key_id(KEY_ONE)]["state"], "invalid");
    assert_eq!(statuses[&key_id(KEY_TWO)]["state"], "disabled");

    // One request probes key one; while it is out, nobody else may use it.
    let valve = Valve::new();
    mock.push_for(KEY_ONE, Script::Hold(valve.clone()));
    let probe = {
        let (client, req) = (client.clone(), post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    };
    eventually("the probe to reach the upstream", || async { mock.in_flight(KEY_ONE) == 1 }).await;
    let reply = chat(&client, &proxy).await;
    assert_openai_error(&reply, 503, "no_usable_key", "every key is invalid, disabled");
    assert_eq!(mock.requests().len(), 1, "a single probe");

    valve.open();
    assert_answered(&within("the probe's answer", probe).await.unwrap());
    let one = &keys(&client, &proxy).await[&key_id(KEY_ONE)];
    assert_eq!(one["state"], "ok", "the probe succeeded: {one}");
    assert!(one["invalid_until_unix_ms"].is_null(), "{one}");
    assert_answered(&chat(&client, &proxy).await);
    assert_eq!(mock.keys_seen(), [KEY_ONE, KEY_ONE]);
}

#[tokio::test]
async fn probe_abandoned_by_its_client_lets_the_next_request_probe() {
    let data = tempfile::tempdir().expect("a data dir");
    write_invalid_state(data.path(), 1);
    let mock = MockUpstream::start().await;
    let client = TestClient::http1();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
    mock.push_for(KEY_ONE, Script::Hang);

    let probe = {
        let (client, req) = (client.clone(), post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body(MODEL, false)));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    };
    eventually("the probe to reach the upstream", || async { mock.in_flight(KEY_ONE) == 1 }).await;
    // The client gives up; its connection closes.
    probe.abort();
    let _ = probe.await;
    eventually("the proxy to drop the abandoned probe", || async { mock.in_flight(KEY_ONE) == 0 }).await;
    let one = &keys(&client, &proxy).await[&key_id(KEY_ONE)];
    assert_eq!(one["in_flight"], 0, "{one}");
    assert_eq!(one["state"], "invalid", "no verdict yet: {one}");

    // No verdict: the next request may probe, and its success clears the mark.
    assert_answered(&within("the second probe", chat(&client, &proxy)).await);
    assert_eq!(mock.keys_seen(), [KEY_ONE, KEY_ONE]);
    assert_eq!(keys(&client, &proxy).await[&key_id(KEY_ONE)]["state"], "ok");
}

#[tokio::test]
async fn failed_probe_climbs_the_invalid_ladder_up_to_a_day() {
    for (strikes, next_secs) in [(1, 15 * 60), (4, 24 * 3600), (9, 24 * 3600)] {
        let data = tempfile::tempdir().expect("a data dir");
        write_invalid_state(data.path(), strikes);
        let mock = MockUpstream::start().await;
        let client = TestClient::http1();
        let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |_| {}).await;
        mock.always_for(KEY_ONE, Script::invalid_key());

        let reply = chat(&client, &proxy).await;
        assert_openai_error(&reply, 503, "no_usable_key", "every key is invalid, disabled");
        assert_eq!(mock.requests().len(), 1, "strikes {strikes}: one probe");
        let one = &keys(&client, &proxy).await[&key_id(KEY_ONE)];
        assert_eq!(one["state"], "invalid", "{one}");
        let left = one["invalid_until_unix_ms"].as_u64().unwrap().saturating_sub(now_unix_ms()) / 1000;
        assert!(
            (next_secs - 10..=next_secs).contains(&left),
            "after {strikes} strike(s), the next cooldown is {next_secs} s, not {left} s"
        );
        proxy.stop().await;
        let state = read_state(data.path());
        assert_eq!(state["keys"][key_id(KEY_ONE)]["invalid_strikes"], strikes + 1, "{state}");
    }
}
