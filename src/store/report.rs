//! Usage reports from the ledger: totals of requests, errors, tokens and
//! cost over a time window, grouped by any of client, provider, model, key
//! and UTC day. One SQL `GROUP BY` per report; the grouped columns come
//! from [`GroupBy`], never from the caller's text, and the window is bound.
//!
//! ```
//! use keyrelay::store::{self, report::{GroupBy, Totals, UsageQuery, report}};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let conn = store::open(&store::db_path(dir.path())).unwrap();
//! conn.execute(
//!     "INSERT INTO ledger (unix_ms, request_id, client, route, provider, model, status, outcome, tokens_in, cost_usd)
//!      VALUES (1000, 'r1', 'ci', 'chat/completions', 'openai', 'gpt-4o-mini', 200, 'completed', 12, 0.5)",
//!     [],
//! ).unwrap();
//! let query = UsageQuery { start_ms: 0, end_ms: 2000, group_by: GroupBy::parse_list("client,model").unwrap() };
//! let rows = report(&conn, &query).unwrap();
//! assert_eq!(rows[0].groups, [Some("ci".to_owned()), Some("gpt-4o-mini".to_owned())]);
//! assert_eq!((rows[0].totals.requests, rows[0].totals.tokens_in), (1, 12));
//! assert_eq!(Totals::sum(&rows).cost_usd, Some(0.5));
//! ```

use std::{fmt, str::FromStr};

use rusqlite::{Connection, Row, params};

/// What a report's rows are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// The client's name (null: refused before the client was known).
    Client,
    /// The provider asked.
    Provider,
    /// The model as the provider knows it.
    Model,
    /// The upstream key's id (a fingerprint).
    Key,
    /// The UTC date of the request's arrival, `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    /// Every grouping, in the order the docs list them.
    pub const ALL: [Self; 5] = [Self::Client, Self::Provider, Self::Model, Self::Key, Self::Day];

    /// The name the query string, the CLI and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Provider => "provider",
            Self::Model => "model",
            Self::Key => "key",
            Self::Day => "day",
        }
    }

    /// The SQL expression grouped on: a fixed string, so that no text from a
    /// client ever reaches the statement.
    fn sql(self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            (Self::Client, _) => "client",
            (Self::Provider, _) => "provider",
            (Self::Model, _) => "model",
            (Self::Key, _) => "key_id",
            (Self::Day, Dialect::Sqlite) => "date(unix_ms / 1000, 'unixepoch')",
            (Self::Day, Dialect::Postgres) => {
                "to_char(to_timestamp(unix_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
        }
    }

    /// Parses a comma-separated list (`client,model`); blanks around names
    /// are ignored, a name given twice counts once, an empty list groups
    /// nothing (one row of totals).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, UnknownGroup> {
        let mut groups = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let group = name.parse()?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        Ok(groups)
    }
}

impl FromStr for GroupBy {
    type Err = UnknownGroup;

    fn from_str(name: &str) -> Result<Self, UnknownGroup> {
        Self::ALL.into_iter().find(|g| g.name() == name).ok_or_else(|| UnknownGroup(name.to_owned()))
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A grouping name that is not one of [`GroupBy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownGroup(pub String);

impl fmt::Display for UnknownGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let valid: Vec<_> = GroupBy::ALL.iter().map(|g| g.name()).collect();
        // The name is the caller's text: shown bounded.
        let shown: String = self.0.chars().take(40).collect();
        write!(f, "unknown grouping `{shown}`; valid groupings: {}", valid.join(", "))
    }
}

impl std::error::Error for UnknownGroup {}

/// One report's window and groupings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    /// First millisecond counted (inclusive), since the Unix epoch.
    pub start_ms: i64,
    /// First millisecond not counted (exclusive).
    pub end_ms: i64,
    /// The groupings, in the order of the row's columns.
    pub group_by: Vec<GroupBy>,
}

/// What a group of ledger rows adds up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    /// Requests whose client got an error status, or no status at all, or
    /// that did not complete (errored, cancelled).
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens_cached: u64,
    /// The sum of the known costs; `None` when no request of the group had
    /// one (not zero: unknown).
    pub cost_usd: Option<f64>,
    /// Requests with usage of a model that has no price.
    pub unpriced_requests: u64,
}

impl Totals {
    /// The grand total of `rows`.
    pub fn sum(rows: &[UsageRow]) -> Self {
        rows.iter().fold(Self::default(), |mut total, row| {
            total.add(&row.totals);
            total
        })
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.tokens_cached += other.tokens_cached;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.unpriced_requests += other.unpriced_requests;
    }
}

/// One group: its values, in the order of [`UsageQuery::group_by`] (`None`
/// where the ledger has null, e.g. the client of a refused request), and
/// its totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRow {
    pub groups: Vec<Option<String>>,
    pub totals: Totals,
}

/// The SQL a report's statement is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The aggregates each row carries, after its group columns.
const AGGREGATES: &str = "COUNT(*), \
     SUM(CASE WHEN status IS NULL OR status >= 400 OR outcome != 'completed' THEN 1 ELSE 0 END), \
     SUM(tokens_in), SUM(tokens_out), SUM(tokens_cached), SUM(cost_usd), SUM(unpriced != 0)";

/// The same on Postgres, where a sum of BIGINT is NUMERIC (cast back: no
/// real total comes near i64's range) and `unpriced` is a boolean.
const PG_AGGREGATES: &str = "COUNT(*), \
     COUNT(*) FILTER (WHERE status IS NULL OR status >= 400 OR outcome <> 'completed'), \
     SUM(tokens_in)::BIGINT, SUM(tokens_out)::BIGINT, SUM(tokens_cached)::BIGINT, SUM(cost_usd), \
     COUNT(*) FILTER (WHERE unpriced)";

/// The ledger's totals in `query`'s window, one row per group, ordered by
/// the groups (nulls first). Without groupings, one row when the window
/// holds any request, none otherwise.
pub fn report(conn: &Connection, query: &UsageQuery) -> rusqlite::Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare(&statement(&query.group_by, Dialect::Sqlite))?;
    let width = query.group_by.len();
    let rows = stmt.query_map(params![query.start_ms, query.end_ms], |row| read_row(row, width))?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        // An aggregate without GROUP BY answers one row even over nothing.
        if row.totals.requests > 0 {
            out.push(row);
        }
    }
    Ok(out)
}

/// The report's statement: the window is bound (`?1`/`$1`, `?2`/`$2`),
/// the groupings are [`GroupBy`]'s fixed expressions.
pub(crate) fn statement(group_by: &[GroupBy], dialect: Dialect) -> String {
    let columns: Vec<&str> = group_by.iter().map(|g| g.sql(dialect)).collect();
    let mut sql = String::from("SELECT ");
    for column in &columns {
        sql.push_str(column);
        sql.push_str(", ");
    }
    sql.push_str(match dialect {
        Dialect::Sqlite => AGGREGATES,
        Dialect::Postgres => PG_AGGREGATES,
    });
    sql.push_str(match dialect {
        Dialect::Sqlite => " FROM ledger WHERE unix_ms >= ?1 AND unix_ms < ?2",
        Dialect::Postgres => " FROM ledger WHERE unix_ms >= $1 AND unix_ms < $2",
    });
    if !columns.is_empty() {
        let list = columns.join(", ");
        sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
    }
    sql
}

fn read_row(row: &Row<'_>, width: usize) -> rusqlite::Result<UsageRow> {
    let groups = (0..width).map(|i| row.get::<_, Option<String>>(i)).collect::<rusqlite::Result<_>>()?;
    // SUM over no rows is null: only the ungrouped query sees that. Counts
    // are never negative; SQLite hands them as i64.
    let count = |i: usize| {
        row.get::<_, Option<i64>>(width + i).map(|n| n.and_then(|n| u64::try_from(n).ok()).unwrap_or_default())
    };
    Ok(UsageRow {
        groups,
        totals: Totals {
            requests: count(0)?,
            errors: count(1)?,
            tokens_in: count(2)?,
            tokens_out: count(3)?,
            tokens_cached: count(4)?,
            cost_usd: row.get(width + 5)?,
            unpriced_requests: count(6)?,
        },
    })
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
