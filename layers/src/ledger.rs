//! The usage ledger's rows: one per finished request on a proxied route,
//! handed by [`RequestLog`](crate::log::RequestLog) to a [`LedgerSink`]
//! (the binary's writes them to a database, in batches, off the request
//! path).
//!
//! A row holds identities and numbers only: the client's name, the key's
//! id, never a secret, a prompt or an answer.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use keyrelay_layers::ledger::{LedgerRow, LedgerSink};
//!
//! #[derive(Default)]
//! struct Rows(Mutex<Vec<LedgerRow>>);
//!
//! impl LedgerSink for Rows {
//!     fn record(&self, row: LedgerRow) {
//!         self.0.lock().unwrap().push(row); // a real sink queues and returns
//!     }
//! }
//!
//! let rows = Arc::new(Rows::default());
//! let _layer = keyrelay_layers::log::RequestLogLayer::new().with_ledger(rows.clone());
//! ```

/// Where ledger rows go. Called on the request path when a request ends:
/// it must return at once (queue, or drop and count the drop).
pub trait LedgerSink: Send + Sync + 'static {
    /// Takes one finished request.
    fn record(&self, row: LedgerRow);
}

/// The client name of requests made with the proxy key (or with no key,
/// where none is required).
pub const DEFAULT_CLIENT: &str = "default";

/// [`DEFAULT_CLIENT`], shared: written on every proxy-key request's
/// record without an allocation.
pub fn default_client() -> std::sync::Arc<str> {
    static NAME: std::sync::LazyLock<std::sync::Arc<str>> = std::sync::LazyLock::new(|| DEFAULT_CLIENT.into());
    NAME.clone()
}

/// One finished request.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LedgerRow {
    /// Arrival, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The request id (also in the response's `x-request-id`).
    pub request_id: String,
    /// The client's name ([`DEFAULT_CLIENT`] for the proxy key); `None`
    /// when the request was refused before its key was known.
    pub client: Option<String>,
    /// The inbound route: `chat/completions`, `embeddings`, `messages`,
    /// `responses`, `generateContent`...
    pub route: &'static str,
    /// The provider that served (or was asked), once Parse knew it.
    pub provider: Option<String>,
    /// The model as the provider knows it.
    pub model: Option<String>,
    /// The id of the key that answered last (a fingerprint).
    pub key: Option<String>,
    /// The status the client got; `None` when it left before the headers.
    pub status: Option<u16>,
    /// `completed`, `errored` or `cancelled`.
    pub outcome: &'static str,
    /// The error code of an error response (`budget_exceeded`...).
    pub error_code: Option<&'static str>,
    /// How many upstream attempts were made.
    pub attempts: u32,
    /// Prompt tokens (cached ones included).
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Prompt tokens read from the provider's cache.
    pub tokens_cached: u64,
    /// What the request cost in USD; `None` when its model has no price
    /// or no usage was reported.
    pub cost_usd: Option<f64>,
    /// Whether the answer reported usage of a model with no price.
    pub unpriced: bool,
    /// From arrival to the response headers.
    pub ttfb_ms: Option<u64>,
    /// From arrival to the end of the response body.
    pub duration_ms: u64,
}
