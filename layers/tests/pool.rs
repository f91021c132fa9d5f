//! KeyPool on a paused clock: the rate-limit ladder, hints, quota until the
//! daily reset, invalid keys and their single probe, transient streaks,
//! whether a wait is a rate limit's, provider pauses, admin switches,
//! `/v1/keys` statuses, snapshots, and model labels.
//!
//! Over 600 lines on purpose: every section shares the helpers below, and
//! each reads on its own.
//!
//! The pool's wall clock is pinned to 2026-01-01 12:00 UTC at build time and
//! moves with tokio's paused clock, so every cooldown end is exact.

mod support;

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use keyrelay_layers::{
    classify::{Failure, FailureClass},
    pool::{
        Choice, DEFAULT_MAX_MODEL_LABELS, KeyId, KeyPool, KeyPoolBuilder, KeyState, KeyStatus, PoolSnapshot,
        ProviderOptions, ProviderPause, ProviderPool, Selection, Unavailable,
    },
};
use tokio::time::{Instant, advance};

use support::{NOON_UNIX, NOWHERE, key_id, ms, noon, openai, secrets, secs};

const HOUR: u64 = 3600;

fn builder(keys: &[&str]) -> KeyPoolBuilder {
    KeyPool::builder().wall_clock(noon()).provider(openai(NOWHERE), Selection::LeastUsed, secrets(keys))
}

fn build(keys: &[&str]) -> Arc<KeyPool> {
    builder(keys).build().unwrap()
}

fn openai_of(pool: &KeyPool) -> &Arc<ProviderPool> {
    pool.provider("openai").unwrap()
}

fn index_of(p: &ProviderPool, id: &KeyId) -> usize {
    p.keys().iter().position(|k| k.id() == id).unwrap()
}

/// The index of the key `choose` gives for `model`, its in-flight guard
/// dropped at once; or why there was none.
fn pick(p: &Arc<ProviderPool>, model: &str) -> Result<usize, Unavailable> {
    pick_excluding(p, model, &[])
}

fn pick_excluding(p: &Arc<ProviderPool>, model: &str, excluded: &[KeyId]) -> Result<usize, Unavailable> {
    match p.choose(model, excluded, None) {
        Choice::Leased(lease, _in_flight) => Ok(index_of(p, lease.key_id())),
        Choice::Unavailable(why) => Err(why),
    }
}

fn failure(class: FailureClass, hint_secs: Option<u64>) -> Result<(), Failure> {
    Err(Failure { class, retry_after: hint_secs.map(secs) })
}

fn rate_limit(p: &ProviderPool, index: usize, model: &str, hint_secs: Option<u64>) -> Option<Instant> {
    p.record(index, model, failure(FailureClass::RateLimit, hint_secs))
}

fn success(p: &ProviderPool, index: usize, model: &str) {
    assert_eq!(p.record(index, model, Ok(())), None, "a success starts no cooldown");
}

fn status(pool: &KeyPool, secret: &str) -> KeyStatus {
    pool.key_status(key_id("openai", secret).as_str()).unwrap()
}

/// Unix milliseconds of `offset` after the pools' pinned noon.
fn wall_ms(offset: Duration) -> u64 {
    NOON_UNIX * 1000 + offset.as_millis() as u64
}

// === rate limits ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_limits_without_a_hint_climb_the_ladder_and_a_success_resets_it() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    for step in [10, 30, 60, 120, 300, 300] {
        let until = rate_limit(p, 0, "m", None).expect("a cooldown starts");
        assert_eq!(until - Instant::now(), secs(step));
        let why = pick(p, "m").unwrap_err();
        assert_eq!(why.cooling_until, Some(until), "{step} s");
        advance(secs(step) - ms(1)).await;
        assert!(pick(p, "m").is_err(), "still cooling 1 ms before the end of its {step} s");
        advance(ms(1)).await;
        assert_eq!(pick(p, "m"), Ok(0), "back after {step} s");
    }
    success(p, 0, "m");
    let until = rate_limit(p, 0, "m", None).unwrap();
    assert_eq!(until - Instant::now(), secs(10), "a success starts the ladder again");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_providers_hint_wins_over_the_ladder() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    let until = rate_limit(p, 0, "m", Some(45)).unwrap();
    assert_eq!(until - Instant::now(), secs(45), "longer than the first step");
    advance(secs(45)).await;
    let _ = rate_limit(p, 0, "m", None).unwrap();
    advance(secs(300)).await;
    let until = rate_limit(p, 0, "m", Some(2)).unwrap();
    assert_eq!(until - Instant::now(), secs(2), "shorter than the ladder's step");
    advance(secs(2)).await;
    assert_eq!(pick(p, "m"), Ok(0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cooling_model_leaves_the_keys_other_models_alone() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    rate_limit(p, 0, "gpt-4o", None).unwrap();
    assert_eq!(pick(p, "gpt-4o"), Ok(1), "the cooling key is skipped for its model");
    for _ in 0..4 {
        let Choice::Leased(lease, _guard) = p.choose("gpt-4o-mini", &[], Some(p.keys()[0].id())) else {
            panic!("k1 is usable for another model");
        };
        assert_eq!(lease.key_id(), p.keys()[0].id());
    }
    let k1 = status(&pool, "k1");
    assert_eq!(k1.state, KeyState::Cooling);
    assert_eq!(k1.cooldowns.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(), ["gpt-4o"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_ladder_is_per_model() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    rate_limit(p, 0, "a", None).unwrap();
    advance(secs(10)).await;
    assert_eq!(rate_limit(p, 0, "a", None).unwrap() - Instant::now(), secs(30));
    assert_eq!(rate_limit(p, 0, "b", None).unwrap() - Instant::now(), secs(10), "model b starts at the bottom");
}

/// Several requests in flight on one key meet the same 429 burst: that is
/// one rate limit, not a streak: it does not throw the key to the top of the
/// ladder at once. A later answer's longer hint extends the cooldown.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_rate_limits_of_one_burst_climb_the_ladder_once() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    let guards: Vec<_> = (0..3).map(|_| p.choose("m", &[], None)).collect();
    assert!(guards.iter().all(|c| matches!(c, Choice::Leased(..))));
    let ends: Vec<Duration> = (0..3).map(|_| rate_limit(p, 0, "m", None).unwrap() - Instant::now()).collect();
    assert_eq!(ends, [secs(10); 3], "three answers of the same instant");
    let extended = rate_limit(p, 0, "m", Some(40)).unwrap();
    assert_eq!(extended - Instant::now(), secs(40), "a longer hint extends it");
    assert_eq!(rate_limit(p, 0, "m", Some(5)).unwrap(), extended, "a shorter one does not cut it");
    advance(secs(40)).await;
    assert_eq!(rate_limit(p, 0, "m", None).unwrap() - Instant::now(), secs(30), "the next burst climbs one step");
}

// === quota and the daily reset ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn quota_without_a_hint_lasts_until_the_daily_reset_and_ends_there() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    let until = p.record(0, "m", failure(FailureClass::Quota, None)).unwrap();
    assert_eq!(until - Instant::now(), secs(12 * HOUR), "noon to midnight UTC");
    let k1 = status(&pool, "k1");
    assert_eq!(k1.state, KeyState::Exhausted);
    assert_eq!(k1.cooldowns.len(), 1);
    assert_eq!(k1.cooldowns[0].reason, "quota");
    assert_eq!(k1.cooldowns[0].until_unix_ms, wall_ms(secs(12 * HOUR)));
    assert_eq!(k1.cooldowns[0].remaining_secs, 12 * HOUR);
    assert_eq!(pick(p, "m").unwrap_err().cooling_until, Some(until));

    advance(secs(12 * HOUR) - ms(1)).await;
    assert!(pick(p, "m").is_err(), "exhausted until the last millisecond of the day");
    advance(ms(1)).await;
    assert_eq!(pick(p, "m"), Ok(0));
    assert_eq!(status(&pool, "k1").state, KeyState::Ok);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn quota_follows_the_configured_reset_time_and_a_hint() {
    let pool = builder(&["k1"]).daily_reset_utc(secs(13 * HOUR)).build().unwrap();
    let p = openai_of(&pool);
    let until = p.record(0, "m", failure(FailureClass::Quota, None)).unwrap();
    assert_eq!(until - Instant::now(), secs(HOUR), "noon to the 13:00 UTC reset");
    let until = p.record(0, "n", failure(FailureClass::Quota, Some(600))).unwrap();
    assert_eq!(until - Instant::now(), secs(600), "the provider's reset time wins");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn daily_counters_reset_at_the_configured_utc_time() {
    // Reset at 18:00 UTC: six hours after the pool's noon.
    let pool = builder(&["k1"]).daily_reset_utc(secs(18 * HOUR)).build().unwrap();
    let p = openai_of(&pool);
    for _ in 0..3 {
        assert_eq!(pick(p, "m"), Ok(0));
        success(p, 0, "m");
    }
    p.record(0, "m", failure(FailureClass::Client, None));
    let today = status(&pool, "k1").today;
    assert_eq!((today.requests, today.successes, today.failures_client), (3, 3, 1));

    advance(secs(6 * HOUR) - secs(1)).await;
    assert_eq!(status(&pool, "k1").today.requests, 3, "the day has not turned yet");
    advance(secs(1)).await;
    let k1 = status(&pool, "k1");
    assert_eq!(k1.today, Default::default(), "a new day");
    assert!(k1.models.is_empty(), "{:?}", k1.models);
    assert_eq!(k1.requests, 3, "the lifetime count stays");

    assert_eq!(pick(p, "m"), Ok(0));
    assert_eq!(status(&pool, "k1").today.requests, 1, "the new day counts from zero");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_daily_reset_ends_rate_limit_and_quota_cooldowns() {
    let pool = builder(&["k1"]).daily_reset_utc(secs(18 * HOUR)).build().unwrap();
    let p = openai_of(&pool);
    rate_limit(p, 0, "a", Some(10 * HOUR)).unwrap();
    p.record(0, "b", failure(FailureClass::Quota, Some(20 * HOUR))).unwrap();
    advance(secs(6 * HOUR) - ms(1)).await;
    assert!(pick(p, "a").is_err() && pick(p, "b").is_err());
    advance(ms(1)).await;
    assert_eq!((pick(p, "a"), pick(p, "b")), (Ok(0), Ok(0)), "both end at 18:00 UTC");
    assert_eq!(status(&pool, "k1").state, KeyState::Ok);
}

/// A rate-limit cooldown whose hint reaches past the daily reset ends at the
/// reset (above), and the pool reports it so: otherwise KeySelect would
/// answer 429 "usable again in 1 h" (or wait an hour) for a key that is
/// usable in one minute.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cooldown_cut_short_by_the_daily_reset_is_reported_as_ending_there() {
    // 23:59 UTC, reset at midnight.
    let pool = KeyPool::builder()
        .wall_clock(noon() + secs(12 * HOUR - 60))
        .provider(openai(NOWHERE), Selection::LeastUsed, secrets(&["k1"]))
        .build()
        .unwrap();
    let p = openai_of(&pool);
    rate_limit(p, 0, "m", Some(HOUR)).unwrap();
    let midnight = Instant::now() + secs(60);
    assert_eq!(pick(p, "m").unwrap_err().cooling_until, Some(midnight));
    assert_eq!(status(&pool, "k1").cooldowns[0].remaining_secs, 60);
    advance(secs(60)).await;
    assert_eq!(pick(p, "m"), Ok(0));
}

// === invalid keys and probing ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_key_is_invalid_for_every_model_for_five_minutes() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    assert_eq!(p.record(0, "gpt-4o", failure(FailureClass::Credential, None)), None, "not a model cooldown");
    for model in ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"] {
        for _ in 0..3 {
            assert_eq!(pick(p, model), Ok(1), "{model}");
        }
    }
    let k1 = status(&pool, "k1");
    assert_eq!(k1.state, KeyState::Invalid);
    assert_eq!(k1.invalid_until_unix_ms, Some(wall_ms(secs(300))));

    let why = pick_excluding(p, "gpt-4o", &[p.keys()[1].id().clone()]).unwrap_err();
    assert_eq!(why.invalid_until, Some(Instant::now() + secs(300)));
    assert_eq!(why.cooling_until, None);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn after_its_wait_exactly_one_request_probes_an_invalid_key_and_a_success_restores_it() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    p.record(0, "m", failure(FailureClass::Credential, None));
    advance(secs(300) - ms(1)).await;
    assert!(pick(p, "m").is_err());
    advance(ms(1)).await;

    let Choice::Leased(probe, probe_guard) = p.choose("m", &[], None) else { panic!("due for its probe") };
    assert_eq!(probe.key_id(), p.keys()[0].id());
    for model in ["m", "other"] {
        let why = pick(p, model).unwrap_err();
        assert!(why.invalid_until.is_some(), "a second request does not probe: {why:?}");
    }
    assert_eq!(status(&pool, "k1").state, KeyState::Invalid, "until the probe says otherwise");

    probe.record("m", Ok(()));
    assert_eq!(status(&pool, "k1").state, KeyState::Ok);
    assert_eq!(status(&pool, "k1").invalid_until_unix_ms, None);
    assert_eq!(pick(p, "m"), Ok(0), "usable by everyone, the probe still in flight");
    drop(probe_guard);
    assert_eq!(pick(p, "other"), Ok(0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_probe_makes_the_key_wait_longer() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    p.record(0, "m", failure(FailureClass::Credential, None));
    advance(secs(300)).await;
    let Choice::Leased(probe, guard) = p.choose("m", &[], None) else { panic!("due for its probe") };
    probe.record("m", failure(FailureClass::Credential, None));
    drop(guard);
    assert_eq!(status(&pool, "k1").invalid_until_unix_ms, Some(wall_ms(secs(300 + 900))), "15 min now");
    advance(secs(900) - ms(1)).await;
    assert!(pick(p, "m").is_err());
    advance(ms(1)).await;
    assert_eq!(pick(p, "m"), Ok(0), "probed again after 15 min");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_that_ends_without_a_verdict_lets_another_request_probe() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    p.record(0, "m", failure(FailureClass::Credential, None));
    advance(secs(300)).await;
    let Choice::Leased(_, guard) = p.choose("m", &[], None) else { panic!("due for its probe") };
    assert!(pick(p, "m").is_err());
    drop(guard);
    assert_eq!(pick(p, "m"), Ok(0), "the client went away: someone else probes");
}

/// Two requests in flight on one key both get 401 from the same revocation:
/// the key is refused once, and the ladder's next step belongs to a failed
/// probe.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_credential_failures_mark_the_key_invalid_once() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    let (a, b) = (p.choose("m", &[], None), p.choose("m", &[], None));
    let (Choice::Leased(a, _ga), Choice::Leased(b, _gb)) = (a, b) else { panic!("two leases") };
    a.record("m", failure(FailureClass::Credential, None));
    b.record("m", failure(FailureClass::Credential, None));
    assert_eq!(status(&pool, "k1").invalid_until_unix_ms, Some(wall_ms(secs(300))));
}

// === transient and client failures ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_failures_cool_a_key_only_after_three_in_a_row() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    let transient = || failure(FailureClass::Transient, None);
    assert_eq!(p.record(0, "m", transient()), None);
    assert_eq!(p.record(0, "m", transient()), None);
    success(p, 0, "m");
    assert_eq!(p.record(0, "m", transient()), None, "a success broke the streak");
    assert_eq!(p.record(0, "m", transient()), None);
    assert_eq!(pick(p, "m"), Ok(0), "two in a row: still usable");
    let until = p.record(0, "m", transient()).expect("the third in a row cools it");
    assert_eq!(until - Instant::now(), secs(10));
    let k1 = status(&pool, "k1");
    assert_eq!(k1.state, KeyState::Cooling);
    assert_eq!(k1.cooldowns[0].reason, "transient");
    assert_eq!(k1.today.failures_transient, 5);
    advance(secs(10)).await;
    assert_eq!(pick(p, "m"), Ok(0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_failures_never_penalise_a_key() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    for _ in 0..20 {
        assert_eq!(p.record(0, "m", failure(FailureClass::Client, Some(60))), None);
    }
    assert_eq!(pick(p, "m"), Ok(0));
    let k1 = status(&pool, "k1");
    assert_eq!((k1.state, k1.cooldowns.len(), k1.today.failures_client), (KeyState::Ok, 0, 20));
}

// === rate limited or recovering ===

/// Three transient failures in a row: (key, model) rests for 10 s.
fn rest(p: &ProviderPool, index: usize, model: &str) -> Instant {
    (0..3).filter_map(|_| p.record(index, model, failure(FailureClass::Transient, None))).last().unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keys_resting_after_transient_failures_are_not_rate_limited() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    let until = rest(p, 0, "m");
    rest(p, 1, "m");
    let why = pick(p, "m").unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(until), false));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_limits_and_quota_are_rate_limited() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    rate_limit(p, 0, "m", Some(5)).unwrap();
    assert!(pick(p, "m").unwrap_err().rate_limited);
    p.record(0, "q", failure(FailureClass::Quota, None)).unwrap();
    assert!(pick(p, "q").unwrap_err().rate_limited);
    assert_eq!(pick(p, "fresh-model"), Ok(0), "other models are free");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn any_rate_limited_key_makes_the_wait_a_rate_limit_and_the_first_back_names_its_end() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    // k1 rests 10 s, k2 is rate limited for 60 s: part of the pool is rate
    // limited (a 429 is true), and k1 is back first.
    let rested = rest(p, 0, "m");
    rate_limit(p, 1, "m", Some(60)).unwrap();
    let why = pick(p, "m").unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(rested), true));
    // k2 rate limited for 5 s ends first: a rate limit.
    let limited = rate_limit(p, 1, "n", Some(5)).unwrap();
    rest(p, 0, "n");
    let why = pick(p, "n").unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(limited), true));
    // Both end at once.
    rest(p, 0, "t");
    rate_limit(p, 1, "t", Some(10)).unwrap();
    assert!(pick(p, "t").unwrap_err().rate_limited);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_provider_pause_is_a_rate_limit_and_lasts_as_long_as_the_first_key_back() {
    let pool = builder(&["k1", "k2", "k3", "k4"]).provider_pause(ProviderPause::new(3, secs(10), secs(5))).build();
    let pool = pool.unwrap();
    let p = openai_of(&pool);
    let rested = rest(p, 3, "m");
    for i in 0..3 {
        rate_limit(p, i, "m", Some(60)).unwrap();
    }
    let why = pick(p, "free-model").unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(Instant::now() + secs(5)), true), "the pause");
    let why = pick(p, "m").unwrap_err();
    assert_eq!((why.cooling_until, why.rate_limited), (Some(rested), true), "k4's rest outlasts the 5 s pause");
}

// === provider pause ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn three_keys_rate_limited_within_ten_seconds_pause_the_provider() {
    let pool = build(&["k1", "k2", "k3", "k4"]);
    let p = openai_of(&pool);
    rate_limit(p, 0, "m", Some(60)).unwrap();
    advance(secs(4)).await;
    rate_limit(p, 1, "m", Some(60)).unwrap();
    advance(secs(4)).await;
    assert_eq!(pick(p, "m"), Ok(2), "two keys are not yet the provider's limit");
    rate_limit(p, 2, "m", Some(60)).unwrap();
    let why = pick(p, "other-model").unwrap_err();
    assert_eq!(why.cooling_until, Some(Instant::now() + secs(10)), "k4 is fine, but the provider pauses");
    advance(secs(10) - ms(1)).await;
    assert!(pick(p, "m").is_err());
    advance(ms(1)).await;
    assert_eq!(pick(p, "m"), Ok(3));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_limits_spread_out_or_on_one_key_do_not_pause_the_provider() {
    let pool = build(&["k1", "k2", "k3", "k4"]);
    let p = openai_of(&pool);
    rate_limit(p, 0, "m", Some(60)).unwrap();
    advance(secs(6)).await;
    rate_limit(p, 1, "m", Some(60)).unwrap();
    advance(secs(6)).await;
    rate_limit(p, 2, "m", Some(60)).unwrap();
    assert!(pick(p, "m").is_ok(), "k1's limit left the 10 s window");

    let pool = build(&["k1", "k2", "k3", "k4"]);
    let p = openai_of(&pool);
    for _ in 0..5 {
        rate_limit(p, 3, "m", Some(60)).unwrap();
    }
    assert!(pick(p, "other").is_ok(), "one key many times is that key's limit");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_provider_pause_is_configurable_and_can_be_turned_off() {
    let pool = builder(&["k1", "k2", "k3"]).provider_pause(ProviderPause::new(2, secs(30), secs(60))).build().unwrap();
    let p = openai_of(&pool);
    rate_limit(p, 0, "m", Some(60)).unwrap();
    advance(secs(20)).await;
    rate_limit(p, 1, "m", Some(60)).unwrap();
    assert_eq!(pick(p, "m").unwrap_err().cooling_until, Some(Instant::now() + secs(60)));

    let pool = builder(&["k1", "k2", "k3", "k4"]).provider_pause(ProviderPause::new(0, secs(10), secs(10))).build();
    let pool = pool.unwrap();
    let p = openai_of(&pool);
    for i in 0..3 {
        rate_limit(p, i, "m", Some(60)).unwrap();
    }
    assert_eq!(pick(p, "m"), Ok(3), "0 distinct keys: no pause");
}

// === admin: disable, enable, reset ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn disabled_keys_are_skipped_until_enabled() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    let k1 = key_id("openai", "k1");
    assert!(pool.set_disabled(k1.as_str(), true));
    assert_eq!(status(&pool, "k1").state, KeyState::Disabled);
    for _ in 0..3 {
        assert_eq!(pick(p, "m"), Ok(1));
    }
    assert_eq!(
        pick_excluding(p, "m", &[key_id("openai", "k2")]).unwrap_err(),
        Unavailable { excluded: true, ..Unavailable::default() },
        "a disabled key gives no time to wait for"
    );
    assert!(pool.set_disabled(k1.as_str(), false));
    assert_eq!(status(&pool, "k1").state, KeyState::Ok);
    assert_eq!(pick(p, "m"), Ok(0));
    assert!(!pool.set_disabled("openai:00000000", true), "no such key");
    assert!(!pool.set_disabled("nope", true));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reset_clears_cooldowns_and_marks_but_keeps_counters() {
    let pool = build(&["k1"]);
    let p = openai_of(&pool);
    assert_eq!(pick(p, "a"), Ok(0));
    rate_limit(p, 0, "a", None).unwrap();
    p.record(0, "b", failure(FailureClass::Quota, None)).unwrap();
    p.record(0, "c", failure(FailureClass::Credential, None));
    assert_eq!(status(&pool, "k1").state, KeyState::Invalid);

    assert!(pool.reset(key_id("openai", "k1").as_str()));
    let k1 = status(&pool, "k1");
    assert_eq!((k1.state, k1.cooldowns.len(), k1.invalid_until_unix_ms), (KeyState::Ok, 0, None));
    assert_eq!((k1.requests, k1.today.failures_rate_limit, k1.today.failures_quota), (1, 1, 1));
    for model in ["a", "b", "c"] {
        assert_eq!(pick(p, model), Ok(0), "{model}");
    }
    let until = rate_limit(p, 0, "a", None).unwrap();
    assert_eq!(until - Instant::now(), secs(10), "the ladder starts over too");
    assert!(!pool.reset("openai:00000000"));
}

// === statuses ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn statuses_show_each_state_with_cooldowns_and_counters_and_no_secret() {
    let keys = ["sk-ok-0000000001", "sk-cool-00000002", "sk-quota-0000003", "sk-inval-0000004", "sk-off-000000005"];
    let pool = build(&keys);
    let p = openai_of(&pool);
    for i in 0..5 {
        let Choice::Leased(_, _guard) = p.choose("gpt-4o", &[], Some(p.keys()[i].id())) else { panic!() };
    }
    success(p, 0, "gpt-4o");
    rate_limit(p, 1, "gpt-4o", Some(90)).unwrap();
    p.record(2, "gpt-4o", failure(FailureClass::Quota, None)).unwrap();
    p.record(3, "gpt-4o", failure(FailureClass::Credential, None));
    assert!(pool.set_disabled(p.keys()[4].id().as_str(), true));
    advance(secs(30)).await;

    let statuses = pool.key_statuses();
    let states: Vec<KeyState> = statuses.iter().map(|s| s.state).collect();
    use KeyState::*;
    assert_eq!(states, [Ok, Cooling, Exhausted, Invalid, Disabled]);
    for (status, secret) in statuses.iter().zip(keys) {
        assert_eq!(status.id, key_id("openai", secret).as_str());
        assert_eq!((status.provider.as_str(), status.requests, status.in_flight), ("openai", 1, 0));
        assert_eq!(status.last_used_unix_ms, Some(wall_ms(Duration::ZERO)));
        assert_eq!(status.today.requests, 1);
        assert_eq!(status.models.len(), 1);
        assert_eq!(status.models[0].model, "gpt-4o");
    }
    let cooling = &statuses[1].cooldowns[0];
    assert_eq!(
        (cooling.model.as_str(), cooling.reason, cooling.until_unix_ms, cooling.remaining_secs),
        ("gpt-4o", "rate_limit", wall_ms(secs(90)), 60)
    );
    assert_eq!(statuses[2].cooldowns[0].reason, "quota");
    assert_eq!(statuses[3].invalid_until_unix_ms, Some(wall_ms(secs(300))));
    assert_eq!(statuses[0].today.successes, 1);
    assert_eq!(statuses[1].today.failures_rate_limit, 1);
    assert_eq!(statuses[3].today.failures_credential, 1);

    let json = serde_json::to_string(&statuses).unwrap();
    for secret in keys {
        assert!(!json.contains(secret), "{json}");
    }
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = value.as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(names, ["ok", "cooling", "exhausted", "invalid", "disabled"]);
    assert_eq!(value[1]["cooldowns"][0]["reason"], "rate_limit");
}

// === snapshots ===

/// Statuses as JSON, for comparing two pools.
fn statuses_json(pool: &KeyPool) -> serde_json::Value {
    serde_json::to_value(pool.key_statuses()).unwrap()
}

/// Every kind of state on five keys, with counters. Takes 10 s of tokio's
/// time: k2's streak of two rate limits needs its first cooldown to end.
async fn eventful_pool() -> Arc<KeyPool> {
    let pool = build(&["k1", "k2", "k3", "k4", "k5"]);
    let p = openai_of(&pool);
    rate_limit(p, 1, "gpt-4o", None).unwrap();
    advance(secs(10)).await;
    rate_limit(p, 1, "gpt-4o", Some(600)).unwrap();
    for i in 0..5 {
        for model in ["gpt-4o", "gpt-4o-mini"] {
            let Choice::Leased(..) = p.choose(model, &[], Some(p.keys()[i].id())) else {
                if (i, model) == (1, "gpt-4o") {
                    continue;
                }
                panic!("key {i} is free for {model}");
            };
        }
    }
    success(p, 0, "gpt-4o");
    p.record(0, "gpt-4o-mini", failure(FailureClass::Client, None));
    p.record(2, "gpt-4o", failure(FailureClass::Quota, None)).unwrap();
    p.record(3, "gpt-4o", failure(FailureClass::Credential, None));
    assert!(pool.set_disabled(p.keys()[4].id().as_str(), true));
    pool
}

/// A pool with these keys whose wall clock reads what `like`'s reads now:
/// the same process restarted.
fn rebuilt(like: &KeyPool, keys: &[&str]) -> Arc<KeyPool> {
    let now = UNIX_EPOCH + Duration::from_millis(like.clock().now_unix_ms());
    KeyPool::builder().wall_clock(now).provider(openai(NOWHERE), Selection::LeastUsed, secrets(keys)).build().unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_snapshot_restores_cooldowns_marks_switches_and_counters_into_a_new_pool() {
    let before = eventful_pool().await;
    let snapshot = before.snapshot();
    let json = serde_json::to_string(&snapshot).unwrap();
    for secret in ["k1", "k2", "k3", "k4", "k5"] {
        assert!(!json.contains(&format!("\"{secret}\"")), "{json}");
    }
    let parsed: PoolSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, snapshot);

    let after = rebuilt(&before, &["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(after.restore(&parsed), 5);
    assert_eq!(statuses_json(&after), statuses_json(&before));

    // And the restored state behaves: the cooling and invalid keys stay out.
    let p = openai_of(&after);
    let chosen: Vec<usize> = (0..4).map(|_| pick(p, "gpt-4o").unwrap()).collect();
    assert_eq!(chosen, [0, 0, 0, 0], "k2 cooling, k3 exhausted, k4 invalid, k5 disabled");
    assert_eq!(pick(p, "gpt-4o-mini").map(|i| i != 3 && i != 4), Ok(true));
    // The streak came along: k2's next rate limit without a hint is the third step.
    advance(secs(600)).await;
    assert_eq!(rate_limit(p, 1, "gpt-4o", None).unwrap() - Instant::now(), secs(60));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restart_later_keeps_the_remaining_time_of_each_cooldown() {
    let before = eventful_pool().await;
    let snapshot = serde_json::to_vec(&before.snapshot()).unwrap();
    advance(secs(120)).await;
    // The process restarts two minutes later: its wall clock says so.
    let after = rebuilt(&before, &["k1", "k2", "k3", "k4", "k5"]);
    after.restore(&serde_json::from_slice(&snapshot).unwrap());
    assert_eq!(statuses_json(&after), statuses_json(&before));
    let k2 = status(&after, "k2");
    assert_eq!(k2.cooldowns[0].remaining_secs, 600 - 120);
    advance(secs(480)).await;
    assert_eq!(pick_excluding(openai_of(&after), "gpt-4o", &[key_id("openai", "k1")]), Ok(1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn restore_ignores_unknown_keys_and_leaves_new_keys_fresh() {
    let before = eventful_pool().await;
    let mut snapshot = before.snapshot();
    let stranger = snapshot.keys.values().next().unwrap().clone();
    snapshot.keys.insert("openai:00000000".to_owned(), stranger.clone());
    snapshot.keys.insert("groq:12345678".to_owned(), stranger);

    // k1 and k2 were removed from the config; k9 is new.
    let after = rebuilt(&before, &["k3", "k4", "k5", "k9"]);
    assert_eq!(after.restore(&snapshot), 3);
    let states: Vec<KeyState> = after.key_statuses().iter().map(|s| s.state).collect();
    assert_eq!(states, [KeyState::Exhausted, KeyState::Invalid, KeyState::Disabled, KeyState::Ok]);
    let k9 = status(&after, "k9");
    assert_eq!((k9.requests, k9.today.requests, k9.last_used_unix_ms), (0, 0, None));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn snapshots_never_hold_a_secret() {
    let keys = ["sk-proj-secret-aaaaaaaa", "sk-proj-secret-bbbbbbbb"];
    let pool = build(&keys);
    let p = openai_of(&pool);
    rate_limit(p, 0, "gpt-4o", None).unwrap();
    p.record(1, "gpt-4o", failure(FailureClass::Credential, None));
    let json = serde_json::to_string(&pool.snapshot()).unwrap();
    assert!(!json.contains("secret"), "{json}");
    for secret in keys {
        assert!(json.contains(key_id("openai", secret).as_str()), "keyed by id: {json}");
    }
}

// === model labels ===

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_model_the_provider_accepted_becomes_a_label() {
    let pool = build(&["k1", "k2"]);
    let p = openai_of(&pool);
    assert_eq!(&*p.model_label("gpt-4o"), "other", "not configured, listed or accepted yet");
    p.record(0, "gpt-4o", failure(FailureClass::Client, None));
    p.record(0, "gpt-4o", failure(FailureClass::Transient, None));
    assert_eq!(&*p.model_label("gpt-4o"), "other", "a failure proves nothing");
    success(p, 0, "gpt-4o");
    assert_eq!(&*p.model_label("gpt-4o"), "gpt-4o");
    success(p, 1, "gpt-4o");
    success(p, 0, "");
    assert_eq!(&*p.model_label(""), "other", "a request without a model teaches nothing");
    let long = "m".repeat(200);
    success(p, 0, &long);
    assert_eq!(&*p.model_label(&long), "other", "too long for a label");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn accepted_models_are_capped_per_provider_but_configured_and_listed_ones_are_not() {
    assert_eq!(ProviderOptions::default().max_model_labels, DEFAULT_MAX_MODEL_LABELS);
    let configured = openai(NOWHERE).with_models(vec!["configured".to_owned()]);
    let options = ProviderOptions::new(Selection::LeastUsed).max_model_labels(2);
    let pool = KeyPool::builder().wall_clock(noon()).provider_with(configured, options, secrets(&["k1"])).build();
    let pool = pool.unwrap();
    let p = openai_of(&pool);
    p.learn_models(&["listed-1".to_owned(), "listed-2".to_owned()]);
    for model in ["configured", "listed-1", "listed-2", "a", "b", "c"] {
        success(p, 0, model);
    }
    let labels: Vec<_> = ["configured", "listed-1", "listed-2", "a", "b", "c"].map(|m| p.model_label(m)).into();
    assert_eq!(
        labels.iter().map(|l| &**l).collect::<Vec<_>>(),
        ["configured", "listed-1", "listed-2", "a", "b", "other"]
    );
    // Listing an accepted model frees its place under the cap.
    p.learn_models(&["a".to_owned()]);
    success(p, 0, "c");
    assert_eq!(&*p.model_label("c"), "c");
    success(p, 0, "d");
    assert_eq!(&*p.model_label("d"), "other");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_keeps_accepted_and_listed_labels() {
    let old = build(&["k1"]);
    success(openai_of(&old), 0, "accepted");
    openai_of(&old).learn_models(&["listed".to_owned()]);
    let new = builder(&["k1"]).carry_over(old.clone()).build().unwrap();
    let p = openai_of(&new);
    assert_eq!((&*p.model_label("accepted"), &*p.model_label("listed")), ("accepted", "listed"));
    // The carried key already settled "accepted": a model new to the pool still teaches it.
    success(p, 0, "new");
    assert_eq!(&*p.model_label("new"), "new");
}
