//! [`LeasedError`]: an attempt's error with the key that made it. Not a row
//! of the table: it answers as its cause does.

use std::{error::Error, fmt};

use crate::BoxError;

/// An error of an attempt made with a known key, so that retries can blame
/// it. Displays as its cause; the status is its cause's.
#[derive(Debug)]
pub struct LeasedError {
    lease: crate::pool::KeyLease,
    source: BoxError,
}

impl LeasedError {
    /// `source` happened on an attempt made with `lease`'s key.
    pub fn new(lease: crate::pool::KeyLease, source: BoxError) -> Self {
        Self { lease, source }
    }
    /// The key the attempt used.
    pub fn lease(&self) -> &crate::pool::KeyLease {
        &self.lease
    }
    /// The attempt's own error.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for LeasedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl Error for LeasedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
