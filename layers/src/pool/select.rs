//! Selection strategies: pure functions over a provider's keys.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use super::key::KeyEntry;

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
        write!(
            f,
            "unknown selection `{}`; expected `least_used` or `round_robin`",
            self.0
        )
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

/// The index of the key to use next, or `None` when there are no keys.
pub(crate) fn pick(
    selection: Selection,
    keys: &[Arc<KeyEntry>],
    cursor: &AtomicUsize,
) -> Option<usize> {
    if keys.is_empty() {
        return None;
    }
    match selection {
        Selection::LeastUsed => keys
            .iter()
            .enumerate()
            .min_by_key(|(_, key)| (key.in_flight(), key.requests(), key.last_used_unix_ms()))
            .map(|(index, _)| index),
        Selection::RoundRobin => Some(cursor.fetch_add(1, Relaxed) % keys.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pool::Secret, provider::Provider};

    fn keys(n: usize) -> Vec<Arc<KeyEntry>> {
        let provider = Provider::openai_compatible("p", "http://127.0.0.1/v1").unwrap();
        (0..n)
            .map(|i| {
                Arc::new(KeyEntry::new(&provider, Secret::new(format!("k{i}")), i + 1).unwrap())
            })
            .collect()
    }

    #[test]
    fn no_keys_no_pick() {
        for selection in [Selection::LeastUsed, Selection::RoundRobin] {
            assert_eq!(pick(selection, &[], &AtomicUsize::new(0)), None);
        }
    }

    #[test]
    fn least_used_prefers_fewest_in_flight_over_fewest_requests() {
        let keys = keys(3);
        let cursor = AtomicUsize::new(0);
        // key 0: 1 request, still in flight; key 1: 2 requests, done; key 2: 1 request, done.
        let _busy = keys[0].begin();
        drop(keys[1].begin());
        drop(keys[1].begin());
        drop(keys[2].begin());
        assert_eq!(pick(Selection::LeastUsed, &keys, &cursor), Some(2));
    }

    #[test]
    fn least_used_spreads_sequential_requests_evenly() {
        let keys = keys(4);
        let cursor = AtomicUsize::new(0);
        let mut counts = [0; 4];
        for _ in 0..40 {
            let i = pick(Selection::LeastUsed, &keys, &cursor).unwrap();
            drop(keys[i].begin());
            counts[i] += 1;
        }
        assert_eq!(counts, [10; 4]);
    }

    #[test]
    fn least_used_spreads_concurrent_requests() {
        let keys = keys(3);
        let cursor = AtomicUsize::new(0);
        let guards: Vec<_> = (0..3)
            .map(|_| keys[pick(Selection::LeastUsed, &keys, &cursor).unwrap()].begin())
            .collect();
        assert!(keys.iter().all(|k| k.in_flight() == 1));
        drop(guards);
    }

    #[test]
    fn round_robin_walks_every_key_in_turn() {
        let keys = keys(3);
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(Selection::RoundRobin, &keys, &cursor).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn parses_its_own_names() {
        for s in [Selection::LeastUsed, Selection::RoundRobin] {
            assert_eq!(s.as_str().parse::<Selection>().unwrap(), s);
        }
        assert!(
            "fastest"
                .parse::<Selection>()
                .unwrap_err()
                .to_string()
                .contains("least_used")
        );
    }
}
