//! Usage reports end to end: `GET /v1/usage` (admin key) and the
//! `keyrelay usage` command read ledger rows written straight into the
//! database (as the ledger's writer would) and add them up by client,
//! provider, model, key and day, over a window whose start counts and whose
//! end does not.

mod support;

use std::{path::Path, process::Output};

use keyrelay::store;
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Auth, PROXY_KEY, Proxy, Reply, TestClient, assert_openai_error, get};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// 2026-12-01T00:00:00Z
const DEC_1: i64 = 1_796_083_200_000;

/// A ledger row: when, who, what, how it ended, tokens (in, out, cached), cost.
type Entry =
    (i64, Option<&'static str>, &'static str, &'static str, &'static str, u16, &'static str, [i64; 3], Option<f64>);

/// Rows over two days of December, three clients (one unknown: refused
/// before its key was checked), two providers, three keys; errors, a
/// cancelled stream, unpriced models. Costs are exact in binary.
const LEDGER: &[Entry] = &[
    (DEC_1, Some("ci"), "openai", "gpt-4o-mini", "openai:1111aaaa", 200, "completed", [1000, 100, 200], Some(0.5)),
    (
        DEC_1 + HOUR_MS,
        Some("ci"),
        "openai",
        "gpt-4o-mini",
        "openai:2222bbbb",
        200,
        "completed",
        [500, 50, 0],
        Some(0.25),
    ),
    (DEC_1 + 2 * HOUR_MS, Some("ci"), "openai", "gpt-4o-mini", "openai:1111aaaa", 502, "errored", [0, 0, 0], None),
    (
        DEC_1 + DAY_MS,
        Some("ci"),
        "anthropic",
        "claude-haiku",
        "anthropic:3333cccc",
        200,
        "completed",
        [300, 30, 0],
        Some(1.0),
    ),
    (
        DEC_1 + 3 * HOUR_MS,
        Some("app"),
        "openai",
        "gpt-4o-mini",
        "openai:2222bbbb",
        200,
        "cancelled",
        [80, 8, 0],
        Some(0.125),
    ),
    (DEC_1 + DAY_MS + HOUR_MS, Some("app"), "groq", "llama-3", "groq:4444dddd", 200, "completed", [40, 4, 0], None),
    (DEC_1 + 4 * HOUR_MS, None, "openai", "gpt-4o-mini", "", 401, "errored", [0, 0, 0], None),
];

fn insert(conn: &Connection, entries: &[Entry]) {
    for (i, &(at, client, provider, model, key, status, outcome, [tin, tout, tcached], cost)) in
        entries.iter().enumerate()
    {
        let key = (!key.is_empty()).then_some(key);
        let unpriced = cost.is_none() && tin > 0;
        conn.execute(
            "INSERT INTO ledger (unix_ms, request_id, client, route, provider, model, key_id, status, outcome,
                                 tokens_in, tokens_out, tokens_cached, cost_usd, unpriced)
             VALUES (?1, ?2, ?3, 'chat/completions', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                at,
                format!("req-{at}-{i}"),
                client,
                provider,
                model,
                key,
                status,
                outcome,
                tin,
                tout,
                tcached,
                cost,
                unpriced
            ],
        )
        .unwrap();
    }
}

/// A data dir whose database holds `entries`.
fn data_dir_with(entries: &[Entry]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    insert(&store::open(&store::db_path(dir.path())).unwrap(), entries);
    dir
}

/// The keys, and a ledger kept forever: the rows these tests write are
/// dated (some a year back), and the proxy's retention would prune them
/// while a test reads.
fn admin_env() -> Vec<(String, String)> {
    vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()),
        ("KEYRELAY_LEDGER__RETENTION_DAYS".to_owned(), "0".to_owned()),
    ]
}

async fn usage(client: &TestClient, proxy: &Proxy, query: &str) -> Reply {
    client.fetch(get(&proxy.url(&format!("/v1/usage?{query}")), Auth::Bearer(ADMIN_KEY))).await
}

async fn usage_ok(client: &TestClient, proxy: &Proxy, query: &str) -> Value {
    let reply = usage(client, proxy, query).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

/// `[group values..., requests, errors, tokens_in, tokens_out, tokens_cached, cost_usd, unpriced_requests]`
fn row(groups: &[&str], value: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = groups.iter().map(|g| value[*g].clone()).collect();
    for field in ["requests", "errors", "tokens_in", "tokens_out", "tokens_cached", "cost_usd", "unpriced_requests"] {
        out.push(value.get(field).cloned().unwrap_or_else(|| panic!("no `{field}` in {value}")));
    }
    out
}

fn rows(groups: &[&str], report: &Value) -> Vec<Vec<Value>> {
    report["data"].as_array().unwrap().iter().map(|r| row(groups, r)).collect()
}

#[tokio::test]
async fn the_report_adds_up_the_ledger_by_the_groups_asked() {
    let dir = data_dir_with(LEDGER);
    let proxy = Proxy::start_in(admin_env(), dir.path(), |_| {}).await;
    let client = TestClient::http1();

    let report = usage_ok(&client, &proxy, "start=2026-12-01&end=2026-12-02&group_by=client,model").await;
    assert_eq!(report["start"], "2026-12-01T00:00:00Z");
    assert_eq!(report["end"], "2026-12-03T00:00:00Z", "an end date counts its whole day");
    assert_eq!(report["group_by"], json!(["client", "model"]));
    let groups = ["client", "model"];
    assert_eq!(
        rows(&groups, &report),
        [
            json!([null, "gpt-4o-mini", 1, 1, 0, 0, 0, null, 0]),
            json!(["app", "gpt-4o-mini", 1, 1, 80, 8, 0, 0.125, 0]),
            json!(["app", "llama-3", 1, 0, 40, 4, 0, null, 1]),
            json!(["ci", "claude-haiku", 1, 0, 300, 30, 0, 1.0, 0]),
            json!(["ci", "gpt-4o-mini", 3, 1, 1500, 150, 200, 0.75, 0]),
        ]
        .map(|r| r.as_array().unwrap().clone())
    );
    assert_eq!(row(&[], &report["total"]), json!([7, 3, 1920, 192, 200, 1.875, 1]).as_array().unwrap().clone());

    let by_key_and_day = usage_ok(&client, &proxy, "start=2026-12-01&end=2026-12-03&group_by=day,provider,key").await;
    let groups = ["day", "provider", "key"];
    assert_eq!(
        rows(&groups, &by_key_and_day),
        [
            json!(["2026-12-01", "openai", null, 1, 1, 0, 0, 0, null, 0]),
            json!(["2026-12-01", "openai", "openai:1111aaaa", 2, 1, 1000, 100, 200, 0.5, 0]),
            json!(["2026-12-01", "openai", "openai:2222bbbb", 2, 1, 580, 58, 0, 0.375, 0]),
            json!(["2026-12-02", "anthropic", "anthropic:3333cccc", 1, 0, 300, 30, 0, 1.0, 0]),
            json!(["2026-12-02", "groq", "groq:4444dddd", 1, 0, 40, 4, 0, null, 1]),
        ]
        .map(|r| r.as_array().unwrap().clone())
    );

    let total_only = usage_ok(&client, &proxy, "start=2026-12-01&end=2026-12-02&group_by=").await;
    assert_eq!(total_only["data"].as_array().unwrap().len(), 1);
    assert_eq!(row(&[], &total_only["data"][0]), row(&[], &total_only["total"]));
}

#[tokio::test]
async fn the_window_counts_its_start_not_its_end_and_defaults_to_the_last_week() {
    let now = jiff::Timestamp::now().as_millisecond();
    let at = |at: i64, client: &'static str| -> Entry {
        (at, Some(client), "openai", "gpt-4o-mini", "openai:1111aaaa", 200, "completed", [1, 1, 0], None)
    };
    // A year before the other tests' December: far outside the last week.
    let dec_1_2025 = DEC_1 - 365 * DAY_MS;
    let dir = data_dir_with(&[
        at(dec_1_2025 - 1, "before"),
        at(dec_1_2025, "first"),
        at(dec_1_2025 + HOUR_MS - 1, "last"),
        at(dec_1_2025 + HOUR_MS, "after"),
        at(now - HOUR_MS, "recent"),
        at(now - 8 * DAY_MS, "old"),
    ]);
    let proxy = Proxy::start_in(admin_env(), dir.path(), |_| {}).await;
    let client = TestClient::http1();
    let clients = |report: &Value| -> Vec<String> {
        report["data"].as_array().unwrap().iter().map(|r| r["client"].as_str().unwrap().to_owned()).collect()
    };

    let hour = usage_ok(&client, &proxy, "start=2025-12-01T00:00:00Z&end=2025-12-01T01:00:00Z&group_by=client").await;
    assert_eq!(clients(&hour), ["first", "last"]);
    let offset = "start=2025-12-01T01:00:00%2B01:00&end=2025-12-01T00:59:59.999Z&group_by=client";
    assert_eq!(clients(&usage_ok(&client, &proxy, offset).await), ["first"], "offsets; the end excluded to the ms");

    let week = usage_ok(&client, &proxy, "group_by=client").await;
    assert_eq!(clients(&week), ["recent"], "the last 7 days up to now");
    let (start, end) = (ms(&week["start"]), ms(&week["end"]));
    assert_eq!(end - start, 7 * DAY_MS, "{week}");
    assert!((now..now + 60_000).contains(&end), "ends now: {week}");
}

/// A report's RFC 3339 time, in ms since the epoch.
fn ms(value: &Value) -> i64 {
    value.as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter_and_strangers_are_refused() {
    let dir = data_dir_with(LEDGER);
    let proxy = Proxy::start_in(admin_env(), dir.path(), |_| {}).await;
    let client = TestClient::http1();
    for (query, named) in [
        ("start=last-tuesday", "`start`"),
        ("end=2026-02-30", "`end`"),
        ("start=2026-12-05&end=2026-12-01", "`start`"),
        ("group_by=client,team", "`group_by`"),
        ("since=7d", "`since`"),
    ] {
        let reply = usage(&client, &proxy, query).await;
        assert_openai_error(&reply, 400, "invalid_query", &format!("invalid query parameter {named}"));
    }
    let reply = usage(&client, &proxy, "group_by=team").await;
    assert_openai_error(&reply, 400, "invalid_query", "valid groupings: client, provider, model, key, day");

    let none = client.fetch(get(&proxy.url("/v1/usage"), Auth::None)).await;
    assert_openai_error(&none, 401, "invalid_api_key", "missing admin API key");
    let proxy_key = client.fetch(get(&proxy.url("/v1/usage"), Auth::Bearer(PROXY_KEY))).await;
    assert_openai_error(&proxy_key, 403, "admin_key_required", "admin key");
}

#[tokio::test]
async fn no_database_yet_is_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(admin_env(), dir.path(), |_| {}).await;
    let report = usage_ok(&TestClient::http1(), &proxy, "group_by=model").await;
    assert_eq!(report["data"], json!([]));
    assert_eq!(
        report["total"],
        json!({"requests": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0, "tokens_cached": 0, "cost_usd": null, "unpriced_requests": 0})
    );
}

/// `keyrelay usage` with `args`, in an empty directory and environment.
fn keyrelay_usage(args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("usage")
        .args(args)
        .current_dir(cwd.path())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn path_arg(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[tokio::test]
async fn the_command_prints_the_table_and_the_same_json_as_the_route() {
    let dir = data_dir_with(LEDGER);
    // A writer mid-transaction (as the ledger's batch may be) neither blocks
    // the command nor shows it uncommitted rows: WAL.
    let mut writer = store::open(&store::db_path(dir.path())).unwrap();
    let pending = writer.transaction().unwrap();
    insert(
        &pending,
        &[(DEC_1, Some("ci"), "openai", "gpt-4o-mini", "openai:1111aaaa", 200, "completed", [9, 9, 9], Some(9.0))],
    );

    let window = ["--since", "2026-12-01", "--until", "2026-12-02"];
    let data_dir = path_arg(dir.path());
    let table = stdout(&keyrelay_usage(&[&["--data-dir", data_dir, "--by", "client,model"][..], &window].concat()));
    let expected = "\
usage from 2026-12-01T00:00:00Z to 2026-12-03T00:00:00Z
client  model         requests  errors  tokens_in  tokens_out  tokens_cached  cost_usd  unpriced
(none)  gpt-4o-mini          1       1          0           0              0         -         0
app     gpt-4o-mini          1       1         80           8              0    0.1250         0
app     llama-3              1       0         40           4              0         -         1
ci      claude-haiku         1       0        300          30              0    1.0000         0
ci      gpt-4o-mini          3       1       1500         150            200    0.7500         0
total                        7       3       1920         192            200    1.8750         1
";
    assert_eq!(table, expected);

    let json_out =
        stdout(&keyrelay_usage(&[&["--by", "client,model", "--json", "--data-dir", data_dir][..], &window].concat()));
    let from_cli: Value = serde_json::from_str(&json_out).unwrap();
    drop(pending);

    let proxy = Proxy::start_in(admin_env(), dir.path(), |_| {}).await;
    let from_route =
        usage_ok(&TestClient::http1(), &proxy, "start=2026-12-01&end=2026-12-02&group_by=client,model").await;
    assert_eq!(from_cli, from_route);
}

#[test]
fn the_command_fails_clearly_without_a_database_or_with_bad_flags() {
    let empty = tempfile::tempdir().unwrap();
    let missing = keyrelay_usage(&["--data-dir", path_arg(empty.path())]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no usage database at") && stderr.contains("--data-dir"), "{stderr}");
    assert!(missing.stdout.is_empty());

    let broken = tempfile::tempdir().unwrap();
    std::fs::write(store::db_path(broken.path()), b"not a database, not at all, no").unwrap();
    let unreadable = keyrelay_usage(&["--data-dir", path_arg(broken.path())]);
    assert_eq!(unreadable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreadable.stderr).contains("cannot read"), "{unreadable:?}");

    let bad = keyrelay_usage(&["--data-dir", path_arg(empty.path()), "--by", "team"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --by: unknown grouping `team`"), "{bad:?}");
}
