//! Time for the pool: cooldowns on tokio's `Instant` (so paused-clock tests
//! control them), and a wall clock derived from it for daily resets, state
//! files and status pages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

const DAY: u64 = 24 * 60 * 60;

/// Maps tokio's monotonic clock onto wall time, anchored once. Advancing a
/// paused tokio clock advances this wall clock too.
#[derive(Clone, Copy, Debug)]
pub struct PoolClock {
    anchor_instant: Instant,
    anchor_unix_ms: u64,
    /// Seconds after 00:00 UTC at which the day turns over.
    daily_reset_offset_secs: u64,
}

impl PoolClock {
    /// Tokio's "now" stands for `anchor`; days turn over
    /// `daily_reset_offset_secs` after 00:00 UTC.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use keyrelay_layers::pool::PoolClock;
    ///
    /// let noon = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 12 * 3600);
    /// let clock = PoolClock::new(noon, 0);
    /// let now = tokio::time::Instant::now();
    /// assert_eq!(clock.day(now), 20_000);
    /// assert_eq!(clock.day(clock.instant_at(clock.now_unix_ms() + 13 * 3_600_000)), 20_001);
    /// assert!(clock.next_reset(now) - now <= Duration::from_secs(12 * 3600));
    ///
    /// // With the day turning over at 13:00 UTC, noon still belongs to the day before.
    /// assert_eq!(PoolClock::new(noon, 13 * 3600).day(now), 19_999);
    /// ```
    pub fn new(anchor: SystemTime, daily_reset_offset_secs: u64) -> Self {
        let anchor_unix_ms = anchor.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self { anchor_instant: Instant::now(), anchor_unix_ms, daily_reset_offset_secs: daily_reset_offset_secs % DAY }
    }

    /// The wall time of `at`, in milliseconds since the Unix epoch.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor_instant).as_millis() as u64;
        let before = self.anchor_instant.saturating_duration_since(at).as_millis() as u64;
        (self.anchor_unix_ms + since).saturating_sub(before)
    }

    /// The wall time now, in milliseconds since the Unix epoch.
    pub fn now_unix_ms(&self) -> u64 {
        self.unix_ms(Instant::now())
    }

    /// The instant of a wall time, for cooldowns restored from a state file.
    pub fn instant_at(&self, unix_ms: u64) -> Instant {
        let now = Instant::now();
        let now_ms = self.unix_ms(now);
        if unix_ms >= now_ms { now + Duration::from_millis(unix_ms - now_ms) } else { now }
    }

    /// The number of the current day, counted from the daily reset time.
    pub fn day(&self, at: Instant) -> u64 {
        (self.unix_ms(at) / 1000).saturating_sub(self.daily_reset_offset_secs) / DAY
    }

    /// When the current day ends (the next daily reset).
    pub fn next_reset(&self, at: Instant) -> Instant {
        let secs = self.unix_ms(at) / 1000;
        let next = (self.day(at) + 1) * DAY + self.daily_reset_offset_secs;
        at + Duration::from_secs(next.saturating_sub(secs))
    }
}

/// Cooldown after the n-th rate limit in a row without a hint.
pub fn rate_limit_ladder(streak: u32) -> Duration {
    const LADDER: [u64; 5] = [10, 30, 60, 120, 300];
    Duration::from_secs(LADDER[(streak.max(1) as usize - 1).min(LADDER.len() - 1)])
}

/// How long a key stays invalid after its n-th credential failure in a row,
/// before one request probes it again.
pub fn invalid_ladder(strikes: u32) -> Duration {
    const LADDER: [u64; 5] = [5 * 60, 15 * 60, 60 * 60, 4 * 60 * 60, 24 * 60 * 60];
    Duration::from_secs(LADDER[(strikes.max(1) as usize - 1).min(LADDER.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_escalate_and_cap() {
        let secs = |d: Duration| d.as_secs();
        assert_eq!((1..=7).map(|n| secs(rate_limit_ladder(n))).collect::<Vec<_>>(), [10, 30, 60, 120, 300, 300, 300]);
        assert_eq!(secs(invalid_ladder(1)), 300);
        assert_eq!(secs(invalid_ladder(99)), 24 * 60 * 60);
    }

    #[tokio::test(start_paused = true)]
    async fn days_turn_at_the_reset_time_and_follow_tokios_clock() {
        // 2026-01-01 23:00 UTC, reset at 00:00 UTC.
        let anchor = UNIX_EPOCH + Duration::from_secs(1_767_308_400);
        let clock = PoolClock::new(anchor, 0);
        let today = clock.day(Instant::now());
        assert_eq!(clock.next_reset(Instant::now()) - Instant::now(), Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert_eq!(clock.day(Instant::now()), today);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.day(Instant::now()), today + 1);
        assert_eq!(clock.now_unix_ms(), 1_767_312_000_000);

        // Reset at 07:00 UTC: 23:00 is 16 h into its day.
        let clock = PoolClock::new(anchor, 7 * 3600);
        assert_eq!(clock.next_reset(Instant::now()) - Instant::now(), Duration::from_secs(8 * 3600));
    }

    #[tokio::test(start_paused = true)]
    async fn wall_times_map_back_to_instants() {
        let clock = PoolClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000), 0);
        let later = clock.instant_at(1_000_060_000);
        assert_eq!(later - Instant::now(), Duration::from_secs(60));
        assert_eq!(clock.instant_at(0), Instant::now(), "the past is now");
    }
}
