//! [`Reliability`]: a key's recent success rate and latency, forgotten over
//! minutes, as one score for [`Selection::Reliability`](super::Selection).
//!
//! A flaky key drifts out of use without being cooled, and comes back
//! either by behaving (its new successes outweigh the old failures) or,
//! while unused, by being forgotten: with no recent history a key scores
//! like a fresh one, so the strategy tries it again.

use std::time::Duration;

use tokio::time::Instant;

/// How fast outcomes are forgotten: an outcome this old weighs half as much
/// as one just now. Minutes, so that a burst of failures matters for the
/// next few hundred requests and an outage of last hour does not.
pub const RELIABILITY_HALF_LIFE: Duration = Duration::from_secs(5 * 60);

/// The latency at which a key's score halves (for an equal success rate).
/// Far above a healthy time to first byte, so latency ranks keys of equal
/// success but barely trades against failures: one point of success rate
/// is worth about 0.3 s.
pub const RELIABILITY_REFERENCE_LATENCY: Duration = Duration::from_secs(30);

/// The weight of the imagined perfect outcome (a success in no time) that
/// every history starts from: no history scores 1.0, a single failure does
/// not sink a key to 0, and a forgotten history tends back to 1.0.
const PRIOR: f64 = 1.0;

/// An exponentially decayed record of one key's outcomes.
///
/// Three floats and a time, no allocation; [`record`](Self::record) and
/// [`score`](Self::score) take the time so that paused-clock tests (and the
/// pool's single `now` per request) control them.
///
/// ```
/// use std::time::Duration;
/// use keyrelay_layers::pool::Reliability;
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// let mut flaky = Reliability::new();
/// assert_eq!(flaky.score(now), 1.0, "no history");
/// for _ in 0..5 {
///     flaky.record(false, Duration::from_secs(2), now);
/// }
/// assert!(flaky.score(now) < 0.2);
///
/// // Forgotten over a few half-lives: it is worth trying again.
/// assert!(flaky.score(now + Duration::from_secs(40 * 60)) > 0.9);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reliability {
    /// Decayed count of outcomes, as of `updated`.
    outcomes: f64,
    /// Decayed count of successes, as of `updated`.
    successes: f64,
    /// Decayed sum of the successes' latencies in seconds, as of `updated`.
    latency_secs: f64,
    /// The last outcome's time; `None` for no history.
    updated: Option<Instant>,
}

impl Reliability {
    /// No history: scores 1.0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one attempt's outcome at `now`.
    ///
    /// `latency` counts only for successes: a failure is already paid for
    /// in the success rate, and a fast failure must not make a key look
    /// fast. It should be the time to the response head rather than to the
    /// end of the body, which depends on the answer's length, not the key.
    pub fn record(&mut self, ok: bool, latency: Duration, now: Instant) {
        let keep = self.kept(now);
        self.outcomes = self.outcomes * keep + 1.0;
        self.successes = self.successes * keep + f64::from(u8::from(ok));
        self.latency_secs = self.latency_secs * keep + if ok { latency.as_secs_f64() } else { 0.0 };
        // Concurrent attempts may report out of order: time only moves on.
        self.updated = Some(self.updated.map_or(now, |updated| updated.max(now)));
    }

    /// The score at `now`, in `[0, 1]`, higher is better: the success rate
    /// divided by `1 + mean latency / reference`. Success dominates (a key
    /// that fails half the time scores at most 0.5), latency is a mild
    /// penalty that ranks keys of equal success.
    pub fn score(&self, now: Instant) -> f64 {
        let latency = self.mean_latency(now).as_secs_f64();
        self.success_rate(now) / (1.0 + latency / RELIABILITY_REFERENCE_LATENCY.as_secs_f64())
    }

    /// The decayed success rate at `now`, in `(0, 1]`; 1.0 with no history.
    pub fn success_rate(&self, now: Instant) -> f64 {
        let keep = self.kept(now);
        (self.successes * keep + PRIOR) / (self.outcomes * keep + PRIOR)
    }

    /// The decayed mean latency of successes at `now`, shrunk toward zero
    /// while there are few of them (the prior is a success in no time);
    /// zero with no history.
    pub fn mean_latency(&self, now: Instant) -> Duration {
        let keep = self.kept(now);
        let secs = self.latency_secs * keep / (self.successes * keep + PRIOR);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }

    /// The share of the history still weighing at `now`: `2^(-age / half-life)`.
    fn kept(&self, now: Instant) -> f64 {
        let Some(updated) = self.updated else { return 1.0 };
        let age = now.saturating_duration_since(updated).as_secs_f64();
        (-age / RELIABILITY_HALF_LIFE.as_secs_f64()).exp2()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn no_history_scores_one_at_any_time() {
        let fresh = Reliability::new();
        assert_eq!(fresh.score(Instant::now()), 1.0);
        advance(24 * 60 * MINUTE).await;
        assert_eq!(fresh.score(Instant::now()), 1.0);
        assert_eq!(fresh.mean_latency(Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn success_dominates_and_latency_only_ranks() {
        let now = Instant::now();
        let mut steady = Reliability::new();
        let mut slow = Reliability::new();
        let mut flaky = Reliability::new();
        for i in 0..100 {
            steady.record(true, SECOND, now);
            slow.record(true, 3 * SECOND, now);
            // Fast, but one failure in five.
            flaky.record(i % 5 != 0, SECOND / 10, now);
        }
        let (steady, slow, flaky) = (steady.score(now), slow.score(now), flaky.score(now));
        assert!(steady > slow && slow > flaky, "{steady} {slow} {flaky}");
        // The latency penalty is mild: 3 s costs about 10 %.
        assert!((0.89..0.92).contains(&slow), "{slow}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_prior_softens_a_short_history() {
        let now = Instant::now();
        let mut once = Reliability::new();
        once.record(false, SECOND, now);
        assert!(close(once.success_rate(now), 0.5));
        assert_eq!(once.mean_latency(now), Duration::ZERO, "failures carry no latency");
        once.record(true, 4 * SECOND, now);
        assert!(close(once.success_rate(now), 2.0 / 3.0));
        assert_eq!(once.mean_latency(now), 2 * SECOND, "one success at 4 s, plus the prior's at 0 s");
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_weigh_half_per_half_life() {
        let mut key = Reliability::new();
        for _ in 0..3 {
            key.record(false, SECOND, Instant::now());
        }
        // 3 failures: 1/4. One half-life later they weigh 1.5: 1/2.5.
        assert!(close(key.success_rate(Instant::now()), 0.25));
        advance(RELIABILITY_HALF_LIFE).await;
        assert!(close(key.success_rate(Instant::now()), 1.0 / 2.5));
        // A success now: (0 + 1 + 1) / (1.5 + 1 + 1).
        key.record(true, SECOND, Instant::now());
        assert!(close(key.success_rate(Instant::now()), 2.0 / 3.5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flaky_key_drifts_out_and_back_once_it_behaves() {
        let mut flaky = Reliability::new();
        let mut steady = Reliability::new();
        // Both serve a request every 10 s; `flaky` fails every other one
        // for two minutes, then behaves.
        let mut gap = Vec::new();
        for tick in 0..6 * 60 {
            let failing = (12..24).contains(&tick) && tick % 2 == 0;
            flaky.record(!failing, SECOND, Instant::now());
            steady.record(true, SECOND, Instant::now());
            gap.push(steady.score(Instant::now()) - flaky.score(Instant::now()));
            advance(10 * SECOND).await;
        }
        assert!(gap[..12].iter().all(|&g| close(g, 0.0)), "equal while both behave");
        assert!(gap[23] > 0.15, "out after the failures: {}", gap[23]);
        assert!(gap[23 + 30] < gap[23] / 2.0, "half back within one half-life: {}", gap[23 + 30]);
        assert!(gap[359] < 0.001, "back within an hour: {}", gap[359]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_key_is_forgotten_back_toward_a_fresh_one() {
        let mut key = Reliability::new();
        for _ in 0..20 {
            key.record(false, SECOND, Instant::now());
        }
        let mut scores = Vec::new();
        for _ in 0..12 {
            scores.push(key.score(Instant::now()));
            advance(5 * MINUTE).await;
        }
        assert!(scores[0] < 0.05);
        assert!(scores.windows(2).all(|w| w[0] < w[1]), "rises steadily: {scores:?}");
        assert!(scores[11] > 0.95, "{scores:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_reports_never_move_time_back() {
        let start = Instant::now();
        let mut key = Reliability::new();
        key.record(true, SECOND, start + MINUTE);
        // An attempt that started earlier ends and reports late.
        key.record(false, SECOND, start);
        assert!(close(key.success_rate(start + MINUTE), 2.0 / 3.0));
        assert_eq!(key.updated, Some(start + MINUTE));
    }
}
