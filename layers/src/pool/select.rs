//! Selection strategies: pure functions over a provider's keys.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

/// How a provider's next key is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selection {
    /// Fewest requests in flight, then fewest requests so far, then least
    /// recently used: load spreads before it stacks.
    #[default]
    LeastUsed,
    /// Each key in turn.
    RoundRobin,
}

impl Selection {
    /// The name in configuration: `least_used` or `round_robin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastUsed => "least_used",
            Self::RoundRobin => "round_robin",
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A selection name that is not one of the strategies.
#[derive(Debug)]
pub struct UnknownSelection(String);

impl fmt::Display for UnknownSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown selection `{}`; expected `least_used` or `round_robin`", self.0)
    }
}

impl std::error::Error for UnknownSelection {}

impl FromStr for Selection {
    type Err = UnknownSelection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "least_used" => Ok(Self::LeastUsed),
            "round_robin" => Ok(Self::RoundRobin),
            other => Err(UnknownSelection(other.to_owned())),
        }
    }
}

/// A key that could take the request, with what ranks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub index: usize,
    pub in_flight: u32,
    pub requests: u64,
    pub last_used_unix_ms: u64,
}

/// The index (into the provider's keys) of the key to use next, among the
/// candidates; `None` when there are none.
pub(crate) fn pick(
    selection: Selection,
    candidates: &[Candidate],
    key_count: usize,
    cursor: &AtomicUsize,
) -> Option<usize> {
    match selection {
        Selection::LeastUsed => {
            candidates.iter().min_by_key(|c| (c.in_flight, c.requests, c.last_used_unix_ms)).map(|c| c.index)
        }
        Selection::RoundRobin => {
            let start = cursor.fetch_add(1, Relaxed) % key_count.max(1);
            // The first candidate at or after the cursor, wrapping around.
            candidates.iter().min_by_key(|c| (c.index + key_count - start) % key_count).map(|c| c.index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(index: usize, in_flight: u32, requests: u64, last_used_unix_ms: u64) -> Candidate {
        Candidate { index, in_flight, requests, last_used_unix_ms }
    }

    #[test]
    fn no_candidates_no_pick() {
        for selection in [Selection::LeastUsed, Selection::RoundRobin] {
            assert_eq!(pick(selection, &[], 3, &AtomicUsize::new(0)), None);
        }
    }

    #[test]
    fn least_used_ranks_in_flight_then_requests_then_recency() {
        let cursor = AtomicUsize::new(0);
        let pick = |c: &[Candidate]| pick(Selection::LeastUsed, c, 3, &cursor);
        assert_eq!(pick(&[candidate(0, 1, 0, 0), candidate(1, 0, 9, 9), candidate(2, 0, 9, 5)]), Some(2));
        assert_eq!(pick(&[candidate(0, 0, 3, 0), candidate(1, 0, 2, 9)]), Some(1));
        assert_eq!(pick(&[candidate(0, 2, 0, 0), candidate(2, 1, 50, 50)]), Some(2));
    }

    #[test]
    fn round_robin_walks_every_key_in_turn_skipping_the_unavailable() {
        let cursor = AtomicUsize::new(0);
        let all: Vec<_> = (0..3).map(|i| candidate(i, 0, 0, 0)).collect();
        let picks: Vec<_> = (0..6).map(|_| pick(Selection::RoundRobin, &all, 3, &cursor).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let without_1 = [candidate(0, 0, 0, 0), candidate(2, 0, 0, 0)];
        let cursor = AtomicUsize::new(1);
        assert_eq!(pick(Selection::RoundRobin, &without_1, 3, &cursor), Some(2));
    }

    #[test]
    fn parses_its_own_names() {
        for s in [Selection::LeastUsed, Selection::RoundRobin] {
            assert_eq!(s.as_str().parse::<Selection>().unwrap(), s);
        }
        assert!("fastest".parse::<Selection>().unwrap_err().to_string().contains("least_used"));
    }
}
