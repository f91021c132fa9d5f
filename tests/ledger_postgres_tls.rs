//! The Postgres ledger over TLS (`ledger.url = "postgres://...?sslmode=..."`),
//! against a real PostgreSQL serving `ssl=on` with a certificate from a
//! test CA (tests/support/postgres.rs): what each `sslmode` accepts and
//! refuses, and a replica writing its ledger over a checked connection.

mod support;

use std::path::Path;

use http::StatusCode;
use keyrelay::{config::ledger::PostgresUrl, store::pg};
use support::{
    ADMIN_KEY, Auth, MockUpstream, PROXY_KEY, Proxy, TestClient, chat_body, eventually, get, openai_env, post,
    postgres::{PostgresServer, TestCa, USER},
    proxy::load_settings,
};

/// The password in every URL here: trust authentication ignores it, and
/// no message may show it.
const PASSWORD: &str = "hunter2-pg";

/// `db` on `host` (a name or an address the server listens on), with
/// `options`.
fn url(pg: &PostgresServer, host: &str, db: &str, options: &str) -> String {
    format!("postgres://{USER}:{PASSWORD}@{host}:{}/{db}?{options}", pg.port())
}

fn database_of(url: &str) -> &str {
    url.rsplit('/').next().expect("a database in the URL")
}

/// Connects as the ledger would; whether the connection uses TLS, or the
/// error, as shown.
fn connect(url: &str, working_dir: &Path) -> Result<bool, String> {
    let url = PostgresUrl::parse(url, working_dir).map_err(|err| err.to_string())?;
    let mut client = pg::connect(&url).map_err(|err| format!("{url}: {err}"))?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .map_err(|err| err.to_string())?;
    Ok(row.get(0))
}

fn refused(url: &str, working_dir: &Path) -> String {
    let err = connect(url, working_dir).expect_err("refused");
    assert!(!err.contains(PASSWORD), "the password is not shown: {err}");
    err
}

#[test]
fn each_sslmode_takes_or_refuses_the_servers_certificate_as_documented() {
    let ca = TestCa::new("keyrelay test CA");
    // Made out to `localhost` only: reached as 127.0.0.1, the name differs.
    let pg = PostgresServer::start_tls(&ca, &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    ca.write_cert(dir.path(), "ca.pem");
    TestCa::new("someone else").write_cert(dir.path(), "other-ca.pem");
    let db = "postgres";

    // sslrootcert is relative to the working dir.
    let full = url(&pg, "localhost", db, "sslmode=verify-full&sslrootcert=ca.pem");
    assert_eq!(connect(&full, dir.path()), Ok(true), "the CA's certificate, the host's name");
    let by_address = url(&pg, "127.0.0.1", db, "sslmode=verify-ca&sslrootcert=ca.pem");
    assert_eq!(connect(&by_address, dir.path()), Ok(true), "verify-ca: the chain, whatever the name");
    let require = url(&pg, "127.0.0.1", db, "sslmode=require&sslrootcert=ca.pem");
    assert_eq!(connect(&require, dir.path()), Ok(true), "require with sslrootcert is verify-ca");
    assert_eq!(connect(&url(&pg, "127.0.0.1", db, ""), dir.path()), Ok(true), "prefer: TLS, unchecked (libpq)");
    let plain = url(&pg, "127.0.0.1", db, "sslmode=disable");
    assert_eq!(connect(&plain, dir.path()), Ok(false));

    let wrong_name = refused(&url(&pg, "127.0.0.1", db, "sslmode=verify-full&sslrootcert=ca.pem"), dir.path());
    assert!(
        wrong_name.contains("TLS handshake: invalid peer certificate: certificate not valid for name"),
        "{wrong_name}"
    );
    assert!(
        wrong_name.contains("or check the chain only: sslmode=verify-ca with the server's CA in sslrootcert"),
        "what to do: {wrong_name}"
    );
    assert!(wrong_name.contains(&format!("postgres://{USER}:***@127.0.0.1")), "{wrong_name}");
    for options in [
        "sslmode=verify-full&sslrootcert=other-ca.pem",
        "sslmode=verify-ca&sslrootcert=other-ca.pem",
        // Unlike libpq, require checks the certificate: the public roots here.
        "sslmode=require",
    ] {
        let err = refused(&url(&pg, "localhost", db, options), dir.path());
        assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{options}: {err}");
        assert!(err.contains("give the server's CA with sslrootcert="), "what to do: {err}");
    }
}

#[test]
fn sslmode_require_against_a_server_without_tls_fails_clearly() {
    let pg = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let err = refused(&url(&pg, "127.0.0.1", "postgres", "sslmode=require"), dir.path());
    assert!(err.contains("server does not support TLS"), "{err}");
    assert_eq!(connect(&url(&pg, "127.0.0.1", "postgres", ""), dir.path()), Ok(false), "prefer goes plain");
}

fn env(mock: &MockUpstream, url: &str) -> Vec<(String, String)> {
    let mut env = openai_env(mock, 1);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    env.push(("KEYRELAY_LEDGER__URL".to_owned(), url.to_owned()));
    env
}

#[tokio::test]
async fn a_replica_on_verify_full_writes_its_ledger_over_tls() {
    let ca = TestCa::new("keyrelay test CA");
    let pg = PostgresServer::start_tls(&ca, &["localhost", "127.0.0.1"]);
    let db = database_of(&pg.create_database()).to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = ca.write_cert(dir.path(), "ca.pem");
    let url = url(&pg, "127.0.0.1", &db, &format!("sslmode=verify-full&sslrootcert={}", ca_pem.display()));
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(env(&mock, &url)).await;

    let client = TestClient::http1();
    for _ in 0..2 {
        let chat =
            post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false));
        assert_eq!(client.fetch(chat).await.status, StatusCode::OK);
    }
    eventually("the rows in the ledger", || async { pg.psql(&db, "SELECT COUNT(*) FROM ledger").trim() == "2" }).await;
    let report = client.fetch(get(&proxy.url("/v1/usage?start=2000-01-01"), Auth::Bearer(ADMIN_KEY))).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text());
    assert_eq!(report.json()["total"]["requests"], 2, "{}", report.text());
    // Every connection of keyrelay's to this database is encrypted.
    let sessions = pg.psql(
        &db,
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'keyrelay'",
    );
    let sessions: Vec<&str> = sessions.lines().collect();
    assert!(!sessions.is_empty() && sessions.iter().all(|ssl| *ssl == "t"), "{sessions:?}");
    assert!(proxy.notes().iter().all(|n| !n.contains(PASSWORD)), "the password is in no note: {:?}", proxy.notes());
    proxy.stop().await;
}

#[tokio::test]
async fn a_server_signed_by_another_ca_stops_the_start_without_showing_the_password() {
    let pg = PostgresServer::start_tls(&TestCa::new("the server's CA"), &["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("someone else").write_cert(dir.path(), "ca.pem");
    let url = url(&pg, "127.0.0.1", "postgres", &format!("sslmode=verify-full&sslrootcert={}", other.display()));
    let mock = MockUpstream::start().await;
    let settings = load_settings(dir.path(), env(&mock, &url), Some(dir.path().join("data"))).unwrap();
    // As with any database that cannot be opened: the start fails, saying why.
    let err = keyrelay::Bound::bind(&settings).await.expect_err("an unknown CA").to_string();
    assert!(err.starts_with(&format!("cannot open the Postgres ledger postgres://{USER}:***@127.0.0.1")), "{err}");
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    let missing = self::url(&pg, "127.0.0.1", "k", "sslmode=verify-full&sslrootcert=/nowhere/ca.pem");
    let err = load_settings(dir.path(), env(&mock, &missing), None).expect_err("no CA file").to_string();
    assert!(err.contains("ledger.url: cannot read sslrootcert /nowhere/ca.pem"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}
