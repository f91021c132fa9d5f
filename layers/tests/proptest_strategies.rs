//! The selection strategies on their own (`pool::pick` and `Reliability`,
//! without a pool): properties over random candidate sets, shares over many
//! seeded draws, the sequential order, and the reliability strategy drifting
//! away from a flaky key and back on a paused clock.
//!
//! Every random number comes from a fixed seed, so the run is deterministic.

use std::{
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Duration,
};

use keyrelay_layers::pool::{Candidate, Reliability, Selection, pick};
use proptest::{
    prelude::*,
    test_runner::{Config, RngSeed},
};
use tokio::time::{Instant, advance};

const MAX_KEYS: usize = 12;

/// Candidates as `choose` hands them over: some of the provider's keys, in
/// config order, in any state.
#[derive(Clone, Debug)]
struct Case {
    key_count: usize,
    candidates: Vec<Candidate>,
    selection: Selection,
    cursor: usize,
    draw: f64,
}

fn candidate(index: usize) -> impl Strategy<Value = Candidate> {
    // Few distinct values, so that ties (which the strategies must break
    // the documented way) are common.
    (0u32..3, 0u64..4, 0u64..4, 0u32..=10, prop_oneof![Just(1.0), Just(0.5), 0.0..=1.0f64]).prop_map(
        move |(in_flight, requests, last_used_unix_ms, weight, reliability)| {
            Candidate::new(index)
                .with_load(in_flight, requests, last_used_unix_ms)
                .with_weight(weight)
                .with_reliability(reliability)
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let selection = prop::sample::select(Selection::ALL.to_vec());
    (1..=MAX_KEYS, selection, any::<usize>(), 0.0..1.0f64)
        .prop_flat_map(|(key_count, selection, cursor, draw)| {
            let present = prop::collection::vec(any::<bool>(), key_count);
            (Just(key_count), present, Just(selection), Just(cursor), Just(draw))
        })
        .prop_flat_map(|(key_count, present, selection, cursor, draw)| {
            let candidates: Vec<_> = (0..key_count).filter(|&i| present[i]).map(candidate).collect();
            (Just(key_count), candidates, Just(selection), Just(cursor), Just(draw))
        })
        .prop_map(|(key_count, candidates, selection, cursor, draw)| Case {
            key_count,
            candidates,
            selection,
            cursor,
            draw,
        })
}

fn load(c: &Candidate) -> (u32, u64, u64) {
    (c.in_flight, c.requests, c.last_used_unix_ms)
}

/// Positions from `start` in config order, wrapping.
fn distance(index: usize, start: usize, key_count: usize) -> usize {
    (index + key_count - start % key_count) % key_count
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let cursor = AtomicUsize::new(case.cursor);
    let picked = pick(case.selection, &case.candidates, case.key_count, &cursor, case.draw);
    let Some(index) = picked else {
        prop_assert!(case.candidates.is_empty(), "no pick among {:?}", case.candidates);
        return Ok(());
    };
    let chosen = case.candidates.iter().find(|c| c.index == index);
    prop_assert!(chosen.is_some(), "picked {} which is not a candidate", index);
    let chosen = chosen.unwrap();
    let others = || case.candidates.iter();

    match case.selection {
        Selection::LeastUsed => {
            prop_assert!(others().all(|c| load(chosen) <= load(c)), "not the least used");
        }
        Selection::RoundRobin => {
            let first = others().map(|c| distance(c.index, case.cursor, case.key_count)).min().unwrap();
            prop_assert_eq!(distance(index, case.cursor, case.key_count), first);
            prop_assert_eq!(cursor.load(Relaxed), case.cursor.wrapping_add(1), "moved past");
        }
        Selection::Sequential => {
            let first = others().map(|c| distance(c.index, case.cursor, case.key_count)).min().unwrap();
            prop_assert_eq!(distance(index, case.cursor, case.key_count), first);
            prop_assert_eq!(cursor.load(Relaxed), index, "moved to the key");
            let again = pick(case.selection, &case.candidates, case.key_count, &cursor, case.draw);
            prop_assert_eq!(again, Some(index), "stays");
        }
        Selection::Reliability => {
            let best = others().map(|c| c.reliability).fold(0.0, f64::max);
            prop_assert!(chosen.reliability >= best - 1e-9, "{} is not the best score {}", chosen.reliability, best);
            let tied = others().filter(|c| (c.reliability - chosen.reliability).abs() <= 1e-9);
            prop_assert!(tied.clone().all(|c| load(chosen) <= load(c)), "a tie goes to the least used");
        }
        Selection::Random | Selection::Weighted => {
            prop_assert_eq!(cursor.load(Relaxed), case.cursor, "the draw strategies leave the cursor");
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 2048,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x7374_7261_7465_6779),
        ..Config::default()
    })]

    #[test]
    fn a_pick_is_a_candidate_chosen_by_the_strategys_rule(case in case()) {
        check(&case)?;
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 24,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x7765_6967_6874),
        ..Config::default()
    })]

    /// Over 20k seeded draws, each key's share is its weight's share within
    /// three points (about eight standard deviations at worst).
    #[test]
    fn weighted_shares_follow_the_weights(weights in prop::collection::vec(0u32..=8, 1..=6), seed in any::<u64>()) {
        let candidates: Vec<_> =
            weights.iter().enumerate().map(|(i, &weight)| Candidate::new(i).with_weight(weight)).collect();
        let shares = shares(Selection::Weighted, &candidates, seed);
        let total: u32 = weights.iter().map(|w| (*w).max(1)).sum();
        for (i, weight) in weights.iter().enumerate() {
            let expected = f64::from((*weight).max(1)) / f64::from(total);
            prop_assert!((shares[i] - expected).abs() < 0.03, "key {} share {} expected {}", i, shares[i], expected);
        }
    }
}

const PICKS: usize = 20_000;

/// Each candidate's share of `PICKS` seeded picks.
fn shares(selection: Selection, candidates: &[Candidate], seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cursor = AtomicUsize::new(0);
    let mut counts = [0usize; MAX_KEYS];
    for _ in 0..PICKS {
        counts[pick(selection, candidates, MAX_KEYS, &cursor, rng.f64()).unwrap()] += 1;
    }
    counts.iter().map(|&n| n as f64 / PICKS as f64).collect()
}

#[test]
fn weights_one_to_three_share_a_quarter_and_three_quarters() {
    let free = Candidate::new(0).with_weight(1);
    let paid = Candidate::new(1).with_weight(3);
    let shares = shares(Selection::Weighted, &[free, paid], 14);
    assert!((shares[0] - 0.25).abs() < 0.03, "{shares:?}");
    assert!((shares[1] - 0.75).abs() < 0.03, "{shares:?}");
}

#[test]
fn random_is_uniform_whatever_the_load_and_weights() {
    // Load and weights are not random's business.
    let candidates = [
        Candidate::new(1).with_load(9, 0, 0).with_weight(5),
        Candidate::new(3),
        Candidate::new(4).with_load(0, 1000, 0),
        Candidate::new(10).with_reliability(0.1),
    ];
    let shares = shares(Selection::Random, &candidates, 15);
    for c in &candidates {
        assert!((shares[c.index] - 0.25).abs() < 0.03, "{shares:?}");
    }
    assert_eq!(shares.iter().filter(|&&s| s > 0.0).count(), 4, "only candidates");
}

#[test]
fn sequential_stays_on_a_key_until_it_leaves_then_the_next_in_order_stays() {
    let cursor = AtomicUsize::new(0);
    let keys: Vec<_> = (0..4).map(Candidate::new).collect();
    let without = |gone: &[usize]| keys.iter().filter(|c| !gone.contains(&c.index)).copied().collect::<Vec<_>>();
    let seq = |gone: &[usize]| pick(Selection::Sequential, &without(gone), 4, &cursor, 0.0).unwrap();

    let mut seen = Vec::new();
    seen.extend((0..3).map(|_| seq(&[])));
    // Key 0 cools: key 1 takes over, and keeps the requests once 0 is back.
    seen.extend([seq(&[0]), seq(&[]), seq(&[])]);
    // Key 1 is full and 2 failed for this request: 3.
    seen.push(seq(&[1, 2]));
    // 3 cools too: wrap around to 0.
    seen.extend([seq(&[3]), seq(&[])]);
    assert_eq!(seen, [0, 0, 0, 1, 1, 1, 3, 0, 0]);
}

/// A provider with three keys under `reliability`, one request every two
/// seconds, each answered in a second. Key 1 fails every attempt it gets
/// between minutes 10 and 15, then behaves. Returns each key's picks per
/// five-minute window.
async fn simulate_reliability() -> Vec<[usize; 3]> {
    const STEP: Duration = Duration::from_secs(2);
    const LATENCY: Duration = Duration::from_secs(1);
    let start = Instant::now();
    let cursor = AtomicUsize::new(0);
    let mut history = [Reliability::new(); 3];
    let mut requests = [0u64; 3];
    let mut last_used = [0u64; 3];
    let mut windows = vec![[0usize; 3]; 12];

    for step in 0..60 * 60 / STEP.as_secs() {
        let now = Instant::now();
        let minute = (now - start).as_secs() / 60;
        let candidates: Vec<_> = (0..3)
            .map(|i| Candidate::new(i).with_load(0, requests[i], last_used[i]).with_reliability(history[i].score(now)))
            .collect();
        let key = pick(Selection::Reliability, &candidates, 3, &cursor, 0.0).unwrap();
        let ok = !(key == 1 && (10..15).contains(&minute));
        history[key].record(ok, LATENCY, now);
        requests[key] += 1;
        last_used[key] = step + 1;
        windows[(minute / 5) as usize][key] += 1;
        advance(STEP).await;
    }
    windows
}

#[tokio::test(start_paused = true)]
async fn reliability_drifts_away_from_a_flaky_key_and_back_after_it_recovers() {
    let windows = simulate_reliability().await;
    let share = |window: usize, key: usize| windows[window][key] as f64 / windows[window].iter().sum::<usize>() as f64;

    // Minutes 0 to 10: every key behaves, and load spreads.
    for window in 0..2 {
        for key in 0..3 {
            assert!((share(window, key) - 1.0 / 3.0).abs() < 0.1, "window {window}: {windows:?}");
        }
    }
    // Minutes 10 to 30: key 1 fails its first attempt and is left out
    // (never cooled: only preferred less) while the others serve.
    for window in 2..6 {
        assert!(windows[window][1] <= 1, "window {window}: {windows:?}");
    }
    // Once its failure is mostly forgotten it is tried again, behaves, and
    // takes its share back.
    for window in 7..12 {
        assert!(share(window, 1) > 0.25, "window {window}: {windows:?}");
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x7265_6c69_6162),
        ..Config::default()
    })]

    /// Whatever the history: the score stays in [0, 1], a failure now never
    /// raises it, and a success in no time never lowers it.
    #[test]
    fn scores_stay_in_range_and_move_the_right_way(
        outcomes in prop::collection::vec((any::<bool>(), 0u64..120_000, 0u64..600_000), 0..40),
        then_ms in 0u64..3_600_000,
    ) {
        let start = Instant::now();
        let mut history = Reliability::new();
        let mut at = start;
        for (ok, latency_ms, gap_ms) in outcomes {
            at += Duration::from_millis(gap_ms);
            history.record(ok, Duration::from_millis(latency_ms), at);
            let score = history.score(at);
            prop_assert!((0.0..=1.0).contains(&score), "{}", score);
        }
        let now = at + Duration::from_millis(then_ms);
        let before = history.score(now);
        let mut failed = history;
        failed.record(false, Duration::from_secs(1), now);
        prop_assert!(failed.score(now) < before);
        let mut succeeded = history;
        succeeded.record(true, Duration::ZERO, now);
        prop_assert!(succeeded.score(now) >= before);
    }
}
