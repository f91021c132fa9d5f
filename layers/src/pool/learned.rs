//! Limits learned from the provider's own headers: what a (key, model) has
//! left of its requests and tokens, and when that resets. A key the
//! provider says has nothing left for a model is not chosen for it until
//! the reset, so the next request does not meet the 429.
//!
//! OpenAI (and the many providers that copy it) sends
//! `x-ratelimit-remaining-requests` / `-tokens` with
//! `x-ratelimit-reset-requests` / `-tokens` as durations (`1s`, `6m0s`,
//! `20ms`); Anthropic sends `anthropic-ratelimit-requests-remaining`,
//! `-tokens-remaining`, `-input-tokens-remaining` and
//! `-output-tokens-remaining`, each with a `-reset` as an RFC 3339 time.
//! A remaining count without a readable reset is ignored: nothing could
//! say when the key is back.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::{PoolClock, ProviderPool};
use crate::classify::parse_duration;

/// No learned reset is believed further off than this.
const MAX_RESET: Duration = Duration::from_secs(24 * 60 * 60);

/// What the provider last said a (key, model) has left of one quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remaining {
    pub left: u64,
    pub reset: Instant,
}

/// What the provider last said of a (key, model)'s requests and tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Learned {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
}

impl Learned {
    /// Until when the provider said nothing is left, if it still holds.
    pub fn spent_until(&self, now: Instant) -> Option<Instant> {
        [self.requests, self.tokens]
            .into_iter()
            .flatten()
            .filter(|r| r.left == 0 && r.reset > now)
            .map(|r| r.reset)
            .max()
    }

    /// Takes the news of `fresh`: each quantity it speaks of replaces the old.
    pub fn update(&mut self, fresh: Learned) {
        self.requests = fresh.requests.or(self.requests);
        self.tokens = fresh.tokens.or(self.tokens);
    }

    /// Whether nothing learned still holds (every reset passed).
    pub fn stale(&self, now: Instant) -> bool {
        [self.requests, self.tokens].into_iter().flatten().all(|r| r.reset <= now)
    }

    /// Reads an answer's rate-limit headers; `None` when it has none.
    pub fn from_headers(headers: &HeaderMap, clock: &PoolClock, now: Instant) -> Option<Learned> {
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let now_ms = clock.unix_ms(now);
        let after = |wait: Duration| now + wait.min(MAX_RESET);
        let openai = |kind: &str| {
            let left = value(&format!("x-ratelimit-remaining-{kind}"))?.parse::<u64>().ok()?;
            let wait = parse_duration(value(&format!("x-ratelimit-reset-{kind}"))?)?;
            Some(Remaining { left, reset: after(wait) })
        };
        let anthropic = |kind: &str| {
            let left = value(&format!("anthropic-ratelimit-{kind}-remaining"))?.parse::<u64>().ok()?;
            let at = rfc3339_unix_ms(value(&format!("anthropic-ratelimit-{kind}-reset"))?)?;
            Some(Remaining { left, reset: after(Duration::from_millis(at.saturating_sub(now_ms))) })
        };
        let requests = openai("requests").or_else(|| anthropic("requests"));
        // Anthropic limits input and output tokens apart: the scarcest
        // speaks for all (and at 0, the one that resets last).
        let tokens = openai("tokens")
            .into_iter()
            .chain(["tokens", "input-tokens", "output-tokens"].into_iter().filter_map(anthropic))
            .min_by_key(|r| (r.left, std::cmp::Reverse(r.reset)));
        (requests.is_some() || tokens.is_some()).then_some(Learned { requests, tokens })
    }
}

impl ProviderPool {
    /// Takes what an answer's rate-limit headers say key `index` has left
    /// for `model` (see `learned.rs`); nothing when it has none.
    pub fn learn_limits(&self, index: usize, model: &str, headers: &http::HeaderMap) {
        let now = Instant::now();
        let Some(fresh) = Learned::from_headers(headers, &self.clock, now) else { return };
        let today = self.clock.day(now);
        let mut health = self.keys[index].health();
        let learned = &mut health.model(model, today, self.cap_of(index), now).learned;
        let spent_before = learned.spent_until(now);
        learned.update(fresh);
        drop(health);
        if let Some(until) = fresh.spent_until(now) {
            // The other replicas skip the key until the reset too, as if it
            // had met the 429 there.
            if spent_before.is_none_or(|before| before < until) {
                self.announce(|clock| {
                    super::PoolEvent::cooled(
                        self.keys[index].id().as_str(),
                        model,
                        clock.unix_ms(until),
                        crate::classify::FailureClass::RateLimit,
                    )
                });
            }
            tracing::info!(
                key = self.keys[index].id().as_str(),
                model,
                wait_secs = until.saturating_duration_since(now).as_secs_f64(),
                "the provider says the key has nothing left for this model: skipped until its reset"
            );
        }
    }
}

/// An RFC 3339 time (`2026-01-02T03:04:05Z`, with an optional fraction
/// and a `Z` or `±hh:mm` offset) in milliseconds since the Unix epoch.
pub(crate) fn rfc3339_unix_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| digits_of(b.get(range)?);
    let separators = (b.get(4), b.get(7), b.get(10), b.get(13), b.get(16));
    if b.len() < 20 || separators != (Some(&b'-'), Some(&b'-'), Some(&b'T'), Some(&b':'), Some(&b':')) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || sec > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..len.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[len..];
    }
    let offset_secs = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let secs = digits_of(&[*h1, *h2])? * 3600 + digits_of(&[*m1, *m2])? * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + sec - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

fn digits_of(part: &[u8]) -> Option<i64> {
    part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::HeaderValue;

    use super::*;

    #[test]
    fn reads_rfc3339_times() {
        assert_eq!(rfc3339_unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_unix_ms("2026-12-06T08:10:33Z"), Some(1_796_544_633_000));
        assert_eq!(rfc3339_unix_ms("2026-12-06T09:10:33.25+01:00"), Some(1_796_544_633_250));
        assert_eq!(rfc3339_unix_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in ["", "2026-12-06", "2026-13-06T08:10:33Z", "2026-12-06T08:10:33", "2026-12-06T08:10:33.Z", "soon"] {
            assert_eq!(rfc3339_unix_ms(bad), None, "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn openai_headers_say_what_is_left_and_for_how_long() {
        let clock = PoolClock::new(SystemTime::now(), 0);
        let now = Instant::now();
        let map = headers(&[
            ("x-ratelimit-remaining-requests", "0".into()),
            ("x-ratelimit-reset-requests", "6m0s".into()),
            ("x-ratelimit-remaining-tokens", "149984".into()),
            ("x-ratelimit-reset-tokens", "20ms".into()),
        ]);
        let learned = Learned::from_headers(&map, &clock, now).unwrap();
        assert_eq!(learned.requests, Some(Remaining { left: 0, reset: now + Duration::from_secs(360) }));
        assert_eq!(learned.tokens, Some(Remaining { left: 149_984, reset: now + Duration::from_millis(20) }));
        assert_eq!(learned.spent_until(now), Some(now + Duration::from_secs(360)));
        assert_eq!(learned.spent_until(now + Duration::from_secs(360)), None);
        assert_eq!(Learned::from_headers(&HeaderMap::new(), &clock, now), None);
        let no_reset = headers(&[("x-ratelimit-remaining-requests", "0".into())]);
        assert_eq!(Learned::from_headers(&no_reset, &clock, now), None, "no reset, no belief");
    }

    #[tokio::test(start_paused = true)]
    async fn anthropic_headers_take_the_scarcest_tokens() {
        let anchor = UNIX_EPOCH + Duration::from_secs(1_796_544_600);
        let clock = PoolClock::new(anchor, 0);
        let now = Instant::now();
        let map = headers(&[
            ("anthropic-ratelimit-requests-remaining", "12".into()),
            ("anthropic-ratelimit-requests-reset", "2026-12-06T08:10:30Z".into()),
            ("anthropic-ratelimit-input-tokens-remaining", "0".into()),
            ("anthropic-ratelimit-input-tokens-reset", "2026-12-06T08:11:00Z".into()),
            ("anthropic-ratelimit-output-tokens-remaining", "800".into()),
            ("anthropic-ratelimit-output-tokens-reset", "2026-12-06T08:10:10Z".into()),
        ]);
        let learned = Learned::from_headers(&map, &clock, now).unwrap();
        assert_eq!(learned.requests, Some(Remaining { left: 12, reset: now + Duration::from_secs(30) }));
        assert_eq!(learned.tokens, Some(Remaining { left: 0, reset: now + Duration::from_secs(60) }));
        assert_eq!(learned.spent_until(now), Some(now + Duration::from_secs(60)));
    }
}
