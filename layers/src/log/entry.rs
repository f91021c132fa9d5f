//! The request log's entries: what a [`RequestLogSink`] gets for each
//! finished request, and the bounded copies of both bodies it is built from.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, Bytes};
use http::HeaderMap;

use super::Finish;
use crate::record::AttemptRecord;

/// How much of each body a [`RequestLogEntry`] keeps.
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// Where finished requests go, one [`RequestLogEntry`] each. Called on the
/// request path: it must not block (queue, or drop).
pub trait RequestLogSink: Send + Sync + 'static {
    /// Takes one finished request; must return at once.
    fn record(&self, entry: RequestLogEntry);
}

/// One finished request, for a [`RequestLogSink`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RequestLogEntry {
    /// The request id (also in the response's `x-request-id`).
    pub id: String,
    /// Arrival, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The request's method.
    pub method: String,
    /// The request's path (without the query string).
    pub path: String,
    /// As received, credential values replaced by `[redacted]`.
    pub request_headers: Vec<(String, String)>,
    /// The body as the proxy read it, at most [`CAPTURE_LIMIT`] bytes.
    pub request_body: Bytes,
    /// Whether the request body was longer than what is kept.
    pub request_body_truncated: bool,
    /// `None` when the client left before the response headers.
    pub status: Option<u16>,
    /// As sent to the client.
    pub response_headers: Vec<(String, String)>,
    /// The body as sent to the client, at most [`CAPTURE_LIMIT`] bytes.
    pub response_body: Bytes,
    /// Whether the response body was longer than what is kept.
    pub response_body_truncated: bool,
    /// The response was a server-sent event stream.
    pub event_stream: bool,
    /// `completed`, `errored` or `cancelled`.
    pub outcome: &'static str,
    /// From arrival to the response headers; `None` when there were none.
    pub headers_after_ms: Option<u64>,
    /// From arrival to the end of the response body (or the client leaving).
    pub duration_ms: u64,
    /// The provider, once Parse knew it.
    pub provider: Option<String>,
    /// The model's metrics label: the model when configured or listed by
    /// the provider, else `other`.
    pub model: Option<String>,
    /// Each upstream attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    /// `(prompt, completion)` tokens when the answer reported them.
    pub tokens: Option<(u64, u64)>,
    /// The provider's own answer bytes (at most [`CAPTURE_LIMIT`], and
    /// whether they were cut) where they differ from what the client got.
    pub upstream_body: Option<(Bytes, bool)>,
}

/// Header pairs with credential values redacted.
pub(super) fn redacted(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if value.is_sensitive() || crate::credentials::is_credential(name) {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// A bounded copy of a body, shared between the body and its [`Record`].
#[derive(Clone, Debug, Default)]
pub(super) struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Debug, Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    pub(super) fn push(&self, data: &impl Buf) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk = data.chunk();
        // A non-contiguous buffer only shows its first part without copying.
        let mut truncated = chunk.len() < data.remaining();
        let room = CAPTURE_LIMIT.saturating_sub(buf.bytes.len());
        if chunk.len() > room {
            truncated = true;
        }
        buf.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        buf.truncated |= truncated;
    }

    fn take(&self) -> (Bytes, bool) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (Bytes::from(std::mem::take(&mut buf.bytes)), buf.truncated)
    }
}

/// What a [`RequestLogEntry`] is built from, kept only with a sink.
pub(super) struct Record {
    pub(super) sink: Arc<dyn RequestLogSink>,
    pub(super) id: String,
    pub(super) started_unix_ms: u64,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) request_headers: Vec<(String, String)>,
    pub(super) request_body: Capture,
    pub(super) response_headers: Vec<(String, String)>,
    pub(super) response_body: Capture,
    pub(super) event_stream: bool,
}

impl Record {
    pub(super) fn send(self, finish: &Finish, outcome: &'static str) {
        let (request_body, request_body_truncated) = self.request_body.take();
        let (response_body, response_body_truncated) = self.response_body.take();
        let route = finish.labels.route();
        let route = route.as_ref();
        // Kept only where the provider's bytes differ from the client's
        // (a translated dialect, a dropped usage chunk, a re-framed stream).
        let upstream_body =
            finish.labels.upstream().filter(|(upstream, _)| !upstream.is_empty() && *upstream != response_body);
        self.sink.record(RequestLogEntry {
            id: self.id,
            started_unix_ms: self.started_unix_ms,
            method: self.method,
            path: self.path,
            request_headers: self.request_headers,
            request_body,
            request_body_truncated,
            status: finish.status,
            response_headers: self.response_headers,
            response_body,
            response_body_truncated,
            event_stream: self.event_stream,
            outcome,
            headers_after_ms: finish.headers_after_ms,
            duration_ms: finish.start.elapsed().as_millis() as u64,
            provider: route.map(|route| route.provider.as_str().to_owned()),
            model: route.and(finish.labels.model_label()).map(|label| label.to_string()),
            attempts: finish.labels.attempts(),
            tokens: finish.labels.usage().map(|usage| (usage.prompt_tokens, usage.completion_tokens)),
            upstream_body,
        });
    }
}
