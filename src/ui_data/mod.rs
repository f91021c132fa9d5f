//! What the dashboard draws, from the usage ledger: traffic, errors by
//! code, tokens and cost per time bucket (`GET /v1/ui/series`), and the
//! last requests (`GET /v1/ui/recent`). Same auth as `/v1/keys`; read on a
//! blocking thread, one connection per request, like `/v1/usage`. Key
//! ids, client names and codes only: the ledger holds no prompt, answer or
//! secret.

mod query;
mod recent;
mod series;

use std::{convert::Infallible, sync::Arc};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use keyrelay_layers::{ProxyBody, error::ErrorReply, respond::reply_response};

pub use self::{
    recent::{Recent, RecentRow},
    series::{Bucket, Series, Window},
};
use crate::config::ledger::LedgerBackend;

/// Which of the dashboard's data a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiData {
    /// `/v1/ui/series?window=1h|24h`
    Series,
    /// `/v1/ui/recent?limit=N`
    Recent,
}

impl UiData {
    /// The data a path (after `/v1`) names.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/ui/series" => Some(Self::Series),
            "/ui/recent" => Some(Self::Recent),
            _ => None,
        }
    }
}

/// Answers one of the dashboard's data routes from the ledger.
pub async fn answer(
    ledger: Arc<LedgerBackend>,
    data: UiData,
    query: Option<String>,
) -> Result<Response<ProxyBody>, Infallible> {
    let now = crate::usage::now_ms();
    let read = match data {
        UiData::Series => match query::window(query.as_deref()) {
            Ok(window) => read(ledger.clone(), move |db| Series::read(db, window, now)).await,
            Err(reason) => return Ok(invalid(reason)),
        },
        UiData::Recent => match query::limit(query.as_deref()) {
            Ok(limit) => read(ledger.clone(), move |db| Recent::read(db, limit)).await,
            Err(reason) => return Ok(invalid(reason)),
        },
    };
    Ok(read.unwrap_or_else(|err| {
        tracing::warn!(ledger = %ledger.describe(), error = %err, "cannot read the usage ledger for the dashboard");
        let message = "cannot read the usage database; see the proxy's logs";
        error(ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message))
    }))
}

type ReadError = Box<dyn std::error::Error + Send + Sync>;

async fn read<T: serde::Serialize + Send + 'static>(
    ledger: Arc<LedgerBackend>,
    read: impl FnOnce(&LedgerBackend) -> Result<T, ReadError> + Send + 'static,
) -> Result<Response<ProxyBody>, ReadError> {
    let value = tokio::task::spawn_blocking(move || read(&ledger)).await??;
    Ok(crate::status::json(StatusCode::OK, &value))
}

fn invalid(reason: String) -> Response<ProxyBody> {
    error(ErrorReply::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_query", reason))
}

fn error(reply: ErrorReply) -> Response<ProxyBody> {
    reply_response(reply).map(|body| body.map_err(|never| match never {}).boxed_unsync())
}
