//! The ledger on Postgres (`ledger.url = "postgres://..."`): replicas,
//! each with its own data dir (its pool state), share one database for the
//! usage ledger, the spend and the runtime client keys. Every test starts
//! a real Postgres of its own (tests/support/postgres.rs).

mod support;

use http::{Method, StatusCode};
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
