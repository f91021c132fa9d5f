//! Selection strategies: pure functions over a provider's keys.
//!
//! [`pick`] runs once per request, so it neither allocates nor locks: the
//! caller hands it the keys that could take the request now ([`Candidate`]s,
//! in config order), the provider's cursor and one uniform random draw.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

/// How a provider's next key is chosen among the keys that can take the
/// request now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selection {
    /// Fewest requests in flight, then fewest requests so far, then least
    /// recently used: load spreads before it stacks.
    #[default]
    LeastUsed,
    /// Each key in turn.
    RoundRobin,
    /// Any key, uniformly at random.
    Random,
    /// At random, in proportion to each key's weight.
    Weighted,
    /// One key until it cannot take the request, then the next in config
    /// order, which stays: for providers whose prompt cache is per key.
    Sequential,
    /// The key with the best recent success rate and latency (see
    /// [`Reliability`](super::Reliability)); ties go to the least used.
    Reliability,
}

impl Selection {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Self; 6] =
        [Self::LeastUsed, Self::RoundRobin, Self::Random, Self::Weighted, Self::Sequential, Self::Reliability];

    /// The name in configuration: `least_used`, `round_robin`, `random`,
    /// `weighted`, `sequential` or `reliability`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastUsed => "least_used",
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::Weighted => "weighted",
            Self::Sequential => "sequential",
            Self::Reliability => "reliability",
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
        write!(f, "unknown selection `{}`; expected one of ", self.0)?;
        for (i, selection) in Selection::ALL.iter().enumerate() {
            let separator = match i {
                0 => "",
                _ if i + 1 == Selection::ALL.len() => " or ",
                _ => ", ",
            };
            write!(f, "{separator}`{selection}`")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownSelection {}

impl FromStr for Selection {
    type Err = UnknownSelection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|selection| selection.as_str() == s).ok_or_else(|| UnknownSelection(s.to_owned()))
    }
}

/// A key that could take the request, with what ranks it.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Candidate {
    /// The key's position in the provider's keys (config order).
    pub index: usize,
    /// Requests on the key right now.
    pub in_flight: u32,
    /// Requests sent with the key today.
    pub requests: u64,
    /// When the key was last chosen (Unix ms; 0 for never).
    pub last_used_unix_ms: u64,
    /// The key's configured weight for [`Selection::Weighted`] (default 1;
    /// 0 counts as 1, so a configured key is never starved entirely).
    pub weight: u32,
    /// The key's [`Reliability`](super::Reliability) score in `[0, 1]`,
    /// higher is better; 1.0 for a key with no history.
    pub reliability: f64,
}

impl Candidate {
    /// A fresh, idle key at `index`: nothing in flight, never used, weight 1,
    /// reliability 1.0.
    pub fn new(index: usize) -> Self {
        Self { index, in_flight: 0, requests: 0, last_used_unix_ms: 0, weight: 1, reliability: 1.0 }
    }

    /// With this load: requests in flight, requests today, last used (Unix ms).
    pub fn with_load(self, in_flight: u32, requests: u64, last_used_unix_ms: u64) -> Self {
        Self { in_flight, requests, last_used_unix_ms, ..self }
    }

    /// With this weight.
    pub fn with_weight(self, weight: u32) -> Self {
        Self { weight, ..self }
    }

    /// With this reliability score.
    pub fn with_reliability(self, reliability: f64) -> Self {
        Self { reliability, ..self }
    }

    /// Least used first: fewest in flight, then fewest requests, then least
    /// recently used.
    fn load_rank(&self) -> (u32, u64, u64) {
        (self.in_flight, self.requests, self.last_used_unix_ms)
    }

    /// The reliability score, with anything outside `[0, 1]` (NaN included)
    /// brought back in so that comparisons stay total.
    fn reliability(&self) -> f64 {
        if self.reliability.is_nan() { 0.0 } else { self.reliability.clamp(0.0, 1.0) }
    }
}

/// Scores this close are equal for [`Selection::Reliability`]: float noise
/// must not decide between two equally good keys, their load must.
const RELIABILITY_TIE: f64 = 1e-9;

/// The index (into the provider's keys) of the key to use next among the
/// `candidates`; `None` when there are none.
///
/// `candidates` are in config order with indices below `key_count`.
/// `cursor` is the provider's position for [`Selection::RoundRobin`] (moved
/// past the key it picks) and [`Selection::Sequential`] (moved to the key
/// it picks). `draw` is a uniform random number in `[0, 1)`, read only by
/// [`Selection::Random`] and [`Selection::Weighted`]; passing it in keeps
/// this function pure and its tests seeded.
///
/// ```
/// use std::sync::atomic::AtomicUsize;
/// use keyrelay_layers::pool::{Candidate, Selection, pick};
///
/// let mut free = Candidate::new(0);
/// free.weight = 1;
/// let mut paid = Candidate::new(2);
/// paid.weight = 3;
/// let cursor = AtomicUsize::new(0);
///
/// // A quarter of the draws land on the free key, the rest on the paid one.
/// assert_eq!(pick(Selection::Weighted, &[free, paid], 3, &cursor, 0.2), Some(0));
/// assert_eq!(pick(Selection::Weighted, &[free, paid], 3, &cursor, 0.3), Some(2));
///
/// // Sequential stays on the first key that can take the request...
/// assert_eq!(pick(Selection::Sequential, &[free, paid], 3, &cursor, 0.0), Some(0));
/// assert_eq!(pick(Selection::Sequential, &[free, paid], 3, &cursor, 0.0), Some(0));
/// // ...and once it cannot, moves on and stays there.
/// assert_eq!(pick(Selection::Sequential, &[paid], 3, &cursor, 0.0), Some(2));
/// assert_eq!(pick(Selection::Sequential, &[free, paid], 3, &cursor, 0.0), Some(2));
///
/// assert_eq!(pick(Selection::LeastUsed, &[], 3, &cursor, 0.0), None);
/// ```
pub fn pick(
    selection: Selection,
    candidates: &[Candidate],
    key_count: usize,
    cursor: &AtomicUsize,
    draw: f64,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let chosen = match selection {
        Selection::LeastUsed => candidates.iter().min_by_key(|c| c.load_rank())?,
        Selection::RoundRobin => {
            let start = cursor.fetch_add(1, Relaxed);
            first_from(candidates, start, key_count)?
        }
        Selection::Random => {
            let slot = (unit(draw) * candidates.len() as f64) as usize;
            &candidates[slot.min(candidates.len() - 1)]
        }
        Selection::Weighted => weighted(candidates, draw)?,
        Selection::Sequential => {
            let chosen = first_from(candidates, cursor.load(Relaxed), key_count)?;
            // To the key, not past it: the next request stays here.
            cursor.store(chosen.index, Relaxed);
            chosen
        }
        Selection::Reliability => candidates.iter().reduce(|best, c| if more_reliable(c, best) { c } else { best })?,
    };
    Some(chosen.index)
}

/// The first candidate at or after position `start` in config order,
/// wrapping around.
fn first_from(candidates: &[Candidate], start: usize, key_count: usize) -> Option<&Candidate> {
    let key_count = key_count.max(1);
    let start = start % key_count;
    candidates.iter().min_by_key(|c| (c.index + key_count - start) % key_count)
}

/// One draw over the cumulative weights: candidate `i` is hit with
/// probability `weight_i / sum(weights)`.
fn weighted(candidates: &[Candidate], draw: f64) -> Option<&Candidate> {
    let weight = |c: &Candidate| u64::from(c.weight.max(1));
    // At most a few thousand keys of u32 weights: far below 2^53, so the
    // product below is exact enough and the sum cannot overflow.
    let total: u64 = candidates.iter().map(weight).sum();
    let mut target = ((unit(draw) * total as f64) as u64).min(total.checked_sub(1)?);
    for candidate in candidates {
        match target.checked_sub(weight(candidate)) {
            Some(rest) => target = rest,
            None => return Some(candidate),
        }
    }
    candidates.last()
}

/// Whether `c` beats `best` on reliability, with near-equal scores decided
/// by load as in [`Selection::LeastUsed`] (`best` keeps a full tie).
fn more_reliable(c: &Candidate, best: &Candidate) -> bool {
    let (score, best_score) = (c.reliability(), best.reliability());
    if (score - best_score).abs() <= RELIABILITY_TIE { c.load_rank() < best.load_rank() } else { score > best_score }
}

/// `draw` brought into `[0, 1]` (NaN to 0), so that a bad draw still picks a
/// candidate.
fn unit(draw: f64) -> f64 {
    if draw.is_nan() { 0.0 } else { draw.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(index: usize, in_flight: u32, requests: u64, last_used_unix_ms: u64) -> Candidate {
        Candidate { in_flight, requests, last_used_unix_ms, ..Candidate::new(index) }
    }

    fn weighted_key(index: usize, weight: u32) -> Candidate {
        Candidate { weight, ..Candidate::new(index) }
    }

    fn scored(index: usize, reliability: f64) -> Candidate {
        Candidate { reliability, ..Candidate::new(index) }
    }

    #[test]
    fn no_candidates_no_pick() {
        for selection in Selection::ALL {
            assert_eq!(pick(selection, &[], 3, &AtomicUsize::new(0), 0.5), None, "{selection}");
            assert_eq!(pick(selection, &[], 0, &AtomicUsize::new(7), 0.5), None, "{selection}");
        }
    }

    #[test]
    fn a_single_candidate_is_always_picked() {
        for selection in Selection::ALL {
            for draw in [0.0, 0.5, 0.999, 1.0, -1.0, f64::NAN] {
                let only = [Candidate { weight: 0, reliability: f64::NAN, ..Candidate::new(2) }];
                assert_eq!(pick(selection, &only, 3, &AtomicUsize::new(1), draw), Some(2), "{selection} {draw}");
            }
        }
    }

    #[test]
    fn least_used_ranks_in_flight_then_requests_then_recency() {
        let cursor = AtomicUsize::new(0);
        let pick = |c: &[Candidate]| pick(Selection::LeastUsed, c, 3, &cursor, 0.0);
        assert_eq!(pick(&[candidate(0, 1, 0, 0), candidate(1, 0, 9, 9), candidate(2, 0, 9, 5)]), Some(2));
        assert_eq!(pick(&[candidate(0, 0, 3, 0), candidate(1, 0, 2, 9)]), Some(1));
        assert_eq!(pick(&[candidate(0, 2, 0, 0), candidate(2, 1, 50, 50)]), Some(2));
    }

    #[test]
    fn round_robin_walks_every_key_in_turn_skipping_the_unavailable() {
        let cursor = AtomicUsize::new(0);
        let all: Vec<_> = (0..3).map(Candidate::new).collect();
        let picks: Vec<_> = (0..6).map(|_| pick(Selection::RoundRobin, &all, 3, &cursor, 0.0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let without_1 = [Candidate::new(0), Candidate::new(2)];
        let cursor = AtomicUsize::new(1);
        assert_eq!(pick(Selection::RoundRobin, &without_1, 3, &cursor, 0.0), Some(2));
    }

    #[test]
    fn random_maps_the_draw_onto_the_candidates_evenly() {
        let cursor = AtomicUsize::new(0);
        let keys = [Candidate::new(1), Candidate::new(4), Candidate::new(5), Candidate::new(7)];
        let at = |draw| pick(Selection::Random, &keys, 8, &cursor, draw).unwrap();
        assert_eq!([0.0, 0.24, 0.25, 0.49, 0.5, 0.74, 0.75, 0.999].map(at), [1, 1, 4, 4, 5, 5, 7, 7]);
        // Out-of-range draws still pick a candidate, and leave the cursor be.
        assert_eq!([1.0, -0.5, f64::NAN].map(at), [7, 1, 1]);
        assert_eq!(cursor.load(Relaxed), 0);
    }

    #[test]
    fn weighted_splits_the_draw_by_cumulative_weight() {
        let cursor = AtomicUsize::new(0);
        // Weights 1, 3, 0 (counts as 1): cumulative 1, 4, 5 out of 5.
        let keys = [weighted_key(0, 1), weighted_key(1, 3), weighted_key(2, 0)];
        let at = |draw| pick(Selection::Weighted, &keys, 3, &cursor, draw).unwrap();
        assert_eq!([0.0, 0.19].map(at), [0, 0]);
        assert_eq!([0.2, 0.5, 0.79].map(at), [1, 1, 1]);
        assert_eq!([0.8, 0.999, 1.0].map(at), [2, 2, 2]);
        assert_eq!(at(f64::NAN), 0);
        // Huge weights neither overflow nor starve the small one entirely.
        let heavy = [weighted_key(0, u32::MAX), weighted_key(1, u32::MAX), weighted_key(2, 1)];
        assert_eq!(pick(Selection::Weighted, &heavy, 3, &cursor, 0.4), Some(0));
        assert_eq!(pick(Selection::Weighted, &heavy, 3, &cursor, 0.6), Some(1));
        assert_eq!(pick(Selection::Weighted, &heavy, 3, &cursor, 1.0), Some(2));
    }

    #[test]
    fn sequential_stays_then_moves_on_in_config_order_and_wraps() {
        let cursor = AtomicUsize::new(0);
        let seq = |c: &[Candidate]| pick(Selection::Sequential, c, 4, &cursor, 0.0).unwrap();
        let all: Vec<_> = (0..4).map(Candidate::new).collect();
        assert_eq!([seq(&all), seq(&all), seq(&all)], [0, 0, 0], "stays on the first key");
        assert_eq!(seq(&all[1..]), 1, "key 0 cools: the next takes over");
        assert_eq!(seq(&all), 1, "and stays, even once key 0 is back");
        assert_eq!(seq(&[all[0], all[3]]), 3, "1 and 2 gone: skips to 3");
        assert_eq!(seq(&[all[0], all[1]]), 0, "3 gone: wraps to the start");
        assert_eq!(cursor.load(Relaxed), 0);
    }

    #[test]
    fn reliability_prefers_the_best_score_then_the_least_used() {
        let cursor = AtomicUsize::new(0);
        let best = |c: &[Candidate]| pick(Selection::Reliability, c, 4, &cursor, 0.0).unwrap();
        assert_eq!(best(&[scored(0, 0.5), scored(1, 0.9), scored(2, 0.7)]), 1);
        // A busy but better key still wins: reliability comes first.
        let busy_better = Candidate { in_flight: 5, ..scored(0, 0.95) };
        assert_eq!(best(&[busy_better, scored(1, 0.94)]), 0);
        // Within the tie margin, load decides.
        let a = Candidate { in_flight: 1, ..scored(0, 0.9) };
        let b = Candidate { requests: 7, ..scored(1, 0.9 + 1e-12) };
        let c = Candidate { requests: 3, ..scored(2, 0.9 - 1e-12) };
        assert_eq!(best(&[a, b, c]), 2);
        // NaN counts as the worst score, out-of-range scores are clamped.
        assert_eq!(best(&[scored(0, f64::NAN), scored(1, 0.1)]), 1);
        assert_eq!(best(&[Candidate { in_flight: 1, ..scored(0, 7.0) }, scored(1, 1.0)]), 1);
        assert_eq!(cursor.load(Relaxed), 0);
    }

    #[test]
    fn parses_its_own_names() {
        for s in Selection::ALL {
            assert_eq!(s.as_str().parse::<Selection>().unwrap(), s);
        }
        let message = "fastest".parse::<Selection>().unwrap_err().to_string();
        assert_eq!(
            message,
            "unknown selection `fastest`; expected one of `least_used`, `round_robin`, `random`, `weighted`, \
             `sequential` or `reliability`"
        );
    }
}
