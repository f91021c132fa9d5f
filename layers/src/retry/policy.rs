//! Pure retry decisions: what to do after a failed attempt.
//!
//! [`RetryRotate`](super::RetryRotate) calls [`next`] with the failure's
//! class, how many transient failures in a row the key just had, and a random
//! jitter; the answer is one [`Next`] step.
//!
//! ```
//! use std::time::Duration;
//! use keyrelay_layers::{classify::FailureClass, retry::policy::{next, Next, RetryPolicy}};
//!
//! let policy = RetryPolicy::new(1, Duration::from_millis(100));
//! // The first transient failure: the same key after 100 ms ± 50 % (a jitter of 0.5 is the middle).
//! assert_eq!(next(&policy, FailureClass::Transient, 1, 0.5), Next::SameKey(Duration::from_millis(100)));
//! assert_eq!(next(&policy, FailureClass::Transient, 1, 0.0), Next::SameKey(Duration::from_millis(50)));
//! // The second in a row: another key, and not this one again.
//! assert_eq!(next(&policy, FailureClass::Transient, 2, 0.5), Next::Rotate { exclude: true });
//! // The pool already cooled a rate-limited key: rotate, no exclusion needed.
//! assert_eq!(next(&policy, FailureClass::RateLimit, 1, 0.5), Next::Rotate { exclude: false });
//! assert_eq!(next(&policy, FailureClass::Client, 1, 0.5), Next::Return);
//! ```

use std::time::Duration;

use crate::classify::FailureClass;

/// How hard to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries on the same key after a transient failure, before rotating.
    pub same_key_retries: u32,
    /// The first same-key backoff; it doubles, with ±50 % jitter.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { same_key_retries: 1, backoff: Duration::from_millis(100) }
    }
}

impl RetryPolicy {
    /// `same_key_retries` after a transient failure, the first after
    /// `backoff` (doubling, jittered).
    pub fn new(same_key_retries: u32, backoff: Duration) -> Self {
        Self { same_key_retries, backoff }
    }
}

/// The next step after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Return the upstream's answer to the client as it is.
    Return,
    /// Try the same key again after this pause.
    SameKey(Duration),
    /// Try another key.
    Rotate {
        /// The failed key is still eligible (nothing cooled it) and must not
        /// be chosen again for this request.
        exclude: bool,
    },
}

/// Decides the next step. `same_key_failures` counts the transient
/// failures in a row on the key that just failed, this one included;
/// `jitter` is in `[0, 1)`.
pub fn next(policy: &RetryPolicy, class: FailureClass, same_key_failures: u32, jitter: f64) -> Next {
    match class {
        FailureClass::Client => Next::Return,
        // The pool cooled the model or marked the key: it is not eligible.
        FailureClass::RateLimit | FailureClass::Quota | FailureClass::Credential => Next::Rotate { exclude: false },
        FailureClass::Transient if same_key_failures <= policy.same_key_retries => {
            let base = policy.backoff.mul_f64(f64::from(1u32 << (same_key_failures - 1).min(16)));
            Next::SameKey(base.mul_f64(0.5 + jitter))
        }
        FailureClass::Transient => Next::Rotate { exclude: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_gets_its_step() {
        let policy = RetryPolicy::new(2, Duration::from_millis(100));
        assert_eq!(next(&policy, FailureClass::Client, 1, 0.5), Next::Return);
        for class in [FailureClass::RateLimit, FailureClass::Quota, FailureClass::Credential] {
            assert_eq!(next(&policy, class, 1, 0.5), Next::Rotate { exclude: false });
        }
        assert_eq!(next(&policy, FailureClass::Transient, 1, 0.5), Next::SameKey(Duration::from_millis(100)));
        assert_eq!(next(&policy, FailureClass::Transient, 2, 0.5), Next::SameKey(Duration::from_millis(200)));
        assert_eq!(next(&policy, FailureClass::Transient, 3, 0.5), Next::Rotate { exclude: true });
    }

    #[test]
    fn backoff_jitters_within_half_either_way() {
        let policy = RetryPolicy::default();
        assert_eq!(next(&policy, FailureClass::Transient, 1, 0.0), Next::SameKey(Duration::from_millis(50)));
        let Next::SameKey(high) = next(&policy, FailureClass::Transient, 1, 0.999) else { panic!() };
        assert!(high < Duration::from_millis(150));
    }

    #[test]
    fn no_same_key_retries_rotates_at_once() {
        let policy = RetryPolicy::new(0, Duration::from_millis(100));
        assert_eq!(next(&policy, FailureClass::Transient, 1, 0.5), Next::Rotate { exclude: true });
    }
}
