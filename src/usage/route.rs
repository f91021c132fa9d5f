//! `GET /v1/usage?start=...&end=...&group_by=...` (admin key): the
//! ledger's totals in a window, grouped. Reads the database read-only on a
//! blocking thread, one connection per request, while the proxy writes.

use std::{convert::Infallible, sync::Arc};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use keyrelay_layers::{ProxyBody, error::ErrorReply, extensions::percent_decode, respond::reply_response};

use super::{DEFAULT_GROUP_BY, Edge, UsageReport, bounded, parse_time, window};
use crate::{
    config::ledger::LedgerBackend,
    store::report::{GroupBy, UsageQuery},
};

/// The query string's parameters.
const PARAMS: [&str; 3] = ["start", "end", "group_by"];

/// A parameter the report cannot take: answered 400 `invalid_query`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidQuery {
    /// The parameter at fault (as the client sent it when unknown).
    pub param: String,
    pub reason: String,
}

impl InvalidQuery {
    fn new(param: &str, reason: impl Into<String>) -> Self {
        Self { param: bounded(param), reason: reason.into() }
    }
}

/// Reads the report's window and groupings from a query string (absent:
/// the last week up to `now_ms`, by client, provider and model).
pub fn parse_query(query: Option<&str>, now_ms: i64) -> Result<UsageQuery, InvalidQuery> {
    let mut values: [Option<String>; 3] = Default::default();
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).unwrap_or_else(|| name.to_owned());
        let Some(slot) = PARAMS.iter().position(|&known| known == name) else {
            return Err(InvalidQuery::new(&name, format!("unknown parameter; known: {}", PARAMS.join(", "))));
        };
        if values[slot].is_some() {
            return Err(InvalidQuery::new(&name, "given more than once"));
        }
        // `+` stays a plus: it is an RFC 3339 offset's sign far more often
        // than a form-encoded space, which no parameter here can hold.
        let value = percent_decode(value).ok_or_else(|| InvalidQuery::new(&name, "broken percent-escape"))?;
        values[slot] = Some(value);
    }
    let [start, end, group_by] = values;
    let time = |param: &str, value: Option<String>, edge| {
        value.map(|text| parse_time(&text, edge).map_err(|reason| InvalidQuery::new(param, reason))).transpose()
    };
    let start_ms = time("start", start, Edge::Start)?;
    let end_ms = time("end", end, Edge::End)?;
    let (start_ms, end_ms) = window(start_ms, end_ms, now_ms).map_err(|reason| InvalidQuery::new("start", reason))?;
    let group_by = match group_by {
        Some(list) => GroupBy::parse_list(&list).map_err(|err| InvalidQuery::new("group_by", err.to_string()))?,
        None => DEFAULT_GROUP_BY.to_vec(),
    };
    Ok(UsageQuery { start_ms, end_ms, group_by })
}

/// Answers `GET /v1/usage` from the ledger's database `db`.
pub async fn answer(db: Arc<LedgerBackend>, query: Option<String>) -> Result<Response<ProxyBody>, Infallible> {
    let query = match parse_query(query.as_deref(), super::now_ms()) {
        Ok(query) => query,
        Err(InvalidQuery { param, reason }) => {
            let message = format!("invalid query parameter `{param}`: {reason}");
            return Ok(error(ErrorReply::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_query",
                message,
            )));
        }
    };
    let ledger = db.clone();
    let read = tokio::task::spawn_blocking(move || UsageReport::read_ledger(&ledger, query)).await;
    Ok(match read {
        Ok(Ok(report)) => crate::status::json(StatusCode::OK, &report),
        Ok(Err(err)) => {
            tracing::warn!(ledger = %db.describe(), error = %err, "cannot read the usage ledger");
            unreadable()
        }
        Err(err) => {
            tracing::warn!(error = %err, "the usage report's thread failed");
            unreadable()
        }
    })
}

fn unreadable() -> Response<ProxyBody> {
    let message = "cannot read the usage database; see the proxy's logs";
    error(ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message))
}

fn error(reply: ErrorReply) -> Response<ProxyBody> {
    reply_response(reply).map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_083_200_000 + 12 * 3_600_000; // 2026-12-01T12:00:00Z
    const DAY: i64 = 86_400_000;

    #[test]
    fn defaults_are_the_last_week_by_client_provider_and_model() {
        for query in [None, Some(""), Some("&")] {
            let parsed = parse_query(query, NOW).unwrap();
            assert_eq!((parsed.start_ms, parsed.end_ms), (NOW - 7 * DAY, NOW), "{query:?}");
            assert_eq!(parsed.group_by, DEFAULT_GROUP_BY);
        }
        let only_end = parse_query(Some("end=2026-11-01"), NOW).unwrap();
        assert_eq!(only_end.end_ms - only_end.start_ms, 7 * DAY, "a week before the end");
        assert!(parse_query(Some("group_by="), NOW).unwrap().group_by.is_empty(), "no grouping: one total");
    }

    #[test]
    fn times_are_rfc3339_or_dates_escaped_or_not() {
        let q = "start=2026-11-30T23:00:00%2B01:00&end=2026-12-01&group_by=day%2Ckey";
        let parsed = parse_query(Some(q), NOW).unwrap();
        assert_eq!((parsed.start_ms, parsed.end_ms), (NOW - 14 * 3_600_000, NOW + 12 * 3_600_000));
        assert_eq!(parsed.group_by, [GroupBy::Day, GroupBy::Key]);
        let plus = parse_query(Some("start=2026-11-30T23:00:00+01:00"), NOW).unwrap();
        assert_eq!(plus.start_ms, NOW - 14 * 3_600_000, "a raw + is the offset's sign");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            ("start=yesterday", "start", "`yesterday` is neither an RFC 3339 time"),
            ("end=2026-13-01", "end", "nor a date"),
            ("start=2026-12-03&end=2026-12-01", "start", "is after the end (2026-12-02T00:00:00Z)"),
            ("group_by=client,user", "group_by", "unknown grouping `user`; valid groupings: client, provider"),
            ("since=7d", "since", "unknown parameter; known: start, end, group_by"),
            ("start=2026-12-01&start=2026-12-02", "start", "given more than once"),
            ("end=%ZZ", "end", "broken percent-escape"),
        ];
        for (query, param, reason) in cases {
            let err = parse_query(Some(query), NOW).unwrap_err();
            assert_eq!(err.param, param, "{query}");
            assert!(err.reason.contains(reason), "{query}: {}", err.reason);
        }
    }
}
