//! The completion line for a writer of the program's own.
//!
//! By default the `request finished` event goes through `tracing`, and a
//! subscriber such as `tracing-subscriber`'s fmt layer formats it. A proxy
//! writes that line for every request, and a general-purpose formatter
//! spends more on it than the proxy spends on the request's routing: an
//! [`AccessLog`] ([`RequestLogLayer::with_access_log`](super::RequestLogLayer::with_access_log))
//! gets the same fields, typed, to write as it likes. The level filter of
//! the `tracing` subscriber still decides whether a line is written.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use keyrelay_layers::log::{AccessLog, Completion};
//!
//! #[derive(Default)]
//! struct Lines(Mutex<Vec<String>>);
//!
//! impl AccessLog for Lines {
//!     fn write(&self, line: &Completion<'_>) {
//!         let status = line.status.map_or("-".to_owned(), |s| s.to_string());
//!         self.0.lock().unwrap().push(format!("{} {} {} {status}", line.id, line.method, line.path));
//!     }
//! }
//!
//! let lines = Arc::new(Lines::default());
//! let _layer = keyrelay_layers::log::RequestLogLayer::new().with_access_log(lines.clone());
//! ```

use std::fmt;

use http::Method;
use tracing::Level;

use crate::{record::AttemptRecord, usage::Usage};

/// Writes completion lines; called on the request path, so it must not
/// block for long (a write to stderr, as a `tracing` subscriber does).
pub trait AccessLog: Send + Sync + 'static {
    /// Writes one finished request.
    fn write(&self, line: &Completion<'_>);
}

/// One finished request: the fields of the `request finished` event, and
/// the request span's.
#[derive(Debug)]
#[non_exhaustive]
pub struct Completion<'a> {
    /// `INFO`, or `DEBUG` for a [`Quiet`](super::Quiet) response.
    pub level: Level,
    /// The request id (also in the response's `x-request-id`).
    pub id: &'a str,
    /// The request's method.
    pub method: &'a Method,
    /// The request's path, without the query string.
    pub path: &'a str,
    /// `None` when the client left before the response headers.
    pub status: Option<u16>,
    /// The provider, once Parse knew it.
    pub provider: Option<&'a str>,
    /// The model as the upstream knows it.
    pub model: Option<&'a str>,
    /// Each upstream attempt, in order; the last one's key answered.
    pub attempts: &'a [AttemptRecord],
    /// The answer's tokens, once counted.
    pub tokens: Option<Usage>,
    /// The error code of an error response.
    pub code: Option<&'static str>,
    /// `completed`, `errored` or `cancelled`.
    pub outcome: &'static str,
    /// From arrival to the response headers.
    pub headers_after_ms: Option<u64>,
    /// From arrival to the end.
    pub duration_ms: u64,
}

impl<'a> Completion<'a> {
    /// A line with the request's identity and nothing learned yet
    /// (`cancelled`, no status): for access logs' own tests.
    pub fn new(level: Level, id: &'a str, method: &'a Method, path: &'a str) -> Self {
        Self {
            level,
            id,
            method,
            path,
            status: None,
            provider: None,
            model: None,
            attempts: &[],
            tokens: None,
            code: None,
            outcome: "cancelled",
            headers_after_ms: None,
            duration_ms: 0,
        }
    }

    /// The key of the last attempt: the one that answered.
    pub fn key(&self) -> Option<&str> {
        self.attempts.last().map(|a| a.key.as_str())
    }
}

/// The attempts trail as the completion line shows it, quoted:
/// `"openai:1a2b3c4d rate_limit 120ms, openai:5e6f7a8b success 310ms"`.
/// Key ids and outcomes hold no quote or backslash, so nothing needs
/// escaping.
#[derive(Clone, Copy)]
pub struct AttemptsTrail<'a>(pub &'a [AttemptRecord]);

impl fmt::Debug for AttemptsTrail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {} {}ms", a.key, a.outcome, a.ms)?;
        }
        f.write_str("\"")
    }
}
