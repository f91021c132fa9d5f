//! The ledger on Postgres (`ledger.url = "postgres://..."`): replicas,
//! each with its own data dir (its pool state), share one database for the
//! usage ledger, the spend and the runtime client keys. Every test starts
//! a real Postgres of its own (tests/support/postgres.rs).

mod support;

use http::{Method, StatusCode};
use keyrelay::{config::ledger::PostgresUrl, store::pg};
use keyrelay_layers::ledger::LedgerRow;
use serde_json::{Value, json};
use support::{
    ADMIN_KEY, Auth, MockUpstream, PROXY_KEY, Proxy, TestClient, chat_body, closed_port, eventually, get, openai_env,
    post, postgres::PostgresServer, proxy::load_settings, request,
};

/// The environment of a replica on the ledger at `url`.
fn env(mock: &MockUpstream, url: &str) -> Vec<(String, String)> {
    let mut env = openai_env(mock, 1);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    env.push(("KEYRELAY_LEDGER__URL".to_owned(), url.to_owned()));
    env
}

async fn chat(client: &TestClient, proxy: &Proxy, key: &str) -> StatusCode {
    let reply = client.fetch(post(
        &proxy.url("/v1/chat/completions"),
        Auth::Bearer(key),
        chat_body("openai/gpt-4o-mini", false),
    ));
    reply.await.status
}

/// `GET /v1/usage` (all time, by `group_by`) on `proxy`.
async fn usage(client: &TestClient, proxy: &Proxy, group_by: &str) -> Value {
    let url = proxy.url(&format!("/v1/usage?start=2000-01-01&group_by={group_by}"));
    let reply = client.fetch(get(&url, Auth::Bearer(ADMIN_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn database_of(url: &str) -> &str {
    url.rsplit('/').next().expect("a database in the URL")
}

#[tokio::test]
async fn two_replicas_write_one_ledger_and_either_reports_both() {
    let pg = PostgresServer::start();
    let url = pg.create_database();
    let mock = MockUpstream::start().await;
    // Started together: both try to migrate the empty database at once.
    let (a, b) = tokio::join!(Proxy::start(env(&mock, &url)), Proxy::start(env(&mock, &url)));
    let schema = pg.psql(database_of(&url), "SELECT version FROM keyrelay_schema ORDER BY version");
    assert_eq!(schema.trim(), "1", "one migration, recorded once");

    let client = TestClient::http1();
    for _ in 0..3 {
        assert_eq!(chat(&client, &a, PROXY_KEY).await, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(chat(&client, &b, PROXY_KEY).await, StatusCode::OK);
    }
    // Each writer commits its batch within its window (100 ms).
    eventually("both replicas' rows in the shared ledger", || async {
        pg.psql(database_of(&url), "SELECT COUNT(*) FROM ledger").trim() == "5"
    })
    .await;
    for proxy in [&a, &b] {
        let report = usage(&client, proxy, "model").await;
        assert_eq!(report["total"]["requests"], 5, "{report}");
        assert_eq!(report["data"][0]["model"], "gpt-4o-mini", "{report}");
        let by_day = usage(&client, proxy, "day,key").await;
        let day = by_day["data"][0]["day"].as_str().unwrap_or_default().to_owned();
        assert_eq!(day.len(), 10, "a UTC date, YYYY-MM-DD: {by_day}");
        assert!(by_day["data"][0]["key"].as_str().is_some_and(|k| k.starts_with("openai:")), "{by_day}");
    }
    // Tokens add up the same from either side, and match the rows.
    let tokens = pg.psql(database_of(&url), "SELECT SUM(tokens_in) FROM ledger");
    assert_eq!(usage(&client, &a, "").await["total"]["tokens_in"].to_string(), tokens.trim());
    // The local file keeps the pool's state only: no ledger rows there.
    let local = rusqlite::Connection::open(keyrelay::store::db_path(a.data_dir())).unwrap();
    let rows: i64 = local.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "replica A's ledger rows went to Postgres");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_client_made_on_one_replica_is_known_to_the_other_once_it_restarts() {
    let pg = PostgresServer::start();
    let url = pg.create_database();
    let mock = MockUpstream::start().await;
    let a = Proxy::start(env(&mock, &url)).await;
    let b = Proxy::start(env(&mock, &url)).await;
    let client = TestClient::http1();
    let made = client
        .fetch(post(&a.url("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY), json!({"name": "notebook"}).to_string()))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let key = made.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(chat(&client, &a, &key).await, StatusCode::OK);
    // B loaded the clients when it started: nothing tells it of new ones.
    assert_eq!(chat(&client, &b, &key).await, StatusCode::UNAUTHORIZED);
    let rows = pg.psql(database_of(&url), "SELECT name, key_prefix FROM clients");
    assert_eq!(rows.trim(), format!("notebook\t{}", &key[..10]), "the key itself is not stored");
    b.stop().await;

    let b = Proxy::start(env(&mock, &url)).await;
    assert!(
        b.notes().iter().any(|n| n.contains("restored 1 client key(s)") && n.contains("postgres://keyrelay@127.0.0.1")),
        "{:?}",
        b.notes()
    );
    assert_eq!(chat(&client, &b, &key).await, StatusCode::OK, "loaded from the shared store at start");
    // Listed on either replica; revoked on B, gone from the store.
    let listed = client.fetch(get(&a.url("/v1/admin/clients"), Auth::Bearer(ADMIN_KEY))).await;
    assert!(listed.text().contains("notebook"), "{}", listed.text());
    let revoke = request(Method::DELETE, &b.url("/v1/admin/clients/notebook"), Auth::Bearer(ADMIN_KEY));
    let revoked = client.fetch(revoke).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    assert_eq!(pg.psql(database_of(&url), "SELECT COUNT(*) FROM clients").trim(), "0");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_bad_or_unreachable_postgres_url_is_a_clear_error_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let refused = load_settings(dir.path(), env(&mock, "postgres://kr:hunter2@db/k?sslmode=verify-everything"), None)
        .expect_err("no such sslmode")
        .to_string();
    assert!(refused.contains("ledger.url") && refused.contains("sslmode=verify-everything"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");

    let nobody = format!("postgres://kr:hunter2@127.0.0.1:{}/k", closed_port());
    let settings = load_settings(dir.path(), env(&mock, &nobody), Some(dir.path().join("data"))).unwrap();
    let err = keyrelay::Bound::bind(&settings).await.expect_err("no database there").to_string();
    assert!(err.contains("cannot open the Postgres ledger postgres://kr:***@127.0.0.1:"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// `keyrelay usage` (the binary) with `env` as its only environment, in
/// an empty working dir.
async fn keyrelay_usage(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("usage")
        .args(args)
        .current_dir(cwd.path())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_usage_command_reads_both_replicas_rows_from_postgres() {
    let pg = PostgresServer::start();
    let url = pg.create_database();
    let mock = MockUpstream::start().await;
    let (a, b) = tokio::join!(Proxy::start(env(&mock, &url)), Proxy::start(env(&mock, &url)));
    let client = TestClient::http1();
    for proxy in [&a, &b, &a] {
        assert_eq!(chat(&client, proxy, PROXY_KEY).await, StatusCode::OK);
    }
    eventually("both replicas' rows in the shared ledger", || async {
        pg.psql(database_of(&url), "SELECT COUNT(*) FROM ledger").trim() == "3"
    })
    .await;

    // The replicas' own configuration: the command finds Postgres in it.
    let window = ["--since", "2000-01-01", "--until", "2099-12-31"];
    let out = keyrelay_usage(&env(&mock, &url), &[&["--json", "--by", "model,key"][..], &window].concat()).await;
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let from_cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_cli["total"]["requests"], 3, "{from_cli}");
    assert_eq!(from_cli["data"][0]["model"], "gpt-4o-mini", "{from_cli}");
    let route = "/v1/usage?start=2000-01-01&end=2099-12-31&group_by=model,key";
    let from_route = client.fetch(get(&b.url(route), Auth::Bearer(ADMIN_KEY))).await.json();
    assert_eq!(from_cli, from_route, "the same report as the route's");

    let table = keyrelay_usage(&env(&mock, &url), &window).await;
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.lines().last().is_some_and(|l| l.starts_with("total") && l.contains(" 3 ")), "{table}");

    // An unreachable database: exit 1, the URL without its password.
    let gone = format!("postgres://kr:hunter2@127.0.0.1:{}/k", closed_port());
    let failed = keyrelay_usage(&env(&mock, &gone), &["--json"]).await;
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("cannot read postgres://kr:***@127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains("hunter2") && failed.stdout.is_empty(), "{stderr}");
    a.stop().await;
    b.stop().await;
}

/// A ledger row of `client` that cost `usd`, finished at `unix_ms`.
fn row_at(unix_ms: u64, client: &str, usd: f64) -> LedgerRow {
    let mut row = LedgerRow::default();
    row.unix_ms = unix_ms;
    row.request_id = format!("req-{unix_ms}");
    row.route = "chat/completions";
    row.outcome = "completed";
    row.client = Some(client.to_owned());
    row.cost_usd = Some(usd);
    row
}

#[tokio::test]
async fn retention_on_postgres_prunes_old_rows_and_keeps_the_total_spend() {
    const DAY_MS: u64 = 86_400_000;
    let pg = PostgresServer::start();
    let url = pg.create_database();
    let now = keyrelay::store::now_ms();
    let (old, recent) = (now - 200 * DAY_MS, now - DAY_MS);
    let written = url.clone();
    tokio::task::spawn_blocking(move || {
        let url = PostgresUrl::parse(&written, std::path::Path::new(".")).unwrap();
        let mut client = pg::open(&url).unwrap();
        pg::ledger::write_batch(&mut client, &[row_at(old, "ci", 1.0), row_at(recent, "ci", 2.0)]).unwrap();
    })
    .await
    .unwrap();
    let db = database_of(&url);
    let spend = "SELECT period, usd FROM spend ORDER BY period, period_start";
    assert_eq!(pg.psql(db, spend).lines().count(), 7, "day, week and month of each row, and one total");

    // The writer applies the retention as it starts (then hourly).
    let mut env = env(&MockUpstream::start().await, &url);
    env.push(("KEYRELAY_LEDGER__RETENTION_DAYS".to_owned(), "90".to_owned()));
    let proxy = Proxy::start(env).await;
    eventually("the row of 200 days ago pruned", || async { pg.psql(db, "SELECT COUNT(*) FROM ledger").trim() == "1" })
        .await;
    assert_eq!(pg.psql(db, "SELECT unix_ms FROM ledger").trim(), recent.to_string());
    // The old row's day, week and month ended before the cutoff; the total
    // still counts what it spent (budgets outlive the ledger).
    assert_eq!(pg.psql(db, spend), "day\t2\nmonth\t2\ntotal\t3\nweek\t2\n");
    let report = usage(&TestClient::http1(), &proxy, "").await;
    assert_eq!(report["total"]["requests"], 1, "{report}");
    proxy.stop().await;
}

/// `keyrelay_ledger_rows_dropped_total` on `proxy`'s `/metrics` (the
/// recorder is the test binary's: no other test here drops a row).
async fn rows_dropped(client: &TestClient, proxy: &Proxy) -> u64 {
    let reply = client.fetch(get(&proxy.url("/metrics"), Auth::None)).await;
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("keyrelay_ledger_rows_dropped_total "))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn postgres_restarting_under_load_fails_no_request_and_the_writer_reconnects() {
    let mut pg = PostgresServer::start();
    let url = pg.create_database();
    let db = database_of(&url).to_owned();
    let mock = MockUpstream::start().await;
    let proxy = std::sync::Arc::new(Proxy::start(env(&mock, &url)).await);
    let client = TestClient::http1();

    // Requests one after another, all through the outage.
    let (stop_load, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn({
        let (proxy, client) = (proxy.clone(), client.clone());
        async move {
            let mut sent = 0u64;
            while stopped.try_recv().is_err() {
                assert_eq!(chat(&client, &proxy, PROXY_KEY).await, StatusCode::OK, "request {sent}");
                sent += 1;
            }
            sent
        }
    });
    eventually("rows written before the outage", || async {
        pg.psql(&db, "SELECT COUNT(*) FROM ledger").trim().parse::<u64>().unwrap() > 0
    })
    .await;
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    // The writer's batches meet no database: dropped and counted.
    eventually("a batch dropped while Postgres is down", || async { rows_dropped(&client, &proxy).await > 0 }).await;
    let restarted_ms = keyrelay::store::now_ms();
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    // Rows finished after the restart land: the writer connected again.
    eventually("rows written after the restart", || async {
        let after = format!("SELECT COUNT(*) FROM ledger WHERE unix_ms >= {restarted_ms}");
        pg.psql(&db, &after).trim().parse::<u64>().unwrap() >= 5
    })
    .await;
    let _ = stop_load.send(());
    let sent = load.await.unwrap();

    // Every request is in the ledger or counted as dropped, none twice.
    eventually("each row written or counted as dropped", || async {
        let written: u64 = pg.psql(&db, "SELECT COUNT(*) FROM ledger").trim().parse().unwrap();
        written + rows_dropped(&client, &proxy).await == sent
    })
    .await;
    let distinct = pg.psql(&db, "SELECT COUNT(DISTINCT request_id) = COUNT(*) FROM ledger");
    assert_eq!(distinct.trim(), "t", "no row written twice");
    std::sync::Arc::into_inner(proxy).expect("the load is done").stop().await;
}
