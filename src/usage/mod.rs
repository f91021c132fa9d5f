//! Usage reports for operators: `GET /v1/usage` ([`route`]) and
//! `keyrelay usage` ([`command`]) read the same ledger through
//! [`crate::store::report`] and answer the same JSON. This module holds
//! what both share: the window's times and the report's JSON.
//!
//! ```
//! use keyrelay::usage::{Edge, parse_time};
//!
//! // 2026-12-01T00:00:00Z, in ms since the epoch.
//! let dec_1 = 1_796_083_200_000;
//! assert_eq!(parse_time("2026-12-01", Edge::Start), Ok(dec_1));
//! assert_eq!(parse_time("2026-12-01", Edge::End), Ok(dec_1 + 86_400_000), "an end date counts its whole day");
//! assert_eq!(parse_time("2026-12-01T01:00:00+01:00", Edge::End), Ok(dec_1));
//! assert!(parse_time("yesterday", Edge::Start).is_err());
//! ```

pub mod command;
pub mod route;

use std::path::Path;

use crate::config::ledger::LedgerBackend;

use jiff::{Timestamp, civil::Date, tz::Offset};
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::store::{
    self,
    report::{GroupBy, Totals, UsageQuery, UsageRow},
};

/// The window a report covers when it names no start: a week.
pub const DEFAULT_WINDOW_MS: i64 = 7 * DAY_MS;

const DAY_MS: i64 = 86_400_000;

/// The groupings of a report that names none.
pub const DEFAULT_GROUP_BY: [GroupBy; 3] = [GroupBy::Client, GroupBy::Provider, GroupBy::Model];

/// Which end of the window a time is: a date as the end counts its whole day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Start,
    End,
}

/// Milliseconds since the epoch of an RFC 3339 time
/// (`2026-12-01T09:30:00Z`, `...+01:00`) or of a date (`2026-12-01`,
/// midnight UTC; as the [`Edge::End`], the next midnight). The error says
/// what is accepted.
pub fn parse_time(text: &str, edge: Edge) -> Result<i64, String> {
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time.as_millisecond());
    }
    let midnight = |date: Date| Offset::UTC.to_timestamp(date.at(0, 0, 0, 0)).ok();
    let date = text.parse::<Date>().ok();
    let day = match edge {
        Edge::Start => date.and_then(midnight),
        Edge::End => date.and_then(|d| d.tomorrow().ok()).and_then(midnight),
    };
    day.map(Timestamp::as_millisecond).ok_or_else(|| {
        format!("`{}` is neither an RFC 3339 time (2026-12-01T09:30:00Z) nor a date (2026-12-01, UTC)", bounded(text))
    })
}

/// The caller's text in a message, cut short.
fn bounded(text: &str) -> String {
    const LIMIT: usize = 40;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The window from optional ends: no end is `now_ms`, no start is
/// [`DEFAULT_WINDOW_MS`] before the end. A start after the end is refused.
pub fn window(start_ms: Option<i64>, end_ms: Option<i64>, now_ms: i64) -> Result<(i64, i64), String> {
    let end_ms = end_ms.unwrap_or(now_ms);
    let start_ms = start_ms.unwrap_or(end_ms.saturating_sub(DEFAULT_WINDOW_MS));
    if start_ms > end_ms {
        return Err(format!("the start ({}) is after the end ({})", rfc3339(start_ms), rfc3339(end_ms)));
    }
    Ok((start_ms, end_ms))
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// An instant as RFC 3339 in UTC (`2026-12-01T00:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// A finished report: its window and groupings, its rows and their total.
/// Serializes as `GET /v1/usage` answers.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    pub query: UsageQuery,
    pub rows: Vec<UsageRow>,
    pub total: Totals,
}

impl UsageReport {
    pub fn new(query: UsageQuery, rows: Vec<UsageRow>) -> Self {
        let total = Totals::sum(&rows);
        Self { query, rows, total }
    }

    /// Reads the report from the ledger's database (SQLite read-only, or
    /// one connection to Postgres); never on a tokio worker thread.
    pub fn read_ledger(
        ledger: &LedgerBackend,
        query: UsageQuery,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match ledger {
            LedgerBackend::Sqlite(path) => Ok(Self::read(path, query)?),
            LedgerBackend::Postgres(url) => {
                // Not migrated: the tables are missing, which is an error
                // here (the proxy migrates before it answers anything).
                let mut client = store::pg::connect(url)?;
                let rows = store::pg::report::report(&mut client, &query)?;
                Ok(Self::new(query, rows))
            }
        }
    }

    /// Reads the report from the database at `path`, read-only; a database
    /// not made yet (or not migrated yet) has no rows.
    pub fn read(path: &Path, query: UsageQuery) -> rusqlite::Result<Self> {
        let Some(conn) = store::open_ledger_for_reading(path)? else {
            return Ok(Self::new(query, Vec::new()));
        };
        let rows = store::report::report(&conn, &query)?;
        Ok(Self::new(query, rows))
    }
}

impl Serialize for UsageReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let group_by: Vec<&str> = self.query.group_by.iter().map(|g| g.name()).collect();
        let data: Vec<RowJson<'_>> =
            self.rows.iter().map(|row| RowJson { group_by: &self.query.group_by, row }).collect();
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("start", &rfc3339(self.query.start_ms))?;
        map.serialize_entry("end", &rfc3339(self.query.end_ms))?;
        map.serialize_entry("group_by", &group_by)?;
        map.serialize_entry("data", &data)?;
        map.serialize_entry("total", &TotalsJson(&self.total))?;
        map.end()
    }
}

/// A row as JSON: its groups by name, then its totals.
struct RowJson<'a> {
    group_by: &'a [GroupBy],
    row: &'a UsageRow,
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (group, value) in self.group_by.iter().zip(&self.row.groups) {
            map.serialize_entry(group.name(), value)?;
        }
        TotalsJson(&self.row.totals).entries(&mut map)?;
        map.end()
    }
}

struct TotalsJson<'a>(&'a Totals);

impl TotalsJson<'_> {
    fn entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let t = self.0;
        map.serialize_entry("requests", &t.requests)?;
        map.serialize_entry("errors", &t.errors)?;
        map.serialize_entry("tokens_in", &t.tokens_in)?;
        map.serialize_entry("tokens_out", &t.tokens_out)?;
        map.serialize_entry("tokens_cached", &t.tokens_cached)?;
        // Sums of many small floats grow digits no one paid for
        // (0.30000000000000004): a billionth of a dollar is plenty.
        map.serialize_entry("cost_usd", &t.cost_usd.map(|usd| (usd * 1e9).round() / 1e9))?;
        map.serialize_entry("unpriced_requests", &t.unpriced_requests)
    }
}

impl Serialize for TotalsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(7))?;
        self.entries(&mut map)?;
        map.end()
    }
}
