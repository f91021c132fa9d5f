//! Spending limits over calendar periods: a [`BudgetMeter`] holds what was
//! spent in the current period and what requests in flight have reserved.
//!
//! A request reserves its maximum cost before it is sent and is admitted
//! while anything is left after the spend and the other reservations; when
//! it ends its real cost replaces the reservation ([`BudgetHold::settle`]),
//! and a request that ends without a cost (failed, cancelled) frees its
//! reservation when the hold drops. So concurrent requests overshoot a
//! budget by at most one request's cost, as long as none costs more than
//! it reserved.
//!
//! Periods are calendar periods in UTC: a day from midnight, a week from
//! Monday, a month from its first; `total` never ends.
//!
//! ```
//! use std::sync::Arc;
//! use keyrelay_layers::budget::{Budget, BudgetMeter, BudgetPeriod};
//!
//! let meter = Arc::new(BudgetMeter::new(Budget::new(1.0, BudgetPeriod::Day)));
//! let noon = 1_765_022_400_000; // 2025-12-06T12:00:00Z
//! let hold = meter.try_reserve(noon, 0.75).unwrap();
//! let second = meter.try_reserve(noon, 0.75).unwrap(); // 0.25 was left: admitted
//! assert!(meter.try_reserve(noon, 0.01).is_err(), "everything is reserved");
//! hold.settle(noon, Some(0.10));
//! drop(second); // failed: nothing spent
//! assert!((meter.remaining(noon) - 0.90).abs() < 1e-9);
//! let refused = Arc::new(BudgetMeter::new(Budget::new(0.05, BudgetPeriod::Day)));
//! refused.charge(noon, 0.05);
//! let until = refused.try_reserve(noon, 0.01).unwrap_err().resets_at;
//! assert_eq!(until, Some(1_765_065_600_000), "the next midnight, UTC");
//! ```

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
};

use jiff::{Timestamp, ToSpan, tz::TimeZone};

/// The calendar period a budget counts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    /// From midnight UTC.
    Day,
    /// From Monday, midnight UTC.
    Week,
    /// From the first of the month, midnight UTC.
    #[default]
    Month,
    /// Never resets.
    Total,
}

impl BudgetPeriod {
    /// Every period, for reports and tests.
    pub const ALL: [Self; 4] = [Self::Day, Self::Week, Self::Month, Self::Total];

    /// `day`, `week`, `month` or `total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    /// When the period that holds `unix_ms` began (0 for `total`).
    pub fn start(self, unix_ms: u64) -> u64 {
        let date = date_of(unix_ms);
        let first = match self {
            Self::Day => date,
            Self::Week => {
                let back = i64::from(date.weekday().to_monday_zero_offset());
                date.checked_sub(back.days()).unwrap_or(date)
            }
            Self::Month => date.first_of_month(),
            Self::Total => return 0,
        };
        midnight_ms(first)
    }

    /// When the period that holds `unix_ms` ends (`None` for `total`).
    pub fn end(self, unix_ms: u64) -> Option<u64> {
        let start = date_of(self.start(unix_ms));
        let next = match self {
            Self::Day => start.checked_add(1.day()),
            Self::Week => start.checked_add(7.days()),
            Self::Month => start.checked_add(1.month()),
            Self::Total => return None,
        };
        next.ok().map(midnight_ms)
    }
}

fn date_of(unix_ms: u64) -> jiff::civil::Date {
    let at = Timestamp::from_millisecond(i64::try_from(unix_ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX);
    TimeZone::UTC.to_datetime(at).date()
}

fn midnight_ms(date: jiff::civil::Date) -> u64 {
    let at = date.to_zoned_datetime(TimeZone::UTC).map_or(0, |z| z.timestamp().as_millisecond());
    u64::try_from(at).unwrap_or(0)
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BudgetPeriod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown budget period `{s}`: use day, week, month or total"))
    }
}

/// A limit in USD over a period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// The most that may be spent in one period, in USD.
    pub limit_usd: f64,
    /// The period.
    pub period: BudgetPeriod,
}

impl Budget {
    /// `limit_usd` per `period`.
    pub fn new(limit_usd: f64, period: BudgetPeriod) -> Self {
        Self { limit_usd, period }
    }
}

/// A budget at work: the current period's spend and reservations.
#[derive(Debug)]
pub struct BudgetMeter {
    state: Mutex<Spend>,
}

/// Amounts are kept in nano-dollars: sums of many small costs, and
/// reservations added and taken away again, stay exact.
#[derive(Debug)]
struct Spend {
    budget: Budget,
    /// The start of the period `spent` counts.
    period_start: u64,
    spent: u64,
    /// What requests in flight reserved (whatever their period).
    reserved: u64,
}

const NANOS: f64 = 1e9;

fn nanos(usd: f64) -> u64 {
    // `as` saturates, and makes NaN 0.
    (usd.max(0.0) * NANOS).round() as u64
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS
}

impl Spend {
    /// Starts the period of `now` when the counted one is over.
    fn roll(&mut self, now: u64) {
        let start = self.budget.period.start(now);
        if start > self.period_start {
            self.period_start = start;
            self.spent = 0;
        }
    }
}

/// Why a reservation was refused: the budget is spent (or reserved) until
/// `resets_at`, the period's end (`None` for a `total` budget).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSpent {
    /// The budget's limit, in USD.
    pub limit_usd: f64,
    /// The period.
    pub period: BudgetPeriod,
    /// When the next period starts, in ms since the Unix epoch.
    pub resets_at: Option<u64>,
}

impl BudgetMeter {
    /// A meter with nothing spent.
    pub fn new(budget: Budget) -> Self {
        Self { state: Mutex::new(Spend { budget, period_start: 0, spent: 0, reserved: 0 }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Spend> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget.
    pub fn budget(&self) -> Budget {
        self.state().budget
    }

    /// Changes the budget (a reload); the spend stays, and restarts only
    /// when the new period's start is later than the counted one's.
    pub fn set_budget(&self, budget: Budget, now: u64) {
        let mut state = self.state();
        if state.budget.period != budget.period {
            let start = budget.period.start(now);
            if start != state.period_start {
                // Spend of another period's span cannot be carried over
                // exactly; the restored spend (see `restore`) corrects it.
                state.period_start = start;
            }
        }
        state.budget = budget;
    }

    /// Reserves `amount` USD for a request at `now` (ms since the Unix
    /// epoch), if anything of the budget is left after what is spent and
    /// reserved.
    pub fn try_reserve(self: &Arc<Self>, now: u64, amount: f64) -> Result<BudgetHold, BudgetSpent> {
        let mut state = self.state();
        state.roll(now);
        if state.spent.saturating_add(state.reserved) >= nanos(state.budget.limit_usd) {
            let budget = state.budget;
            return Err(BudgetSpent {
                limit_usd: budget.limit_usd,
                period: budget.period,
                resets_at: budget.period.end(now),
            });
        }
        let amount = nanos(amount);
        state.reserved = state.reserved.saturating_add(amount);
        Ok(BudgetHold { meter: self.clone(), reserved: amount })
    }

    /// Counts `cost` spent at `now` without a reservation.
    pub fn charge(&self, now: u64, cost: f64) {
        let mut state = self.state();
        state.roll(now);
        state.spent = state.spent.saturating_add(nanos(cost));
    }

    /// Adds `spent`, counted from a durable store, to the period that
    /// began at `period_start`; ignored when that period is over.
    pub fn restore(&self, now: u64, period_start: u64, spent: f64) {
        let mut state = self.state();
        state.roll(now);
        if period_start == state.period_start {
            state.spent = state.spent.saturating_add(nanos(spent));
        }
    }

    /// Another source (the replicas' shared store) counted `spent_nanos`
    /// over the period of `now`: the meter's spend is at least that.
    pub fn observe_spent(&self, now: u64, spent_nanos: u64) {
        let mut state = self.state();
        state.roll(now);
        state.spent = state.spent.max(spent_nanos);
    }

    /// What was spent in the period of `now`.
    pub fn spent(&self, now: u64) -> f64 {
        let mut state = self.state();
        state.roll(now);
        usd(state.spent)
    }

    /// What is left of the period of `now`'s budget after the spend and
    /// the reservations of requests in flight (never below 0).
    pub fn remaining(&self, now: u64) -> f64 {
        let mut state = self.state();
        state.roll(now);
        usd(nanos(state.budget.limit_usd).saturating_sub(state.spent.saturating_add(state.reserved)))
    }

    /// What requests in flight reserved.
    pub fn reserved(&self) -> f64 {
        usd(self.state().reserved)
    }
}

/// A request's reservation; see [`BudgetMeter::try_reserve`]. Dropped
/// without [`settle`](Self::settle), it frees what it reserved.
#[must_use = "a hold frees its reservation when dropped"]
pub struct BudgetHold {
    meter: Arc<BudgetMeter>,
    /// Nano-dollars.
    reserved: u64,
}

impl fmt::Debug for BudgetHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHold").field("reserved", &self.reserved).finish()
    }
}

impl BudgetHold {
    /// What this hold reserved.
    pub fn reserved(&self) -> f64 {
        usd(self.reserved)
    }

    /// The request ended at `now` having cost `cost` (none when its model
    /// has no price or its answer reported no usage): the cost is spent,
    /// the reservation freed.
    pub fn settle(self, now: u64, cost: Option<f64>) {
        if let Some(cost) = cost {
            self.meter.charge(now, cost);
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let mut state = self.meter.state();
        state.reserved = state.reserved.saturating_sub(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn periods_are_calendar_periods_in_utc() {
        let at = ms("2026-12-06T09:30:00Z"); // a Sunday
        assert_eq!(BudgetPeriod::Day.start(at), ms("2026-12-06T00:00:00Z"));
        assert_eq!(BudgetPeriod::Day.end(at), Some(ms("2026-12-07T00:00:00Z")));
        assert_eq!(BudgetPeriod::Week.start(at), ms("2026-11-30T00:00:00Z"));
        assert_eq!(BudgetPeriod::Week.end(at), Some(ms("2026-12-07T00:00:00Z")));
        assert_eq!(BudgetPeriod::Month.start(at), ms("2026-12-01T00:00:00Z"));
        assert_eq!(BudgetPeriod::Month.end(at), Some(ms("2027-01-01T00:00:00Z")));
        assert_eq!(BudgetPeriod::Total.start(at), 0);
        assert_eq!(BudgetPeriod::Total.end(at), None);
        let monday = ms("2026-11-30T00:00:00Z");
        assert_eq!(BudgetPeriod::Week.start(monday), monday, "a week starts on its Monday");
        assert_eq!(BudgetPeriod::Month.end(ms("2027-02-10T00:00:00Z")), Some(ms("2027-03-01T00:00:00Z")));
    }

    #[test]
    fn a_new_period_starts_from_nothing() {
        let meter = Arc::new(BudgetMeter::new(Budget::new(1.0, BudgetPeriod::Day)));
        let day = ms("2026-12-06T10:00:00Z");
        meter.charge(day, 1.0);
        assert!(meter.try_reserve(day, 0.1).is_err());
        let next = ms("2026-12-07T00:00:00Z");
        assert_eq!(meter.spent(next), 0.0);
        assert!(meter.try_reserve(next, 0.1).is_ok());
    }

    #[test]
    fn restored_spend_counts_only_in_its_own_period() {
        let meter = BudgetMeter::new(Budget::new(10.0, BudgetPeriod::Month));
        let now = ms("2026-12-06T10:00:00Z");
        meter.restore(now, ms("2026-11-01T00:00:00Z"), 7.0);
        meter.restore(now, ms("2026-12-01T00:00:00Z"), 3.0);
        assert_eq!(meter.spent(now), 3.0);
        assert_eq!(meter.remaining(now), 7.0);
    }

    #[test]
    fn a_settled_hold_frees_its_reservation_once() {
        let meter = Arc::new(BudgetMeter::new(Budget::new(1.0, BudgetPeriod::Total)));
        let hold = meter.try_reserve(5, 0.4).unwrap();
        assert_eq!(meter.reserved(), 0.4);
        hold.settle(6, Some(0.5));
        assert_eq!(meter.reserved(), 0.0);
        assert_eq!(meter.spent(7), 0.5);
        let err = Arc::new(BudgetMeter::new(Budget::new(0.0, BudgetPeriod::Total))).try_reserve(5, 0.0).unwrap_err();
        assert_eq!(err.resets_at, None, "a total budget never resets");
    }
}
