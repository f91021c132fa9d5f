//! The selection property: for random pools (1 to 12 keys) whose keys are in
//! random states (excluded by the request, cooling for the model, cooling
//! for another model only, invalid and not due, due for their probe or
//! already being probed, disabled, full, busy with other requests),
//! `ProviderPool::choose` never returns a key that is excluded, cooling,
//! invalid (unless due for its one probe), disabled or full; returns a key
//! whenever one is eligible; honours an available pinned key; and hands an
//! invalid key's probe to one request only.
//!
//! Each case runs on its own paused tokio clock, and the seed is fixed, so
//! the run is deterministic.

mod support;

use std::{collections::BTreeMap, sync::Arc};

use keyrelay_layers::{
    classify::{Failure, FailureClass},
    pool::{
        Choice, InFlight, KeyId, KeyPool, KeySnapshot, PoolSnapshot, ProviderOptions, ProviderPause, ProviderPool,
        Selection,
    },
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, RngSeed},
};
use tokio::sync::OwnedSemaphorePermit;

use support::{NOON_UNIX, NOWHERE, noon, openai, secs};

const MODEL: &str = "gpt-4o";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cooling {
    None,
    RateLimit {
        hint_secs: u64,
    },
    Quota,
    /// Three transient failures in a row.
    Transient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    No,
    /// Refused by the provider, its wait not over.
    NotDue,
    /// Its wait is over: the next request may probe it.
    Due,
    /// Due, and another request is probing it right now.
    Probing,
}

#[derive(Clone, Copy, Debug)]
struct KeySetup {
    excluded: bool,
    cooling: Cooling,
    other_model_cooling: bool,
    invalid: Invalid,
    disabled: bool,
    /// Every slot taken (only with a cap); else `cap - 1` at most.
    full: bool,
    taken_slots: usize,
    /// Requests in flight on other models (rank only).
    busy: usize,
}

#[derive(Clone, Debug)]
struct Case {
    keys: Vec<KeySetup>,
    selection: Selection,
    cap: usize,
    pinned: Option<Index>,
    calls: usize,
}

fn key_setup() -> impl Strategy<Value = KeySetup> {
    let cooling = prop_oneof![
        4 => Just(Cooling::None),
        1 => (1u64..=3600).prop_map(|hint_secs| Cooling::RateLimit { hint_secs }),
        1 => Just(Cooling::Quota),
        1 => Just(Cooling::Transient),
    ];
    let invalid = prop_oneof![
        5 => Just(Invalid::No),
        1 => Just(Invalid::NotDue),
        1 => Just(Invalid::Due),
        1 => Just(Invalid::Probing),
    ];
    let flag = || prop::bool::weighted(0.2);
    (flag(), cooling, any::<bool>(), invalid, flag(), flag(), 0usize..3, 0usize..3).prop_map(
        |(excluded, cooling, other_model_cooling, invalid, disabled, full, taken_slots, busy)| KeySetup {
            excluded,
            cooling,
            other_model_cooling,
            invalid,
            disabled,
            full,
            taken_slots,
            busy,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let selection = prop_oneof![Just(Selection::LeastUsed), Just(Selection::RoundRobin)];
    (prop::collection::vec(key_setup(), 1..=12), selection, 0usize..=3, any::<Option<Index>>(), 1usize..=4)
        .prop_map(|(keys, selection, cap, pinned, calls)| Case { keys, selection, cap, pinned, calls })
}

/// What the test holds so that the states it set up last.
#[derive(Default)]
struct Held {
    guards: Vec<InFlight>,
    permits: Vec<OwnedSemaphorePermit>,
}

fn lease_pinned(p: &Arc<ProviderPool>, model: &str, index: usize, held: &mut Held) {
    match p.choose(model, &[], Some(p.keys()[index].id())) {
        Choice::Leased(lease, guard) => {
            assert_eq!(lease.key_id(), p.keys()[index].id(), "a fresh pinned key is taken");
            held.guards.push(guard);
        }
        Choice::Unavailable(why) => panic!("key {index} should be free here: {why:?}"),
    }
}

/// Builds the pool and puts every key in its state.
fn set_up(case: &Case) -> (Arc<KeyPool>, Held) {
    let secrets = (0..case.keys.len()).map(|i| keyrelay_layers::pool::Secret::new(format!("sk-key-{i:02}"))).collect();
    let options = ProviderOptions::new(case.selection).max_concurrent_per_key(case.cap);
    let pool = KeyPool::builder()
        .wall_clock(noon())
        // No provider pause: it would hide the keys' own states.
        .provider_pause(ProviderPause::new(0, secs(10), secs(10)))
        .provider_with(openai(NOWHERE), options, secrets)
        .build()
        .unwrap();
    let p = pool.provider("openai").unwrap().clone();
    let mut held = Held::default();

    // Busy keys first, while every key is still free.
    for (i, key) in case.keys.iter().enumerate() {
        for _ in 0..key.busy {
            lease_pinned(&p, "busy-model", i, &mut held);
        }
    }
    // Invalid keys whose wait is over, as a state file would bring them back.
    let mut snapshot = PoolSnapshot::default();
    for (i, key) in case.keys.iter().enumerate() {
        if matches!(key.invalid, Invalid::Due | Invalid::Probing) {
            let mut saved = KeySnapshot::default();
            saved.invalid_until_unix_ms = Some(NOON_UNIX * 1000 - 1000);
            saved.invalid_strikes = 1;
            saved.requests = p.keys()[i].requests();
            snapshot.keys.insert(p.keys()[i].id().to_string(), saved);
        }
    }
    pool.restore(&snapshot);
    for (i, key) in case.keys.iter().enumerate() {
        let record = |class, hint: Option<u64>, model: &str| {
            p.record(i, model, Err(Failure { class, retry_after: hint.map(secs) }));
        };
        if key.invalid == Invalid::Probing {
            lease_pinned(&p, "probe-model", i, &mut held);
        }
        if key.invalid == Invalid::NotDue {
            record(FailureClass::Credential, None, "some-model");
        }
        match key.cooling {
            Cooling::None => {}
            Cooling::RateLimit { hint_secs } => record(FailureClass::RateLimit, Some(hint_secs), MODEL),
            Cooling::Quota => record(FailureClass::Quota, None, MODEL),
            Cooling::Transient => (0..3).for_each(|_| record(FailureClass::Transient, None, MODEL)),
        }
        if key.other_model_cooling {
            record(FailureClass::RateLimit, Some(600), "other-model");
        }
        if case.cap > 0 {
            let slots = p.slots(i, MODEL).expect("capped");
            let take = if key.full { case.cap } else { key.taken_slots.min(case.cap - 1) };
            for _ in 0..take {
                held.permits.push(slots.clone().try_acquire_owned().unwrap());
            }
        }
        if key.disabled {
            assert!(pool.set_disabled(p.keys()[i].id().as_str(), true));
        }
    }
    (pool, held)
}

/// Runs one case: `calls` choices in a row, every lease held.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let (pool, mut held) = set_up(case);
    let p = pool.provider("openai").unwrap();
    let n = case.keys.len();
    let excluded: Vec<KeyId> = (0..n).filter(|&i| case.keys[i].excluded).map(|i| p.keys()[i].id().clone()).collect();
    let pinned = case.pinned.map(|index| index.index(n));
    let pinned_id = pinned.map(|i| p.keys()[i].id().clone());
    let mut probed = vec![false; n];

    for call in 0..case.calls {
        // Usable for a request now (exclusion aside): probes already handed
        // out in this loop are taken.
        let usable = |i: usize| {
            let key = &case.keys[i];
            let valid = match key.invalid {
                Invalid::No => true,
                Invalid::Due => !probed[i],
                Invalid::NotDue | Invalid::Probing => false,
            };
            !key.disabled && valid
        };
        let not_cooling = |i: usize| case.keys[i].cooling == Cooling::None;
        let has_slot = |i: usize| case.cap == 0 || !case.keys[i].full;
        let eligible = |i: usize| !case.keys[i].excluded && usable(i) && not_cooling(i) && has_slot(i);
        let any_eligible = (0..n).any(eligible);

        match p.choose(MODEL, &excluded, pinned_id.as_ref()) {
            Choice::Leased(lease, guard) => {
                let i = p.keys().iter().position(|k| k.id() == lease.key_id()).unwrap();
                let key = &case.keys[i];
                prop_assert!(!key.excluded, "call {call}: chose excluded key {i}");
                prop_assert!(!key.disabled, "call {call}: chose disabled key {i}");
                prop_assert!(not_cooling(i), "call {call}: chose key {i} cooling for the model: {key:?}");
                prop_assert!(has_slot(i), "call {call}: chose full key {i}");
                prop_assert!(usable(i), "call {call}: chose invalid key {i} not due for a probe: {key:?}");
                if let Some(pin) = pinned
                    && eligible(pin)
                {
                    prop_assert_eq!(i, pin, "call {}: the pinned key was available", call);
                }
                if key.invalid == Invalid::Due {
                    probed[i] = true;
                }
                held.guards.push(guard);
            }
            Choice::Unavailable(why) => {
                prop_assert!(!any_eligible, "call {call}: no key, though some were eligible: {why:?}");
                prop_assert!(!why.no_keys);
                prop_assert_eq!(why.excluded, case.keys.iter().any(|k| k.excluded), "call {}", call);
                let candidates = || (0..n).filter(|&i| !case.keys[i].excluded && usable(i));
                prop_assert_eq!(why.cooling_until.is_some(), candidates().any(|i| !not_cooling(i)), "call {}", call);
                prop_assert_eq!(why.full, candidates().any(|i| not_cooling(i) && !has_slot(i)), "call {}", call);
                // Any candidate cooling for a rate limit or quota makes the
                // wait a rate limit's; rests after failures alone do not.
                let limited = |i: usize| matches!(case.keys[i].cooling, Cooling::RateLimit { .. } | Cooling::Quota);
                let rate_limited = candidates().any(|i| !not_cooling(i) && limited(i));
                prop_assert_eq!(why.rate_limited, rate_limited, "call {}: {:?}", call, why);
                let waiting_invalid = (0..n).any(|i| !case.keys[i].excluded && !case.keys[i].disabled && !usable(i));
                prop_assert_eq!(why.invalid_until.is_some(), waiting_invalid, "call {}", call);
            }
        }
    }
    drop(held);
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 512,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6b65_7972_656c_6179),
        ..Config::default()
    })]

    #[test]
    fn choose_never_returns_an_ineligible_key_and_always_finds_an_eligible_one(case in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async { check(&case) })?;
    }
}

/// The generator reaches every state, and both outcomes, often enough for
/// the property to mean something.
#[test]
fn the_cases_cover_every_state_and_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let config = Config { rng_seed: RngSeed::Fixed(1), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..512 {
        let case = case().new_tree(&mut runner).unwrap().current();
        let mut note = |what: &'static str, yes: bool| *seen.entry(what).or_default() += usize::from(yes);
        let any = |f: &dyn Fn(&KeySetup) -> bool| case.keys.iter().any(f);
        note("excluded", any(&|k| k.excluded));
        note("disabled", any(&|k| k.disabled));
        note("rate limited", any(&|k| matches!(k.cooling, Cooling::RateLimit { .. })));
        note("quota", any(&|k| k.cooling == Cooling::Quota));
        note("transient", any(&|k| k.cooling == Cooling::Transient));
        note("not due", any(&|k| k.invalid == Invalid::NotDue));
        note("due", any(&|k| k.invalid == Invalid::Due));
        note("probing", any(&|k| k.invalid == Invalid::Probing));
        note("full", case.cap > 0 && any(&|k| k.full));
        note("pinned", case.pinned.is_some());
        let eligible = any(&|k| {
            !k.excluded
                && !k.disabled
                && matches!(k.invalid, Invalid::No | Invalid::Due)
                && k.cooling == Cooling::None
                && (case.cap == 0 || !k.full)
        });
        note("some eligible", eligible);
        note("none eligible", !eligible);
    }
    for (what, count) in &seen {
        assert!(*count >= 20, "only {count} of 512 cases with {what}: {seen:?}");
    }
}
