//! `x-keyrelay-cost-usd`: what an answer cost, on the answer itself, when
//! the proxy knows its usage before the headers leave — never by holding
//! a body back to learn it.
//!
//! A translated answer is read whole to be translated, so its usage is
//! known. An answer that passes through is priced only when its first
//! batch, the one the proxy reads with the head anyway (see
//! [`CoalescedBody::poll_prefetch`]), is the whole body. A stream's cost
//! is known at its end only: in the request log and the ledger, not here.
//! An unpriced model, or an answer without usage, has no header.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body;

use crate::{
    body::CoalescedBody,
    pool::KeyLease,
    usage::{Usage, UsageTap},
};

/// The answer's cost in US dollars, from the price table: up to 8
/// decimals, never an exponent (`0.00042`).
pub const COST_USD: HeaderName = HeaderName::from_static("x-keyrelay-cost-usd");

/// Prices `usage` of `model` with the lease's pool and says so in
/// `headers`; nothing when either is unknown.
pub(super) fn set(headers: &mut HeaderMap, lease: &KeyLease, model: &str, usage: Option<Usage>) {
    let Some(usage) = usage else { return };
    let Some(cost) = lease.pool().prices().cost(lease.provider_id().as_str(), model, usage) else { return };
    if let Some(value) = dollars(cost).and_then(|text| HeaderValue::from_str(&text).ok()) {
        headers.insert(COST_USD, value);
    }
}

/// The usage of an answer whose whole body came with its head; `None`
/// when more may follow.
pub(super) fn usage_if_whole<B>(body: &CoalescedBody<B>) -> Option<Usage>
where
    B: Body<Data = Bytes>,
{
    let whole = body.prefetched_whole()?;
    let mut tap = UsageTap::default();
    tap.push_bytes(whole);
    tap.usage()
}

/// `usd` with up to 8 decimals and no trailing zeros: `0.0000105`, `1.5`, `0`.
fn dollars(usd: f64) -> Option<String> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    let text = format!("{usd:.8}");
    Some(text.trim_end_matches('0').trim_end_matches('.').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_have_at_most_eight_decimals_and_no_exponent() {
        assert_eq!(dollars(0.0).as_deref(), Some("0"));
        assert_eq!(dollars(1.5).as_deref(), Some("1.5"));
        assert_eq!(dollars(12.0).as_deref(), Some("12"));
        assert_eq!(dollars(0.0000105).as_deref(), Some("0.0000105"));
        assert_eq!(dollars(1e-12).as_deref(), Some("0"), "below a millionth of a cent");
        assert_eq!(dollars(123_456.789_012_345).as_deref(), Some("123456.78901235"));
        assert_eq!(dollars(f64::NAN), None);
        assert_eq!(dollars(-1.0), None);
    }
}
