//! The database survives `kill -9` mid-load: the real binary, a steady
//! load of requests, SIGKILL while its ledger writer commits batches, then
//! the database as the next start finds it. SQLite's WAL (with
//! `synchronous=NORMAL`) keeps every committed transaction and none of a
//! half-written one; the ledger writes each batch's rows and the spend
//! they add in one transaction, so the spend always equals the rows'
//! costs, and every row is whole.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use keyrelay::store;
use keyrelay_layers::budget::BudgetPeriod;
use serde_json::Value;
use support::{
    Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, TestClient, binary, chat_body, eventually, key_id, post,
};

const CHAT: &str = "/v1/chat/completions";
/// Requests kept in flight at once.
const CONCURRENCY: usize = 8;
/// Rows committed before the kill: several batches' worth.
const ROWS_BEFORE_KILL: i64 = 200;

async fn start(cwd: &Path, data: &Path, mock: &MockUpstream) -> binary::Running {
    let (base, data) = (mock.base(), data.to_str().expect("a UTF-8 temporary path"));
    let env = [
        ("PROXY_API_KEY", PROXY_KEY),
        ("OPENAI_API_KEY_1", KEY_ONE),
        ("OPENAI_API_KEY_2", KEY_TWO),
        ("OPENAI_API_BASE", base.as_str()),
    ];
    binary::start(binary::keyrelay(cwd, &env, &["--port", "0", "--data-dir", data])).await
}

fn committed_rows(data: &Path) -> i64 {
    let path = store::db_path(data);
    // Not there yet, or busy: not counted yet.
    store::open_read_only(&path)
        .and_then(|conn| conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_survives_kill_9_mid_load_whole_and_consistent() {
    let mock = MockUpstream::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let running = start(cwd.path(), data.path(), &mock).await;

    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..CONCURRENCY {
        let (stop, answered, url, client) = (stop.clone(), answered.clone(), running.url(CHAT), TestClient::http1());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false));
                match client.try_fetch(req).await {
                    Ok(reply) => {
                        assert_eq!(reply.status, 200, "{}", reply.text());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The kill cut it.
                    Err(_) => break,
                }
            }
        }));
    }
    eventually("batches committed while the load goes on", || async {
        committed_rows(data.path()) >= ROWS_BEFORE_KILL
    })
    .await;
    let killed = running.kill().await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("every answer before the kill was a 200");
    }
    assert_eq!(killed.code, None, "killed by a signal: {}", killed.stderr);
    let answered = answered.load(Ordering::Relaxed) as i64;

    // The database as the next start opens it (the WAL is replayed).
    let conn = store::open(&store::db_path(data.path())).expect("the database opens after the crash");
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let rows = support::store::rows(&conn, "SELECT * FROM ledger ORDER BY id");
    let written = rows.len() as i64;
    assert!(written >= ROWS_BEFORE_KILL, "committed rows survive: {written}");
    // A row is queued when the proxy sent the whole body, which the client
    // may not have read when the kill came.
    let sent = answered + CONCURRENCY as i64;
    assert!(written <= sent, "one row per answered request at most: {written} rows, {answered} answers");
    let keys = [key_id(KEY_ONE), key_id(KEY_TWO)];
    let mut ids = std::collections::BTreeSet::new();
    for row in &rows {
        // Whole rows, with what the mock answered.
        assert_eq!(row["route"], "chat/completions", "{row}");
        assert_eq!(row["provider"], "openai", "{row}");
        assert_eq!(row["model"], "gpt-4o-mini", "{row}");
        assert!(keys.iter().any(|k| row["key_id"] == *k), "{row}");
        assert_eq!(row["status"], 200, "{row}");
        assert_eq!(row["outcome"], "completed", "{row}");
        assert_eq!((row["tokens_in"].as_i64(), row["tokens_out"].as_i64()), (Some(19), Some(10)), "{row}");
        assert!(row["unix_ms"].as_i64().unwrap() > 0 && row["duration_ms"].as_i64().is_some(), "{row}");
        assert!(ids.insert(row["request_id"].as_str().unwrap().to_owned()), "a row twice: {row}");
    }

    // gpt-4o-mini has a price in the shipped table: every row has a cost,
    // so the check below compares real sums.
    assert!(rows.iter().all(|r| r["cost_usd"].as_f64().is_some_and(|c| c > 0.0)), "priced rows");
    // The spend holds exactly what the surviving rows cost, per client,
    // key and period: a batch's rows and its spend commit together.
    let mut want: BTreeMap<(String, String, String, i64), f64> = BTreeMap::new();
    for row in rows.iter().filter(|r| r["cost_usd"].is_f64()) {
        let at = row["unix_ms"].as_i64().unwrap() as u64;
        let cost = row["cost_usd"].as_f64().unwrap();
        let client = row["client"].as_str().unwrap_or(keyrelay_layers::ledger::DEFAULT_CLIENT).to_owned();
        let key = row["key_id"].as_str().unwrap().to_owned();
        for (kind, name) in [("client", client), ("key", key)] {
            for period in BudgetPeriod::ALL {
                let slot = (kind.to_owned(), name.clone(), period.as_str().to_owned(), period.start(at) as i64);
                *want.entry(slot).or_default() += cost;
            }
        }
    }
    let got: BTreeMap<(String, String, String, i64), f64> = support::store::rows(&conn, "SELECT * FROM spend")
        .into_iter()
        .map(|r: Value| {
            let slot = (
                r["kind"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["period"].as_str().unwrap().to_owned(),
                r["period_start"].as_i64().unwrap(),
            );
            (slot, r["usd"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (slot, usd) in &want {
        assert!((got[slot] - usd).abs() < 1e-9, "{slot:?}: spend {} != rows {usd}", got[slot]);
    }
    drop(conn);

    // And the next start uses it: the rows go on from there.
    let running = start(cwd.path(), data.path(), &mock).await;
    let reply = TestClient::http1()
        .fetch(post(&running.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let exited = running.terminate().await;
    assert_eq!(exited.code, Some(0), "stderr:\n{}", exited.stderr);
    assert_eq!(committed_rows(data.path()), written + 1);
}
