//! The Lua scripts of shared admission (`src/shared/lua/`) against a real
//! Redis, one key's limits at a time: concurrency slots as leases with an
//! expiry (admitted up to the cap, freed by expiry or release, extended by
//! renewal), the `rpm`/`tpm`/`rpd` windows with the time they free, the
//! budget with its holds and spend, and the messages a release publishes.
//! Windows are set up by writing their buckets directly, seconds away from
//! any edge, so no test waits for a minute to pass or races a second's tick.

mod support;

use futures_util::StreamExt;
use redis::{AsyncCommands, Script, aio::MultiplexedConnection};

use support::{redis::RedisServer, within};

const SLOTS: &str = "kr{k}:slots:gpt-4o";
const RPM: &str = "kr{k}:rpm";
const TPM: &str = "kr{k}:tpm";
const RPD: &str = "kr{k}:rpd:20454";
const SPENT: &str = "kr{k}:spent:0";
const HOLDS: &str = "kr{k}:holds";
const WAITING: &str = "kr{k}:waiting";
const CHANNEL: &str = "kr-events";

/// One attempt as `RedisLimits::ask` puts it to `admit.lua` (0: no limit).
#[derive(Clone, Copy, Debug)]
struct Ask {
    lease: &'static str,
    cap: u64,
    lease_ms: u64,
    rpm: u64,
    tpm: u64,
    rpd: u64,
    tokens: u64,
    day_end: u64,
    limit: u64,
    reserve: u64,
    floor: u64,
    period_end: u64,
}

const ASK: Ask = Ask {
    lease: "r1-0",
    cap: 0,
    lease_ms: 60_000,
    rpm: 0,
    tpm: 0,
    rpd: 0,
    tokens: 0,
    day_end: 0,
    limit: 0,
    reserve: 0,
    floor: 0,
    period_end: 0,
};

/// The end of an attempt as `RedisLimits::release_all` puts it.
#[derive(Clone, Copy, Debug, Default)]
struct Release {
    lease: &'static str,
    reserve: u64,
    cost: u64,
    delta: i64,
    at: u64,
    period_end: u64,
    limit: u64,
}

struct Redis {
    _server: RedisServer,
    client: redis::Client,
    con: MultiplexedConnection,
}

impl Redis {
    async fn start() -> Self {
        let server = RedisServer::start().await;
        let client = redis::Client::open(server.url()).unwrap();
        let con = client.get_multiplexed_async_connection().await.unwrap();
        Self { _server: server, client, con }
    }

    async fn admit(&mut self, ask: Ask) -> Vec<i64> {
        let script = Script::new(include_str!("../src/shared/lua/admit.lua"));
        let mut call = script.prepare_invoke();
        for key in [SLOTS, RPM, TPM, RPD, SPENT, HOLDS, WAITING] {
            call.key(key);
        }
        let args = [ask.cap, ask.lease_ms, ask.rpm, ask.tpm, ask.rpd, ask.tokens, ask.day_end, ask.limit, ask.reserve];
        call.arg(ask.lease).arg(&args[..]).arg(ask.floor).arg(ask.period_end);
        call.invoke_async(&mut self.con).await.unwrap()
    }

    async fn release(&mut self, release: Release) {
        let script = Script::new(include_str!("../src/shared/lua/release.lua"));
        let answer: i64 = script
            .key(SLOTS)
            .key(HOLDS)
            .key(SPENT)
            .key(TPM)
            .key(WAITING)
            .arg(release.lease)
            .arg(release.reserve)
            .arg(release.cost)
            .arg(release.delta)
            .arg(release.at)
            .arg(release.period_end)
            .arg(CHANNEL)
            .arg("freed")
            .arg(release.limit)
            .arg("spent:")
            .invoke_async(&mut self.con)
            .await
            .unwrap();
        assert_eq!(answer, 1);
    }

    /// Renews `lease`'s slot and hold for `lease_ms`: whether its slot was.
    async fn renew(&mut self, lease: &str, reserve: u64, lease_ms: u64) -> i64 {
        let script = Script::new(include_str!("../src/shared/lua/renew.lua"));
        let hold = format!("{lease}:{reserve}");
        script.key(SLOTS).key(HOLDS).arg(lease).arg(hold).arg(lease_ms).invoke_async(&mut self.con).await.unwrap()
    }

    /// Redis's clock: the second, and the millisecond.
    async fn now(&mut self) -> (u64, u64) {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.con).await.unwrap();
        (secs, secs * 1000 + micros / 1000)
    }

    async fn leases(&mut self) -> Vec<String> {
        self.con.zrange(SLOTS, 0, -1).await.unwrap()
    }

    /// Subscribed to the events channel; see [`Events::next`].
    async fn events(&self) -> Events {
        let mut pubsub = self.client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(CHANNEL).await.unwrap();
        Events { pubsub, publisher: self.con.clone(), marks: 0 }
    }
}

struct Events {
    pubsub: redis::aio::PubSub,
    publisher: MultiplexedConnection,
    marks: u32,
}

impl Events {
    /// What the scripts published since the last call, in order: a mark
    /// published now comes after them, so "nothing" is known without a
    /// wait.
    async fn since(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("mark-{}", self.marks);
        let _: i64 = self.publisher.publish(CHANNEL, &mark).await.unwrap();
        let mut messages = self.pubsub.on_message();
        let mut seen = Vec::new();
        within("the mark to come back", async {
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap();
                if payload == mark {
                    break;
                }
                seen.push(payload);
            }
        })
        .await;
        seen
    }
}

#[tokio::test]
async fn a_cap_admits_exactly_cap_leases_then_refuses_until_the_earliest_expiry() {
    let mut redis = Redis::start().await;
    let ask = Ask { cap: 3, ..ASK };
    for lease in ["r1-0", "r2-0", "r1-1"] {
        let answer = redis.admit(Ask { lease, ..ask }).await;
        assert_eq!((answer[0], answer[2]), (1, -1), "{lease} admitted, no budget: {answer:?}");
    }
    let first: u64 = redis.con.zscore(SLOTS, "r1-0").await.unwrap();
    let refused = redis.admit(Ask { lease: "r3-0", ..ask }).await;
    assert_eq!(refused, [0, 1, first as i64, -1], "slots, until the first lease expires");
    assert_eq!(redis.leases().await.len(), 3);
    let waiting: i64 = redis.con.pttl(WAITING).await.unwrap();
    assert!(0 < waiting && waiting <= 5000, "someone waits, for a while: {waiting}");
    assert!(redis.con.pttl::<_, i64>(SLOTS).await.unwrap() > 60_000, "the slots outlive their leases");
}

#[tokio::test]
async fn an_expired_lease_frees_its_slot_and_is_not_renewed_once_another_took_it() {
    let mut redis = Redis::start().await;
    // Two slots: one held by a replica that died and renews nothing, one by
    // a running attempt (which keeps the set alive).
    let ask = Ask { cap: 2, ..ASK };
    assert_eq!(redis.admit(Ask { lease: "r9-0", lease_ms: 80, ..ask }).await[0], 1);
    assert_eq!(redis.admit(Ask { lease: "r1-0", ..ask }).await[0], 1);
    let late = Ask { lease: "r2-0", ..ask };
    assert_eq!(redis.admit(late).await[..2], [0, 1], "both slots are leased");
    within("the dead replica's lease to expire", async {
        while redis.admit(late).await[0] != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(redis.leases().await, ["r1-0", "r2-0"], "the expired lease is gone");
    assert_eq!(redis.renew("r9-0", 0, 60_000).await, 0, "not brought back");
    assert_eq!(redis.leases().await, ["r1-0", "r2-0"]);
}

#[tokio::test]
async fn a_replica_with_a_shorter_lease_never_cuts_the_life_of_the_others_leases() {
    let mut redis = Redis::start().await;
    let ask = Ask { cap: 2, limit: 1_000_000, reserve: 10, ..ASK };
    assert_eq!(redis.admit(ask).await[0], 1, "a minute's lease");
    let short = Ask { lease: "r2-0", lease_ms: 100, ..ask };
    assert_eq!(redis.admit(short).await[0], 1);
    assert_eq!(redis.renew("r2-0", 10, 200).await, 1);
    for key in [SLOTS, HOLDS] {
        let ttl: i64 = redis.con.pttl(key).await.unwrap();
        assert!(ttl > 60_000, "{key} lives as long as its longest lease: {ttl} ms");
    }
}

#[tokio::test]
async fn renewal_extends_a_running_lease_and_its_hold_but_never_a_released_one() {
    let mut redis = Redis::start().await;
    let ask = Ask { cap: 1, lease_ms: 1000, limit: 1_000_000, reserve: 300, ..ASK };
    let answer = redis.admit(ask).await;
    assert_eq!((answer[0], answer[2]), (1, 0), "{answer:?}");
    let (_, now) = redis.now().await;
    assert_eq!(redis.renew("r1-0", 300, 60_000).await, 1);
    let slot: u64 = redis.con.zscore(SLOTS, "r1-0").await.unwrap();
    let hold: u64 = redis.con.zscore(HOLDS, "r1-0:300").await.unwrap();
    assert!(slot >= now + 59_000 && hold == slot, "a minute more: {slot} {hold} at {now}");
    assert!(redis.con.pttl::<_, i64>(SLOTS).await.unwrap() > 60_000);
    assert!(redis.con.pttl::<_, i64>(HOLDS).await.unwrap() > 60_000);

    redis.release(Release { lease: "r1-0", reserve: 300, ..Release::default() }).await;
    assert_eq!(redis.renew("r1-0", 300, 60_000).await, 0);
    assert!(redis.leases().await.is_empty(), "a released lease stays released");
    assert_eq!(redis.con.zcard::<_, u64>(HOLDS).await.unwrap(), 0);
    assert_eq!(redis.admit(Ask { lease: "r2-0", ..ask }).await[0], 1, "its slot is free");
}

#[tokio::test]
async fn release_frees_the_slot_and_hold_charges_the_cost_and_corrects_the_tpm_bucket() {
    let mut redis = Redis::start().await;
    let ask = Ask { cap: 1, tpm: 10_000, tokens: 500, limit: 1_000_000, reserve: 300_000, period_end: 0, ..ASK };
    let answer = redis.admit(ask).await;
    assert_eq!((answer[0], answer[2]), (1, 0));
    let second = answer[1] as u64;
    assert_eq!(redis.con.hget::<_, _, u64>(TPM, second).await.unwrap(), 500, "the estimate counts");
    assert_eq!(redis.con.zrange::<_, Vec<String>>(HOLDS, 0, -1).await.unwrap(), ["r1-0:300000"]);

    // 300 tokens used, not 500; $0.0002 spent.
    let release =
        Release { lease: "r1-0", reserve: 300_000, cost: 200_000, delta: -200, at: second, ..Default::default() };
    redis.release(Release { limit: 1_000_000, ..release }).await;
    assert!(redis.leases().await.is_empty());
    assert_eq!(redis.con.zcard::<_, u64>(HOLDS).await.unwrap(), 0, "the hold is gone");
    assert_eq!(redis.con.get::<_, u64>(SPENT).await.unwrap(), 200_000);
    assert_eq!(redis.con.hget::<_, _, u64>(TPM, second).await.unwrap(), 300, "the real tokens");

    // A correction never takes a bucket below zero.
    let answer = redis.admit(Ask { lease: "r1-1", tokens: 100, ..ask }).await;
    let second = answer[1] as u64;
    let before: u64 = redis.con.hget(TPM, second).await.unwrap();
    redis.release(Release { lease: "r1-1", delta: -1_000_000, at: second, ..release }).await;
    assert_eq!(redis.con.hget::<_, _, u64>(TPM, second).await.unwrap(), 0, "was {before}");
    assert_eq!(redis.con.get::<_, u64>(SPENT).await.unwrap(), 400_000);
}

#[tokio::test]
async fn a_hold_of_any_size_is_the_member_its_release_removes() {
    let mut redis = Redis::start().await;
    // $100,000 in nano-dollars: past the digits Lua prints a number with.
    let reserve = 100_000_000_000_000;
    let ask = Ask { limit: 10 * reserve, reserve, ..ASK };
    assert_eq!(redis.admit(ask).await[0], 1);
    let holds: Vec<String> = redis.con.zrange(HOLDS, 0, -1).await.unwrap();
    assert_eq!(holds, [format!("r1-0:{reserve}")]);
    assert_eq!(redis.renew("r1-0", reserve, 120_000).await, 0, "no slot to renew (no cap)");
    assert!(redis.con.zscore::<_, _, u64>(HOLDS, &holds[0]).await.unwrap() > redis.now().await.1 + 60_000);
    redis.release(Release { lease: "r1-0", reserve, limit: 10 * reserve, ..Default::default() }).await;
    assert_eq!(redis.con.zcard::<_, u64>(HOLDS).await.unwrap(), 0);
}

#[tokio::test]
async fn release_says_freed_only_when_someone_waited_and_spent_once_when_the_budget_runs_out() {
    let mut redis = Redis::start().await;
    let mut events = redis.events().await;
    let ask = Ask { cap: 1, limit: 1_000_000, reserve: 100, period_end: 0, ..ASK };
    let release = Release { reserve: 100, limit: 1_000_000, ..Release::default() };
    assert_eq!(redis.admit(ask).await[0], 1);
    redis.release(Release { lease: "r1-0", ..release }).await;
    assert_eq!(events.since().await, Vec::<String>::new(), "nobody waited");

    assert_eq!(redis.admit(Ask { lease: "r1-1", ..ask }).await[0], 1);
    assert_eq!(redis.admit(Ask { lease: "r2-0", ..ask }).await[..2], [0, 1], "r2 waits for the slot");
    redis.release(Release { lease: "r1-1", cost: 900_000, ..release }).await;
    assert_eq!(events.since().await, ["freed"], "the waiter hears of it, under the limit still");
    assert!(!redis.con.exists::<_, bool>(WAITING).await.unwrap(), "the flag is taken");

    // Two attempts in flight as the budget runs out: the release that
    // crosses the limit says so, the one after it does not.
    let both = Ask { cap: 2, ..ask };
    let answer = redis.admit(Ask { lease: "r2-0", ..both }).await;
    assert_eq!((answer[0], answer[2]), (1, 900_000), "admitted with the spend: {answer:?}");
    assert_eq!(redis.admit(Ask { lease: "r3-0", ..both }).await[0], 1, "something is left");
    redis.release(Release { lease: "r2-0", cost: 200_000, ..release }).await;
    assert_eq!(events.since().await, ["spent:1100000}"]);
    redis.release(Release { lease: "r3-0", cost: 50_000, ..release }).await;
    assert_eq!(events.since().await, Vec::<String>::new(), "once");
    assert_eq!(redis.con.get::<_, u64>(SPENT).await.unwrap(), 1_150_000);
}

#[tokio::test]
async fn rpm_refuses_the_next_request_until_its_oldest_second_leaves_the_minute() {
    let mut redis = Redis::start().await;
    let ask = Ask { rpm: 3, ..ASK };
    for lease in ["r1-0", "r1-1", "r2-0"] {
        assert_eq!(redis.admit(Ask { lease, ..ask }).await[0], 1);
    }
    let refused = redis.admit(Ask { lease: "r2-1", ..ask }).await;
    let seconds: Vec<u64> = redis.con.hkeys(RPM).await.unwrap();
    let oldest = seconds.into_iter().min().unwrap();
    assert_eq!(refused, [0, 2, ((oldest + 60) * 1000) as i64, -1], "a window, until the oldest second leaves");

    // A minute of history: a stale second is forgotten, and the retry is
    // when enough of the oldest live seconds leave.
    redis.con.del::<_, ()>(RPM).await.unwrap();
    let (now, _) = redis.now().await;
    let buckets = [(now - 70, 9), (now - 50, 2), (now - 30, 1)];
    redis.con.hset_multiple::<_, _, _, ()>(RPM, &buckets).await.unwrap();
    assert_eq!(redis.admit(ask).await, [0, 2, ((now + 10) * 1000) as i64, -1]);
    assert!(!redis.con.hexists::<_, _, bool>(RPM, now - 70).await.unwrap(), "stale, gone");
    let wider = Ask { rpm: 4, ..ask };
    assert_eq!(redis.admit(wider).await[0], 1, "3 of 4 used: admitted");
}

#[tokio::test]
async fn tpm_frees_for_a_large_need_when_the_window_has_room_for_the_limit_itself() {
    let mut redis = Redis::start().await;
    let (now, _) = redis.now().await;
    redis.con.hset_multiple::<_, _, _, ()>(TPM, &[(now - 40, 600), (now - 20, 300)]).await.unwrap();
    let ask = Ask { tpm: 1000, ..ASK };
    let at = |second: u64| (second * 1000) as i64;
    assert_eq!(redis.admit(Ask { tokens: 200, ..ask }).await, [0, 2, at(now + 20), -1], "when 600 leave");
    // More than the whole limit: it waits for an empty window, not forever.
    assert_eq!(redis.admit(Ask { tokens: 50_000, ..ask }).await, [0, 2, at(now + 40), -1]);
    assert_eq!(redis.admit(Ask { tokens: 100, ..ask }).await[0], 1, "100 fit now");

    redis.con.del::<_, ()>(TPM).await.unwrap();
    let answer = redis.admit(Ask { tokens: 50_000, ..ask }).await;
    assert_eq!(answer[0], 1, "an empty window takes any need");
    assert_eq!(redis.con.hget::<_, _, u64>(TPM, answer[1]).await.unwrap(), 50_000, "counted whole");
}

#[tokio::test]
async fn rpd_refuses_until_the_days_end_once_the_day_is_used() {
    let mut redis = Redis::start().await;
    let (_, now_ms) = redis.now().await;
    let day_end = now_ms + 3_600_000;
    let ask = Ask { rpd: 2, day_end, ..ASK };
    assert_eq!(redis.admit(ask).await[0], 1);
    assert_eq!(redis.admit(ask).await[0], 1);
    assert_eq!(redis.admit(ask).await, [0, 2, day_end as i64, -1]);
    let ttl: i64 = redis.con.pttl(RPD).await.unwrap();
    assert!(ttl > 3_600_000, "kept past the day's end: {ttl}");
    assert_eq!(redis.con.get::<_, u64>(RPD).await.unwrap(), 2, "a refusal counts nothing");
}

#[tokio::test]
async fn a_budget_admits_while_anything_is_left_then_is_reserved_then_spent() {
    let mut redis = Redis::start().await;
    let (_, now_ms) = redis.now().await;
    let period_end = now_ms + 86_400_000;
    let ask = Ask { limit: 1000, reserve: 500, period_end, ..ASK };
    for lease in ["r1-0", "r1-1"] {
        assert_eq!(redis.admit(Ask { lease, ..ask }).await[0], 1, "{lease}: something is left");
    }
    let refused = redis.admit(Ask { lease: "r2-0", ..ask }).await;
    let (_, after) = redis.now().await;
    assert_eq!(refused[..2], [0, 3], "the 1000 held cover the budget: {refused:?}");
    assert!((now_ms + 1000..=after + 1000).contains(&(refused[2] as u64)), "asked again in a second");
    assert_eq!(refused[3], 0, "nothing spent yet");
    assert_eq!(redis.con.get::<_, String>(WAITING).await.unwrap(), "1", "a release will say it freed");

    let release = Release { lease: "r1-0", reserve: 500, cost: 100, period_end, limit: 1000, ..Default::default() };
    redis.release(release).await;
    let answer = redis.admit(Ask { lease: "r2-0", ..ask }).await;
    assert_eq!((answer[0], answer[2]), (1, 100), "100 spent and 500 held leave some: {answer:?}");

    redis.con.set::<_, _, ()>(SPENT, 1000).await.unwrap();
    assert_eq!(redis.admit(ask).await, [0, 4, period_end as i64, 1000], "spent until the period ends");
    redis.con.set::<_, _, ()>(SPENT, 999).await.unwrap();
    redis.con.del::<_, ()>(HOLDS).await.unwrap();
    let answer = redis.admit(Ask { lease: "r3-0", ..ask }).await;
    assert_eq!((answer[0], answer[2]), (1, 999), "one nano-dollar left is something: {answer:?}");
}

#[tokio::test]
async fn the_spend_a_replica_knows_restores_a_spend_redis_lost() {
    let mut redis = Redis::start().await;
    let (_, now_ms) = redis.now().await;
    let period_end = now_ms + 86_400_000;
    // Redis restarted empty; the replica's meter, restored from the ledger,
    // says 500 were spent this period.
    let ask = Ask { limit: 10_000, period_end, ..ASK };
    let answer = redis.admit(Ask { floor: 500, ..ask }).await;
    assert_eq!((answer[0], answer[2]), (1, 500), "{answer:?}");
    assert_eq!(redis.con.get::<_, u64>(SPENT).await.unwrap(), 500);
    assert!(redis.con.pttl::<_, i64>(SPENT).await.unwrap() > 86_400_000, "kept past the period");
    let answer = redis.admit(Ask { lease: "r1-1", floor: 50, ..ask }).await;
    assert_eq!(answer[2], 500, "a lower floor changes nothing");

    redis.con.del::<_, ()>(SPENT).await.unwrap();
    let answer = redis.admit(Ask { lease: "r1-2", floor: 10_000, ..ask }).await;
    assert_eq!(answer[..2], [0, 4], "spent, says the ledger: {answer:?}");
}

#[tokio::test]
async fn a_replicas_charges_still_on_their_way_to_redis_are_not_counted_twice() {
    let mut redis = Redis::start().await;
    redis.con.set::<_, _, ()>(SPENT, 100).await.unwrap();
    let ask = Ask { cap: 2, limit: 10_000, reserve: 10, floor: 100, ..ASK };
    let answer = redis.admit(ask).await;
    assert_eq!((answer[0], answer[2]), (1, 100), "{answer:?}");
    // r1-0's answer cost 50: the replica's meter says 150 at once, while
    // its release is still queued. The next attempt is asked with that.
    let next = redis.admit(Ask { lease: "r1-1", floor: 150, ..ask }).await;
    assert_eq!(next[0], 1);
    redis.release(Release { lease: "r1-0", reserve: 10, cost: 50, limit: 10_000, ..Default::default() }).await;
    assert_eq!(redis.con.get::<_, u64>(SPENT).await.unwrap(), 150, "100 before, 50 for r1-0: once");
}
