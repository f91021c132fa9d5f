//! Per-key settings in the pool: model binding, priority tiers and each
//! key's own concurrency cap, whatever the strategy.

mod support;

use std::sync::Arc;

use keyrelay_layers::{
    classify::{Failure, FailureClass},
    error::ErrorReply,
    extensions::{Endpoint, RouteTarget},
    pool::{Choice, KeyPool, KeySettings, ProviderOptions, Secret, Selection},
    provider::ProviderId,
    select::KeySelectLayer,
};
use support::{NOWHERE, key_id, openai, within};
use tower::{Layer, ServiceExt, service_fn};

fn bound(globs: &[&str]) -> KeySettings {
    KeySettings::new().models(&globs.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>())
}

/// free-1 and free-2 (tier 0, free-1 bound to gpt-4o*), paid (tier 1).
fn tiered(selection: Selection) -> Arc<KeyPool> {
    KeyPool::builder()
        .provider_keys(
            openai(NOWHERE),
            ProviderOptions::new(selection),
            vec![
                (Secret::new("free-1"), bound(&["gpt-4o*"])),
                (Secret::new("free-2"), KeySettings::new()),
                (Secret::new("paid"), KeySettings::new().priority(1)),
            ],
        )
        .build()
        .unwrap()
}

fn chosen(pool: &KeyPool, model: &str) -> Option<String> {
    match pool.provider("openai").unwrap().choose(model, &[], None) {
        Choice::Leased(lease, _) => Some(lease.key_id().as_str().to_owned()),
        Choice::Unavailable(_) => None,
    }
}

#[test]
fn a_key_bound_to_other_models_is_never_chosen() {
    for selection in [Selection::LeastUsed, Selection::RoundRobin] {
        let pool = tiered(selection);
        let mut seen: Vec<String> = (0..20).filter_map(|_| chosen(&pool, "gpt-4o-mini")).collect();
        seen.sort();
        seen.dedup();
        let mut tier_0 =
            [key_id("openai", "free-1").as_str().to_owned(), key_id("openai", "free-2").as_str().to_owned()];
        tier_0.sort();
        assert_eq!(seen, tier_0, "{selection}: both tier-0 keys serve gpt-4o-mini, the paid tier none");
        for _ in 0..20 {
            assert_eq!(chosen(&pool, "o3").unwrap(), key_id("openai", "free-2").as_str(), "{selection}");
        }
    }
}

#[test]
fn a_higher_tier_serves_only_while_no_lower_one_can() {
    let pool = tiered(Selection::LeastUsed);
    let openai = pool.provider("openai").unwrap();
    // free-2, the only tier-0 key for o3, is rate limited for it.
    let _ = openai.record(
        1,
        "o3",
        Err(Failure { class: FailureClass::RateLimit, retry_after: Some(std::time::Duration::from_secs(60)) }),
    );
    assert_eq!(chosen(&pool, "o3").unwrap(), key_id("openai", "paid").as_str());
    // free-2 cools for o3 only: gpt-4o-mini still has tier 0.
    let paid = key_id("openai", "paid");
    for _ in 0..5 {
        assert_ne!(chosen(&pool, "gpt-4o-mini").unwrap(), paid.as_str());
    }
    // Disabled free keys: the paid tier takes everything.
    pool.set_disabled(key_id("openai", "free-1").as_str(), true);
    pool.set_disabled(key_id("openai", "free-2").as_str(), true);
    assert_eq!(chosen(&pool, "gpt-4o-mini").unwrap(), paid.as_str());
}

#[test]
fn a_keys_own_cap_overrides_the_providers() {
    let pool = KeyPool::builder()
        .provider_keys(
            openai(NOWHERE),
            ProviderOptions::new(Selection::LeastUsed).max_concurrent_per_key(5),
            vec![(Secret::new("small"), KeySettings::new().max_concurrent(1))],
        )
        .build()
        .unwrap();
    let openai = pool.provider("openai").unwrap();
    let held = openai.choose("m", &[], None);
    assert!(matches!(held, Choice::Leased(..)));
    let slots = openai.slots(0, "m").expect("a capped key has slots");
    assert_eq!(slots.available_permits(), 1, "its own cap of 1, not the provider's 5");
    assert_eq!(pool.key_statuses()[0].settings.max_concurrent, 1);
}

#[tokio::test]
async fn a_model_no_key_serves_is_refused_with_403() {
    let pool = KeyPool::builder()
        .provider_keys(openai(NOWHERE), ProviderOptions::default(), vec![(Secret::new("k"), bound(&["gpt-4o*"]))])
        .build()
        .unwrap();
    let inner =
        service_fn(|_: http::Request<()>| async { Ok::<_, keyrelay_layers::BoxError>(http::Response::new(())) });
    let mut req = http::Request::new(());
    req.extensions_mut().insert(RouteTarget::new(ProviderId::new("openai"), "o3", Endpoint::ChatCompletions, false));
    let err = within(KeySelectLayer::new(pool).layer(inner).oneshot(req)).await.unwrap_err();
    let reply = ErrorReply::from_error(&*err);
    assert_eq!((reply.status.as_u16(), reply.code), (403, "model_not_allowed"));
    assert!(reply.message.contains("o3") && reply.message.contains("bound"), "{}", reply.message);
}

#[test]
fn key_statuses_show_the_settings_never_the_secret() {
    let pool = tiered(Selection::LeastUsed);
    let statuses = pool.key_statuses();
    assert_eq!(statuses[0].settings.models, ["gpt-4o*"]);
    assert_eq!((statuses[2].settings.priority, statuses[2].settings.weight), (1, 1));
    assert!(!format!("{statuses:?}").contains("free-1"));
}

#[test]
fn weighted_selection_uses_each_keys_weight() {
    let pool = KeyPool::builder()
        .provider_keys(
            openai(NOWHERE),
            ProviderOptions::new(Selection::Weighted),
            vec![(Secret::new("light"), KeySettings::new()), (Secret::new("heavy"), KeySettings::new().weight(3))],
        )
        .build()
        .unwrap();
    let heavy = key_id("openai", "heavy");
    let picks = 4000;
    let to_heavy = (0..picks).filter(|_| chosen(&pool, "m").as_deref() == Some(heavy.as_str())).count();
    // 75% expected; the tolerance is seven standard deviations wide.
    let share = to_heavy as f64 / picks as f64;
    assert!((0.70..0.80).contains(&share), "heavy key share {share}");
}

#[tokio::test(start_paused = true)]
async fn reliability_selection_moves_away_from_a_failing_key() {
    let pool = KeyPool::builder()
        .provider_keys(
            openai(NOWHERE),
            ProviderOptions::new(Selection::Reliability),
            vec![(Secret::new("flaky"), KeySettings::new()), (Secret::new("steady"), KeySettings::new())],
        )
        .build()
        .unwrap();
    let openai = pool.provider("openai").unwrap();
    let ms = std::time::Duration::from_millis;
    for _ in 0..5 {
        openai.record_timed(0, "m", Err(Failure { class: FailureClass::Transient, retry_after: None }), Some(ms(50)));
        openai.record_timed(1, "m", Ok(()), Some(ms(400)));
        // Three failures in a row rest a key; these are apart in time.
        let _ = openai.record_timed(0, "m", Ok(()), Some(ms(300)));
    }
    let steady = key_id("openai", "steady");
    for _ in 0..10 {
        assert_eq!(chosen(&pool, "m").unwrap(), steady.as_str(), "the key that fails half the time stays out");
    }
    // Its failures fade while the other key keeps serving (at its own
    // latency): within the hour it is tried again.
    for _ in 0..60 {
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        openai.record_timed(1, "m", Ok(()), Some(ms(400)));
    }
    let seen: Vec<_> = (0..10).filter_map(|_| chosen(&pool, "m")).collect();
    assert!(seen.iter().any(|k| k == key_id("openai", "flaky").as_str()), "{seen:?}");
}
