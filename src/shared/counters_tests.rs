use keyrelay_layers::{
    pool::{ModelSnapshot, Secret},
    provider::Provider,
};

use super::*;

fn pool() -> Arc<KeyPool> {
    let openai = Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap();
    KeyPool::builder()
        .provider(openai, Default::default(), vec![Secret::new("sk-a"), Secret::new("sk-b")])
        .build()
        .unwrap()
}

fn counters(requests: u64, successes: u64, tokens_in: u64) -> Counters {
    let mut counters = Counters::default();
    counters.requests = requests;
    counters.successes = successes;
    counters.failures_rate_limit = requests - successes;
    counters.tokens_in = tokens_in;
    counters
}

/// Gives the pool's first key today's counters for `model`, as a restart
/// restores them.
fn use_first_key(pool: &KeyPool, model: &str, used: Counters) -> String {
    let mut snapshot = pool.snapshot();
    let (id, key) = snapshot.keys.iter_mut().next().unwrap();
    let mut saved = ModelSnapshot::default();
    saved.day = pool.clock().day(tokio::time::Instant::now());
    saved.counters = used;
    key.models.insert(model.to_owned(), saved);
    let id = id.clone();
    pool.restore(&snapshot);
    id
}

fn hash(fields: &[(&str, u64)]) -> HashMap<String, String> {
    fields.iter().map(|(field, value)| ((*field).to_owned(), value.to_string())).collect()
}

#[test]
fn fields_name_the_replica_the_model_and_the_counter_even_with_bars_in_the_model() {
    assert_eq!(field("3f9a", "gpt-4o", "requests"), "3f9a|gpt-4o|requests");
    assert_eq!(parse_field("3f9a|team|model|tokens_in"), Some(("3f9a", "team|model", "tokens_in")));
    assert_eq!(parse_field("no-bars"), None);
    assert_eq!(parse_field("one|bar"), None);
}

#[test]
fn the_others_are_summed_per_model_and_our_own_fields_left_out() {
    let hash =
        hash(&[("a|gpt-4o|requests", 3), ("b|gpt-4o|requests", 4), ("b|o3|requests", 1), ("own|gpt-4o|requests", 100)]);
    let mut bad = hash.clone();
    bad.insert("c|gpt-4o|requests".to_owned(), "lots".to_owned());
    bad.insert("garbage".to_owned(), "1".to_owned());
    for hash in [hash, bad] {
        let sums = others(&hash, "own");
        assert_eq!(sums["gpt-4o"]["requests"], 7);
        assert_eq!(sums["o3"]["requests"], 1);
        assert_eq!(sums.len(), 2);
    }
}

#[tokio::test]
async fn a_status_shows_its_own_counters_plus_the_others_in_the_same_shape() {
    let pool = pool();
    let id = use_first_key(&pool, "gpt-4o", counters(5, 4, 100));
    let status = pool.key_status(&id).unwrap();
    let local = serde_json::to_value(&status).unwrap();

    // No other replica: the same document as without Redis.
    assert_eq!(pooled(&status, &ByModel::new()), local);

    let hash = hash(&[
        ("b|gpt-4o|requests", 2),
        ("b|gpt-4o|successes", 2),
        ("b|gpt-4o|tokens_in", 10),
        ("b|gpt-4o|some_newer_counter", 9),
        ("c|o3|requests", 1),
        ("c|o3|failures_transient", 1),
    ]);
    let value = pooled(&status, &others(&hash, "a"));
    assert_eq!(value["today"]["requests"], 8);
    assert_eq!(value["today"]["successes"], 6);
    assert_eq!(value["today"]["failures_rate_limit"], 1);
    assert_eq!(value["today"]["failures_transient"], 1);
    assert_eq!(value["today"]["tokens_in"], 110);
    let models: Vec<&str> = value["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["gpt-4o", "o3"]);
    assert_eq!(value["models"][1]["today"]["requests"], 1);
    // Every counter, and no more than this version knows.
    let names = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&value["models"][1]["today"]), names(&local["today"]));
    assert_eq!(names(&value["today"]), names(&local["today"]));
    // The rest of the status as it was.
    for field in ["id", "state", "requests", "window", "settings", "cooldowns"] {
        assert_eq!(value[field], local[field], "{field}");
    }
}

#[test]
fn pool_days_are_named_by_their_date() {
    assert_eq!(day_label(0), "1970-01-01");
    assert_eq!(day_label(20_428), "2025-12-06");
}

#[tokio::test]
async fn only_keys_whose_counters_changed_are_written_each_under_its_hash_tag() {
    let settings = SharedSettings {
        redis_url: "redis://127.0.0.1:1".to_owned(),
        key_prefix: "kr:".to_owned(),
        call_timeout: Duration::from_millis(10),
        slot_lease: Duration::from_secs(30),
    };
    let writer = PoolCounters::new(&settings, Path::new("."));
    let pool = pool();
    let id = use_first_key(&pool, "gpt-4o", counters(2, 2, 7));
    let (day, keys) = pool.counters_today();
    let packed = |pipe: redis::Pipeline| String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();

    let first = packed(writer.writes("r1", day, &keys, &BTreeMap::new()));
    let hash = format!("kr:{{{id}}}:day:{}", day_label(day));
    assert!(first.contains(&hash), "{first}");
    assert!(first.contains("r1|gpt-4o|tokens_in"), "{first}");
    assert!(first.contains("EXPIRE"), "{first}");
    assert_eq!(first.matches("HSET").count(), 1, "the unused key is not written: {first}");
    assert!(!first.contains("sk-"), "no secret: {first}");

    let again = packed(writer.writes("r1", day, &keys, &keys));
    assert!(!again.contains("HSET") && again.contains("PING"), "nothing changed: {again}");
}

#[test]
fn the_replica_id_is_made_once_per_data_dir() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let nested = one.path().join("not-yet");
    let id = replica_id(&nested);
    assert_eq!(id.len(), 16);
    assert_eq!(replica_id(&nested), id, "the same after a restart");
    assert_ne!(replica_id(two.path()), id);
    std::fs::write(two.path().join(REPLICA_ID_FILE), "operator-chosen-7\n").unwrap();
    assert_eq!(replica_id(two.path()), "operator-chosen-7");
}
