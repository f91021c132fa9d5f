use rusqlite::params;

use super::*;
use crate::store;

const DAY_MS: i64 = 86_400_000;
/// 2026-12-01T00:00:00Z
const DEC_1: i64 = 1_796_083_200_000;

/// One ledger row, as the writer would store it.
struct Entry {
    at: i64,
    client: Option<&'static str>,
    provider: Option<&'static str>,
    model: Option<&'static str>,
    key: Option<&'static str>,
    status: Option<u16>,
    outcome: &'static str,
    tokens: (i64, i64, i64),
    cost: Option<f64>,
    unpriced: bool,
}

const OK: Entry = Entry {
    at: DEC_1,
    client: Some("ci"),
    provider: Some("openai"),
    model: Some("gpt-4o-mini"),
    key: Some("openai:1111aaaa"),
    status: Some(200),
    outcome: "completed",
    tokens: (100, 10, 0),
    cost: Some(0.5),
    unpriced: false,
};

fn insert(conn: &Connection, entries: &[Entry]) {
    for (i, e) in entries.iter().enumerate() {
        conn.execute(
            "INSERT INTO ledger (unix_ms, request_id, client, route, provider, model, key_id, status, outcome,
                                 tokens_in, tokens_out, tokens_cached, cost_usd, unpriced)
             VALUES (?1, ?2, ?3, 'chat/completions', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                e.at,
                format!("req-{i}"),
                e.client,
                e.provider,
                e.model,
                e.key,
                e.status,
                e.outcome,
                e.tokens.0,
                e.tokens.1,
                e.tokens.2,
                e.cost,
                e.unpriced
            ],
        )
        .unwrap();
    }
}

fn db(entries: &[Entry]) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = store::open(&store::db_path(dir.path())).unwrap();
    insert(&conn, entries);
    (dir, conn)
}

fn query(start_ms: i64, end_ms: i64, groups: &str) -> UsageQuery {
    UsageQuery { start_ms, end_ms, group_by: GroupBy::parse_list(groups).unwrap() }
}

fn groups(row: &UsageRow) -> Vec<&str> {
    row.groups.iter().map(|g| g.as_deref().unwrap_or("<null>")).collect()
}

#[test]
fn groupings_parse_from_their_names_and_refuse_others() {
    assert_eq!(
        GroupBy::parse_list(" client, provider,model,key ,day").unwrap(),
        [GroupBy::Client, GroupBy::Provider, GroupBy::Model, GroupBy::Key, GroupBy::Day]
    );
    assert_eq!(GroupBy::parse_list("day,client,day").unwrap(), [GroupBy::Day, GroupBy::Client]);
    assert_eq!(GroupBy::parse_list("").unwrap(), []);
    let err = GroupBy::parse_list("client,user").unwrap_err();
    assert_eq!(err.to_string(), "unknown grouping `user`; valid groupings: client, provider, model, key, day");
    assert!(GroupBy::parse_list("Client").is_err(), "names are lowercase");
}

#[test]
fn rows_are_grouped_and_added_up_exactly() {
    let (_dir, conn) = db(&[
        OK,
        Entry { tokens: (50, 5, 20), cost: Some(0.25), ..OK },
        Entry { model: Some("gpt-4o"), status: Some(500), outcome: "errored", tokens: (0, 0, 0), cost: None, ..OK },
        Entry { client: Some("app"), cost: None, unpriced: true, ..OK },
        Entry { client: Some("app"), status: Some(200), outcome: "cancelled", cost: Some(0.125), ..OK },
        Entry { client: None, provider: None, model: None, key: None, status: Some(401), outcome: "errored", ..OK },
        Entry { client: Some("app"), status: None, outcome: "cancelled", tokens: (0, 0, 0), cost: None, ..OK },
    ]);
    let rows = report(&conn, &query(DEC_1, DEC_1 + DAY_MS, "client,model")).unwrap();
    let got: Vec<_> = rows.iter().map(|r| (groups(r), r.totals.clone())).collect();
    let totals = |requests, errors, tokens_in, tokens_out, tokens_cached, cost_usd, unpriced_requests| Totals {
        requests,
        errors,
        tokens_in,
        tokens_out,
        tokens_cached,
        cost_usd,
        unpriced_requests,
    };
    assert_eq!(
        got,
        [
            (vec!["<null>", "<null>"], totals(1, 1, 100, 10, 0, Some(0.5), 0)),
            (vec!["app", "gpt-4o-mini"], totals(3, 2, 200, 20, 0, Some(0.125), 1)),
            (vec!["ci", "gpt-4o"], totals(1, 1, 0, 0, 0, None, 0)),
            (vec!["ci", "gpt-4o-mini"], totals(2, 0, 150, 15, 20, Some(0.75), 0)),
        ]
    );
    assert_eq!(Totals::sum(&rows), totals(7, 4, 450, 45, 20, Some(1.375), 1));
    let ungrouped = report(&conn, &query(DEC_1, DEC_1 + DAY_MS, "")).unwrap();
    assert_eq!(ungrouped.len(), 1);
    assert_eq!((ungrouped[0].groups.len(), &ungrouped[0].totals), (0, &Totals::sum(&rows)));
}

#[test]
fn a_group_without_any_cost_has_none_not_zero() {
    let (_dir, conn) = db(&[Entry { cost: None, unpriced: true, ..OK }, Entry { cost: None, unpriced: true, ..OK }]);
    let rows = report(&conn, &query(DEC_1, DEC_1 + 1, "provider")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].totals.cost_usd, rows[0].totals.unpriced_requests), (None, 2));
    assert_eq!(Totals::sum(&rows).cost_usd, None);
}

#[test]
fn the_window_counts_its_start_and_not_its_end_and_days_are_utc_dates() {
    let (_dir, conn) = db(&[
        Entry { at: DEC_1 - 1, key: Some("openai:0000"), ..OK },
        Entry { at: DEC_1, ..OK },
        Entry { at: DEC_1 + DAY_MS - 1, ..OK },
        Entry { at: DEC_1 + DAY_MS, key: Some("openai:2222bbbb"), ..OK },
        Entry { at: DEC_1 + 2 * DAY_MS, key: Some("openai:3333"), ..OK },
    ]);
    let rows = report(&conn, &query(DEC_1, DEC_1 + 2 * DAY_MS, "day,key")).unwrap();
    let got: Vec<_> = rows.iter().map(|r| (groups(r), r.totals.requests)).collect();
    assert_eq!(
        got,
        [(vec!["2026-12-01", "openai:1111aaaa"], 2), (vec!["2026-12-02", "openai:2222bbbb"], 1)],
        "Nov 30 23:59:59.999 and Dec 3 00:00 are outside"
    );
    assert!(report(&conn, &query(DEC_1 + 5 * DAY_MS, DEC_1 + 6 * DAY_MS, "")).unwrap().is_empty());
    assert!(report(&conn, &query(DEC_1, DEC_1, "client")).unwrap().is_empty(), "an empty window");
}

#[test]
fn a_read_only_connection_reports_on_a_closed_database() {
    let (dir, conn) = db(&[OK, OK]);
    drop(conn);
    let reader = store::open_read_only(&store::db_path(dir.path())).unwrap();
    let rows = report(&reader, &query(0, i64::MAX, "client")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].totals.requests, 2);
}
