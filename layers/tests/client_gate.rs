//! ClientGate alone, against a mock inner service: a client's budget under
//! concurrent load (no overshoot past one request), its parallel cap held
//! until the answer's body ends, its tpm estimate replaced by the usage.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use keyrelay_layers::{
    BoxError, ProxyBody,
    budget::{Budget, BudgetPeriod},
    client::{Client, ClientDirectory, ClientPolicy, budget_of, key_digest},
    error::ErrorReply,
    extensions::{Endpoint, RouteTarget},
    pool::KeyPool,
    price::{Price, PriceTable},
    provider::ProviderId,
    record::RequestRecord,
    usage::Usage,
};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, service_fn};

/// $100 per million tokens, in and out: 1000 tokens cost $0.10.
fn pool() -> Arc<KeyPool> {
    let mut prices = PriceTable::default();
    prices.insert("openai/m", Price::new(100.0, 100.0));
    KeyPool::builder().prices(Arc::new(prices)).build().unwrap()
}

fn client(policy: ClientPolicy) -> Arc<Client> {
    let clients = ClientDirectory::default();
    clients.set_configured(vec![(key_digest("kr-test-key"), policy)]);
    clients.find("kr-test-key", 0).unwrap()
}

/// A request for `openai/m` with a 1000-token prompt estimate and a
/// 1000-token cap: it reserves $0.20.
fn request(client: &Arc<Client>, record: &RequestRecord) -> Request<Bytes> {
    let mut req = Request::new(Bytes::new());
    let target = RouteTarget::new(ProviderId::new("openai"), "m", Endpoint::ChatCompletions, false)
        .with_estimated_tokens(2000)
        .with_max_output(Some(1000));
    req.extensions_mut().insert(target);
    req.extensions_mut().insert(client.clone());
    req.extensions_mut().insert(record.clone());
    record.set_route(ProviderId::new("openai"), "m".into(), "m".into());
    req
}

fn body() -> ProxyBody {
    Full::new(Bytes::from_static(b"{}")).map_err(|never| match never {}).boxed_unsync()
}

type Inner = tower::util::BoxCloneSyncService<Request<Bytes>, Response<ProxyBody>, BoxError>;

fn code(err: &BoxError) -> &'static str {
    ErrorReply::from_error(err.as_ref()).code
}

#[tokio::test]
async fn concurrent_requests_overshoot_a_budget_by_at_most_one_request() {
    let budget = Budget::new(1.0, BudgetPeriod::Total);
    let client = client(ClientPolicy::new("ci").budget(budget));
    let meter = budget_of(&client).unwrap();
    // Each answer uses 1000 prompt and 500 completion tokens: $0.15.
    let release = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (release, entered) = (release.clone(), entered.clone());
        service_fn(move |req: Request<Bytes>| {
            let (release, entered) = (release.clone(), entered.clone());
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                release.acquire().await.unwrap().forget();
                req.extensions().get::<RequestRecord>().unwrap().set_usage(Usage::new(1000, 500));
                Ok::<_, BoxError>(Response::new(body()))
            }
        })
    };
    let inner: Inner = tower::util::BoxCloneSyncService::new(inner);
    let gate = keyrelay_layers::client::gate::ClientGateLayer::new(pool()).layer(inner);
    let mut admitted_per_wave = Vec::new();
    loop {
        let before = entered.load(Ordering::SeqCst);
        let refused = Arc::new(AtomicUsize::new(0));
        // One task drives every request (the gate's future is not asked to
        // be Send here), and a second future releases the admitted ones
        // once every request waits inside or was refused.
        let requests = futures_util::future::join_all((0..50).map(|_| {
            let (gate, client, refused) = (gate.clone(), client.clone(), refused.clone());
            async move {
                let record = RequestRecord::default();
                if let Err(err) = gate.oneshot(request(&client, &record)).await {
                    assert_eq!(code(&err), "budget_exceeded");
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
        let releaser = async {
            while entered.load(Ordering::SeqCst) - before + refused.load(Ordering::SeqCst) < 50 {
                tokio::task::yield_now().await;
            }
            let admitted = entered.load(Ordering::SeqCst) - before;
            release.add_permits(admitted);
            admitted
        };
        let (_, admitted) = tokio::join!(requests, releaser);
        let refused = refused.load(Ordering::SeqCst);
        assert_eq!(admitted + refused, 50);
        admitted_per_wave.push(admitted);
        if admitted == 0 {
            break;
        }
    }
    // $0.20 reserved each: five fit under $1; they spend $0.75; then two
    // more fit ($0.95 < $1); they spend $1.05; then none.
    assert_eq!(admitted_per_wave, [5, 2, 0]);
    let spent = meter.spent(0);
    assert!((spent - 1.05).abs() < 1e-9, "{spent}");
    assert!(spent <= 1.0 + 0.15 + 1e-9, "over by more than one request: {spent}");
    assert_eq!(meter.reserved(), 0.0, "every reservation was settled");
}

#[tokio::test]
async fn the_parallel_cap_holds_until_the_body_ends_and_tokens_are_reconciled() {
    let client = client(ClientPolicy::new("app").max_parallel(1).tpm(5000));
    let inner = service_fn(|req: Request<Bytes>| async move {
        req.extensions().get::<RequestRecord>().unwrap().set_usage(Usage::new(300, 200));
        Ok::<_, BoxError>(Response::new(body()))
    });
    let pool = pool();
    let mut gate = keyrelay_layers::client::gate::ClientGateLayer::new(pool.clone()).layer(inner);
    let record = RequestRecord::default();
    let answer = gate.ready().await.unwrap().call(request(&client, &record)).await.unwrap();
    assert_eq!(client.state().in_flight(), 1, "the answer's body still holds its place");
    let second = gate.ready().await.unwrap().call(request(&client, &RequestRecord::default())).await.unwrap_err();
    assert_eq!(code(&second), "rate_limit_exceeded");
    assert!(ErrorReply::from_error(second.as_ref()).retry_after.is_some());
    let second = pool.clock().now_unix_ms() / 1000;
    let reserved = client.state().window_use(second).1;
    assert_eq!(reserved, 2000, "the estimate is reserved");
    answer.into_body().collect().await.unwrap();
    assert_eq!(client.state().in_flight(), 0);
    assert_eq!(client.state().window_use(second).1, 500, "the usage replaced the estimate");
    let third = gate.ready().await.unwrap().call(request(&client, &RequestRecord::default())).await;
    assert!(third.is_ok());
}

#[tokio::test]
async fn requests_without_a_client_pass_untouched() {
    let inner = service_fn(|_req: Request<Bytes>| async { Ok::<_, BoxError>(Response::new(body())) });
    let gate = keyrelay_layers::client::gate::ClientGateLayer::new(pool()).layer(inner);
    assert!(gate.oneshot(Request::new(Bytes::new())).await.is_ok());
}
