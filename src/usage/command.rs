//! `keyrelay usage`: the report of `GET /v1/usage` as an aligned table (or
//! its JSON), read straight from the database, read-only, so it works
//! whether or not the server runs.

use std::{io::Write, process::ExitCode};

use super::{DEFAULT_GROUP_BY, Edge, UsageReport, bounded, now_ms, parse_time, rfc3339, window};
use crate::{
    cli::{Cli, UsageArgs},
    config::{self, Sources, ledger::LedgerBackend},
    store::{
        self,
        report::{GroupBy, Totals, UsageQuery},
    },
};

/// Bad arguments, as clap exits for its own.
const EXIT_ARGS: u8 = 2;

/// Runs `keyrelay usage`: 0 with the report printed, 1 when the database
/// cannot be read, 2 for arguments it cannot take.
#[expect(clippy::print_stderr, reason = "the command's failures are for the operator at the terminal")]
pub fn run(cli: &Cli, args: &UsageArgs) -> ExitCode {
    let query = match query(args, now_ms()) {
        Ok(query) => query,
        Err(message) => {
            eprintln!("keyrelay usage: {message}");
            return ExitCode::from(EXIT_ARGS);
        }
    };
    let report = match database(cli).and_then(|db| read(&db, query)) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("keyrelay usage: {message}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report).expect("a report always serializes");
        json.push('\n');
        json
    } else {
        table(&report)
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not the report's failure.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    ExitCode::SUCCESS
}

/// The window and groupings the flags ask for, relative to `now_ms`.
pub fn query(args: &UsageArgs, now_ms: i64) -> Result<UsageQuery, String> {
    let when = |flag: &str, text: &Option<String>, edge| {
        text.as_deref()
            .map(|text| when(text, now_ms, edge).map_err(|reason| format!("invalid {flag}: {reason}")))
            .transpose()
    };
    let start_ms = when("--since", &args.since, Edge::Start)?;
    let end_ms = when("--until", &args.until, Edge::End)?;
    let (start_ms, end_ms) = window(start_ms, end_ms, now_ms).map_err(|reason| format!("invalid --since: {reason}"))?;
    let group_by = match &args.by {
        Some(list) => GroupBy::parse_list(list).map_err(|err| format!("invalid --by: {err}"))?,
        None => DEFAULT_GROUP_BY.to_vec(),
    };
    Ok(UsageQuery { start_ms, end_ms, group_by })
}

/// A duration back from now (`30m`, `24h`, `7d`, `2w`, `90s`), or what
/// [`parse_time`] takes.
fn when(text: &str, now_ms: i64, edge: Edge) -> Result<i64, String> {
    if let Some(ago) = duration_ms(text) {
        return Ok(now_ms.saturating_sub(ago));
    }
    parse_time(text, edge).map_err(|_| {
        format!(
            "`{}` is neither a duration back from now (30m, 24h, 7d, 2w), a date (2026-12-01, UTC) nor an RFC 3339 time",
            bounded(text)
        )
    })
}

fn duration_ms(text: &str) -> Option<i64> {
    let unit_ms = match text.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let count = &text[..text.len() - 1];
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    count.parse::<i64>().ok()?.checked_mul(unit_ms)
}

/// The database under `--data-dir`, else the one of the configuration the
/// server would load (config file, `.env`, environment; `ledger.url`).
fn database(cli: &Cli) -> Result<LedgerBackend, String> {
    if let Some(dir) = &cli.data_dir {
        return Ok(LedgerBackend::Sqlite(store::db_path(dir)));
    }
    config::load(Sources::from_cli(cli))
        .map(|settings| settings.ledger.backend)
        .map_err(|err| format!("cannot load the configuration to find the database ({err}); pass --data-dir"))
}

fn read(ledger: &LedgerBackend, query: UsageQuery) -> Result<UsageReport, String> {
    let path = match ledger {
        LedgerBackend::Sqlite(path) => path,
        LedgerBackend::Postgres(url) => {
            return UsageReport::read_ledger(ledger, query).map_err(|err| format!("cannot read {url}: {err}"));
        }
    };
    // Unlike the route, which answers an empty report, a missing database
    // here most likely means the wrong data dir.
    if !path.exists() {
        return Err(format!(
            "no usage database at {}: the server has written none there; pass the server's --data-dir",
            path.display()
        ));
    }
    UsageReport::read(path, query).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

/// The report as a plain-text table: a heading with the window, a column
/// per grouping (`(none)` where the ledger has none), the totals, then a
/// total line.
pub fn table(report: &UsageReport) -> String {
    let groups = &report.query.group_by;
    // Without groupings, a blank column still holds the total line's label.
    let label_columns = groups.len().max(1);
    let mut header: Vec<String> = groups.iter().map(|g| g.name().to_owned()).collect();
    header.resize(label_columns, String::new());
    header.extend(NUMBER_COLUMNS.iter().map(|&c| c.to_owned()));
    let mut lines = vec![header];
    for row in &report.rows {
        let mut line: Vec<String> =
            row.groups.iter().map(|g| g.clone().unwrap_or_else(|| "(none)".to_owned())).collect();
        line.resize(label_columns, String::new());
        line.extend(numbers(&row.totals));
        lines.push(line);
    }
    let mut total = vec!["total".to_owned()];
    total.resize(label_columns, String::new());
    total.extend(numbers(&report.total));
    lines.push(total);

    let widths: Vec<usize> =
        (0..lines[0].len()).map(|i| lines.iter().map(|line| line[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = format!("usage from {} to {}\n", rfc3339(report.query.start_ms), rfc3339(report.query.end_ms));
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(i, (cell, &width))| {
                    if i < label_columns { format!("{cell:<width$}") } else { format!("{cell:>width$}") }
                },
            )
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

const NUMBER_COLUMNS: [&str; 7] =
    ["requests", "errors", "tokens_in", "tokens_out", "tokens_cached", "cost_usd", "unpriced"];

fn numbers(t: &Totals) -> Vec<String> {
    let cost = t.cost_usd.map_or_else(|| "-".to_owned(), |usd| format!("{usd:.4}"));
    [t.requests, t.errors, t.tokens_in, t.tokens_out, t.tokens_cached]
        .iter()
        .map(u64::to_string)
        .chain([cost, t.unpriced_requests.to_string()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::report::UsageRow;

    const NOW: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

    fn args(since: Option<&str>, until: Option<&str>, by: Option<&str>) -> UsageArgs {
        UsageArgs {
            since: since.map(str::to_owned),
            until: until.map(str::to_owned),
            by: by.map(str::to_owned),
            json: false,
        }
    }

    #[test]
    fn since_and_until_take_durations_dates_and_times() {
        let q = query(&args(Some("24h"), Some("30m"), Some("model,day")), NOW).unwrap();
        assert_eq!((q.start_ms, q.end_ms), (NOW - 86_400_000, NOW - 1_800_000));
        assert_eq!(q.group_by, [GroupBy::Model, GroupBy::Day]);
        let q = query(&args(Some("2026-11-01"), Some("2026-11-30"), None), NOW).unwrap();
        assert_eq!((q.start_ms, q.end_ms), (NOW - 30 * 86_400_000, NOW), "the until date counts its day");
        let q = query(&args(None, None, None), NOW).unwrap();
        assert_eq!((q.start_ms, q.end_ms, q.group_by), (NOW - 7 * 86_400_000, NOW, DEFAULT_GROUP_BY.to_vec()));
        assert_eq!(query(&args(Some("2w"), None, None), NOW).unwrap().start_ms, NOW - 14 * 86_400_000);
        for (bad, flag) in [(args(Some("7x"), None, None), "--since"), (args(None, Some("d"), None), "--until")] {
            let err = query(&bad, NOW).unwrap_err();
            assert!(err.starts_with(&format!("invalid {flag}: `")), "{err}");
        }
        assert!(query(&args(Some("1d"), Some("2d"), None), NOW).unwrap_err().contains("is after the end"));
        assert!(query(&args(None, None, Some("client,team")), NOW).unwrap_err().contains("valid groupings"));
    }

    #[test]
    fn the_table_aligns_its_columns_and_ends_with_the_total() {
        let query = UsageQuery { start_ms: NOW - 86_400_000, end_ms: NOW, group_by: vec![GroupBy::Client] };
        let row = |client: Option<&str>, requests, cost_usd| UsageRow {
            groups: vec![client.map(str::to_owned)],
            totals: Totals { requests, tokens_in: requests * 1000, cost_usd, ..Totals::default() },
        };
        let report = UsageReport::new(query, vec![row(None, 2, None), row(Some("ci-bot"), 12, Some(0.123456))]);
        let expected = "\
usage from 2026-11-30T00:00:00Z to 2026-12-01T00:00:00Z
client  requests  errors  tokens_in  tokens_out  tokens_cached  cost_usd  unpriced
(none)         2       0       2000           0              0         -         0
ci-bot        12       0      12000           0              0    0.1235         0
total         14       0      14000           0              0    0.1235         0
";
        assert_eq!(table(&report), expected);
        let ungrouped = UsageReport::new(UsageQuery { group_by: vec![], ..report.query.clone() }, vec![]);
        let lines: Vec<_> = table(&ungrouped).lines().skip(1).map(str::to_owned).collect();
        assert_eq!(
            lines,
            [
                "       requests  errors  tokens_in  tokens_out  tokens_cached  cost_usd  unpriced",
                "total         0       0          0           0              0         -         0"
            ]
        );
    }
}
