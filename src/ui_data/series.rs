//! `GET /v1/ui/series`: the ledger in time buckets, per provider, key and
//! client, with errors by code.

use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use super::ReadError;
use crate::{config::ledger::LedgerBackend, store};

/// The span a series covers, and its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last hour, by the minute.
    Hour,
    /// The last day, by the quarter hour.
    Day,
}

impl Window {
    fn name(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
        }
    }

    fn span_ms(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    fn step_ms(self) -> i64 {
        match self {
            Self::Hour => 60_000,
            Self::Day => 900_000,
        }
    }
}

/// The answer: only buckets with requests are listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub window: &'static str,
    pub step_secs: i64,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub buckets: Vec<Bucket>,
}

/// One (time, provider, key, client)'s requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's start.
    pub t_unix_ms: i64,
    /// `None` for requests refused before any provider was chosen.
    pub provider: Option<String>,
    /// `None` for requests that never leased a key.
    pub key: Option<String>,
    pub client: String,
    pub requests: u64,
    /// Failed requests by the proxy's error code; a provider's error passed
    /// through by its class (`rate_limited`, `upstream_error`,
    /// `client_error`), a stream that broke or was cut by its outcome.
    pub errors: BTreeMap<String, u64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `None` when no request of the bucket had a price.
    pub cost_usd: Option<f64>,
}

/// One row of the grouped query.
struct Group {
    t: i64,
    provider: Option<String>,
    key: Option<String>,
    client: String,
    failure: Option<String>,
    requests: i64,
    tokens_in: i64,
    tokens_out: i64,
    cost: Option<f64>,
}

const SQLITE: &str = "SELECT (unix_ms / ?3) * ?3, provider, key_id, COALESCE(client, 'default'), \
     CASE WHEN status IS NULL OR status >= 400 OR outcome != 'completed' THEN COALESCE(error_code, CASE WHEN status = 429 THEN 'rate_limited' WHEN status >= 500 THEN 'upstream_error' \
     WHEN status >= 400 THEN 'client_error' ELSE outcome END) END, \
     COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost_usd) \
     FROM ledger WHERE unix_ms >= ?1 AND unix_ms < ?2 GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4";

const POSTGRES: &str = "SELECT (unix_ms / $3) * $3, provider, key_id, COALESCE(client, 'default'), \
     CASE WHEN status IS NULL OR status >= 400 OR outcome <> 'completed' THEN COALESCE(error_code, CASE WHEN status = 429 THEN 'rate_limited' WHEN status >= 500 THEN 'upstream_error' \
     WHEN status >= 400 THEN 'client_error' ELSE outcome END) END, \
     COUNT(*), SUM(tokens_in)::BIGINT, SUM(tokens_out)::BIGINT, SUM(cost_usd) \
     FROM ledger WHERE unix_ms >= $1 AND unix_ms < $2 GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4";

impl Series {
    /// The window that ends at `now_ms` (its last bucket partly filled).
    pub fn read(ledger: &LedgerBackend, window: Window, now_ms: i64) -> Result<Self, ReadError> {
        let step = window.step_ms();
        let end = (now_ms / step + 1) * step;
        let start = end - window.span_ms();
        let groups = match ledger {
            LedgerBackend::Sqlite(path) => read_sqlite(path, start, end, step)?,
            LedgerBackend::Postgres(url) => {
                let mut client = store::pg::connect(url)?;
                let rows = client.query(POSTGRES, &[&start, &end, &step])?;
                rows.iter()
                    .map(|row| Group {
                        t: row.get(0),
                        provider: row.get(1),
                        key: row.get(2),
                        client: row.get(3),
                        failure: row.get(4),
                        requests: row.get(5),
                        tokens_in: row.get::<_, Option<i64>>(6).unwrap_or_default(),
                        tokens_out: row.get::<_, Option<i64>>(7).unwrap_or_default(),
                        cost: row.get(8),
                    })
                    .collect()
            }
        };
        Ok(Self {
            window: window.name(),
            step_secs: step / 1000,
            start_unix_ms: start,
            end_unix_ms: end,
            buckets: fold(groups),
        })
    }
}

fn read_sqlite(path: &Path, start: i64, end: i64, step: i64) -> Result<Vec<Group>, ReadError> {
    let Some(conn) = store::open_ledger_for_reading(path)? else { return Ok(Vec::new()) };
    let mut stmt = conn.prepare(SQLITE)?;
    let rows = stmt.query_map(rusqlite::params![start, end, step], |row| {
        Ok(Group {
            t: row.get(0)?,
            provider: row.get(1)?,
            key: row.get(2)?,
            client: row.get(3)?,
            failure: row.get(4)?,
            requests: row.get(5)?,
            tokens_in: row.get::<_, Option<i64>>(6)?.unwrap_or_default(),
            tokens_out: row.get::<_, Option<i64>>(7)?.unwrap_or_default(),
            cost: row.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Groups in (time, provider, key, client) order, split by failure, as
/// one bucket each.
fn fold(groups: Vec<Group>) -> Vec<Bucket> {
    let count = |n: i64| u64::try_from(n).unwrap_or_default();
    let mut buckets: Vec<Bucket> = Vec::new();
    for group in groups {
        let same = buckets.last().is_some_and(|last| {
            last.t_unix_ms == group.t
                && last.provider == group.provider
                && last.key == group.key
                && last.client == group.client
        });
        if !same {
            buckets.push(Bucket {
                t_unix_ms: group.t,
                provider: group.provider,
                key: group.key,
                client: group.client,
                requests: 0,
                errors: BTreeMap::new(),
                tokens_in: 0,
                tokens_out: 0,
                cost_usd: None,
            });
        }
        let bucket = buckets.last_mut().expect("pushed above");
        bucket.requests += count(group.requests);
        if let Some(failure) = group.failure {
            *bucket.errors.entry(failure).or_default() += count(group.requests);
        }
        bucket.tokens_in += count(group.tokens_in);
        bucket.tokens_out += count(group.tokens_out);
        if let Some(cost) = group.cost {
            // A billionth of a dollar is plenty (sums grow float noise).
            let sum = bucket.cost_usd.unwrap_or_default() + cost;
            bucket.cost_usd = Some((sum * 1e9).round() / 1e9);
        }
    }
    buckets
}
