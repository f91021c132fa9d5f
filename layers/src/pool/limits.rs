//! A key's configured limits at work: its requests and tokens over the
//! last minute, counted in a ring of one-second buckets, and whether a
//! request fits in them, its requests of the day, or else when it will.
//!
//! The minute slides in one-second steps: a bucket leaves the window 60
//! seconds after the second it counts began, so a request sent late in
//! its second frees its place up to a second early. Providers measure
//! their own windows loosely too; a key that meets a 429 anyway cools as
//! usual.

use std::time::Duration;

use tokio::time::Instant;

use super::{KeySettings, PoolClock, ProviderPool, health::Health};

const SECONDS: usize = 60;

/// One quantity (requests or tokens) over the last minute.
#[derive(Clone, Debug)]
pub(crate) struct MinuteWindow {
    buckets: [u64; SECONDS],
    /// The second (of the pool's wall clock) the newest bucket counts.
    latest: u64,
}

impl Default for MinuteWindow {
    fn default() -> Self {
        Self { buckets: [0; SECONDS], latest: 0 }
    }
}

impl MinuteWindow {
    /// The second bucket `index` counts, given the newest.
    fn second_of(&self, index: usize) -> u64 {
        let back = (self.latest as usize + SECONDS - index) % SECONDS;
        self.latest.saturating_sub(back as u64)
    }

    /// Empties the buckets of seconds that left the window by `second`.
    fn advance(&mut self, second: u64) {
        if second <= self.latest {
            return;
        }
        if second - self.latest >= SECONDS as u64 {
            self.buckets = [0; SECONDS];
        } else {
            for s in self.latest + 1..=second {
                self.buckets[s as usize % SECONDS] = 0;
            }
        }
        self.latest = second;
    }

    /// The total over the minute that ends with `second`.
    pub fn used(&self, second: u64) -> u64 {
        (0..SECONDS).filter(|&i| self.second_of(i) + SECONDS as u64 > second).map(|i| self.buckets[i]).sum()
    }

    /// Counts `amount` at `second`.
    pub fn add(&mut self, second: u64, amount: u64) {
        self.advance(second);
        let bucket = &mut self.buckets[second as usize % SECONDS];
        *bucket = bucket.saturating_add(amount);
    }

    /// Corrects what was counted at `at` by `delta`, if that second is
    /// still in the window that ends with `now`.
    pub fn adjust(&mut self, at: u64, now: u64, delta: i64) {
        self.advance(now);
        if at + SECONDS as u64 <= now || at > self.latest {
            return;
        }
        let bucket = &mut self.buckets[at as usize % SECONDS];
        *bucket = bucket.saturating_add_signed(delta);
    }

    /// `None` when `need` more fits under `limit` at `second`; else the
    /// second from which it will, as old buckets leave. A need above the
    /// limit fits an empty window (or it would never fit).
    pub fn fits_from(&self, second: u64, limit: u64, need: u64) -> Option<u64> {
        let need = need.min(limit);
        let mut used = self.used(second);
        if used + need <= limit {
            return None;
        }
        for s in (second + 1).saturating_sub(SECONDS as u64)..=second {
            let index = s as usize % SECONDS;
            if self.second_of(index) == s {
                used -= self.buckets[index].min(used);
            }
            if used + need <= limit {
                return Some(s + SECONDS as u64);
            }
        }
        Some(second + SECONDS as u64)
    }
}

/// A key's use against its configured limits (live state, kept over
/// reloads like its cooldowns).
#[derive(Clone, Debug, Default)]
pub(crate) struct Windows {
    pub requests: MinuteWindow,
    pub tokens: MinuteWindow,
}

/// The second of the pool's wall clock at `at`.
pub(crate) fn second(clock: &PoolClock, at: Instant) -> u64 {
    clock.unix_ms(at) / 1000
}

impl Windows {
    /// When a request reserving `tokens` fits the key's limits, if not now:
    /// the latest of the moments its full windows free. `requests_today`
    /// counts toward `rpd`.
    pub fn ready_at(
        &self,
        settings: &KeySettings,
        clock: &PoolClock,
        now: Instant,
        requests_today: u64,
        tokens: u64,
    ) -> Option<Instant> {
        if !settings.has_limits() {
            return None;
        }
        let now_ms = clock.unix_ms(now);
        let second = now_ms / 1000;
        let at_second = |s: u64| now + Duration::from_millis((s * 1000).saturating_sub(now_ms));
        let minute = settings.rpm.and_then(|rpm| self.requests.fits_from(second, rpm, 1));
        let tokens = settings.tpm.and_then(|tpm| self.tokens.fits_from(second, tpm, tokens));
        let day = settings.rpd.filter(|&rpd| requests_today >= rpd).map(|_| clock.next_reset(now));
        [minute.map(at_second), tokens.map(at_second), day].into_iter().flatten().max()
    }

    /// Counts one request reserving `tokens`, for the limits that are set.
    pub fn count(&mut self, settings: &KeySettings, second: u64, tokens: u64) {
        if settings.rpm.is_some() {
            self.requests.add(second, 1);
        }
        if settings.tpm.is_some() {
            self.tokens.add(second, tokens);
        }
    }
}

impl ProviderPool {
    /// When key `index` has room under its `rpm`, `tpm` (for `tokens`
    /// more) and `rpd` limits, if it has none now.
    pub(super) fn limits_free_at(&self, index: usize, health: &Health, now: Instant, tokens: u64) -> Option<Instant> {
        let settings = &self.settings[index];
        let today = self.clock.day(now);
        let here = health.windows.ready_at(settings, &self.clock, now, health.requests_on(today), tokens);
        let elsewhere = health.limits_elsewhere_until.filter(|&until| until > now);
        here.max(elsewhere)
    }

    /// Replaces the `tokens` reserved at `leased_at` on key `index` by
    /// the `used` ones its answer reported, when the key has a `tpm`.
    pub(super) fn reconcile_tokens(&self, index: usize, leased_at: Instant, tokens: u64, used: u64) {
        if self.settings[index].tpm.is_none() {
            return;
        }
        let delta = i64::try_from(used).unwrap_or(i64::MAX).saturating_sub(i64::try_from(tokens).unwrap_or(i64::MAX));
        let (at, now) = (second(&self.clock, leased_at), second(&self.clock, Instant::now()));
        self.keys[index].health().windows.tokens.adjust(at, now, delta);
        // Fewer tokens than reserved may make room for a waiting request.
        if delta < 0 {
            self.slot_freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_forgets_what_is_a_minute_old() {
        let mut window = MinuteWindow::default();
        window.add(1000, 3);
        window.add(1030, 2);
        assert_eq!(window.used(1030), 5);
        assert_eq!(window.used(1059), 5);
        assert_eq!(window.used(1060), 2, "second 1000 left the window");
        window.add(1200, 1);
        assert_eq!(window.used(1200), 1, "a long silence empties it");
    }

    #[test]
    fn fits_from_names_the_second_enough_leaves() {
        let mut window = MinuteWindow::default();
        window.add(1000, 3);
        window.add(1030, 2);
        assert_eq!(window.fits_from(1040, 6, 1), None);
        assert_eq!(window.fits_from(1040, 5, 1), Some(1060));
        assert_eq!(window.fits_from(1040, 5, 4), Some(1090), "both buckets must go");
        assert_eq!(window.fits_from(1040, 5, 50), Some(1090), "too big for any window: an empty one");
    }

    #[test]
    fn adjust_corrects_a_reservation_while_it_counts() {
        let mut window = MinuteWindow::default();
        window.add(1000, 100);
        window.adjust(1000, 1010, -70);
        assert_eq!(window.used(1010), 30);
        window.adjust(1000, 1010, 500);
        assert_eq!(window.used(1010), 530);
        window.adjust(1000, 1061, -530);
        assert_eq!(window.used(1061), 0, "gone anyway");
        window.adjust(1000, 1062, 9);
        assert_eq!(window.used(1062), 0, "too late to count");
    }
}
