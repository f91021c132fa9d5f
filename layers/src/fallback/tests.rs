use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::{
    error::{ErrorReply, InvalidBody, ModelBlocked},
    extensions::{Endpoint, RequiredKey},
    filter::ModelRules,
    pool::{KeyId, Secret},
    provider::{Provider, ProviderId},
};

fn pool() -> Arc<KeyPool> {
    let p = |id| Provider::openai_compatible(id, "http://127.0.0.1:9/v1").unwrap();
    let blocked = p("blocked").with_model_rules(ModelRules::new(&["*".into()], &[]));
    KeyPool::builder()
        .provider(p("openai"), Default::default(), vec![])
        .provider(p("openrouter"), Default::default(), vec![])
        .provider(p("groq"), Default::default(), vec![])
        .provider(blocked, Default::default(), vec![])
        .build()
        .unwrap()
}

const BODY: &str = r#"{"model": "fast", "stream": true}"#;

/// A request for the alias `fast`: openai first, then `rest`.
fn request(rest: &[(&str, &str)]) -> Request<Bytes> {
    let fallbacks: Arc<[AliasTarget]> = rest.iter().map(|(p, m)| AliasTarget::new(p, m)).collect();
    let target = RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, true)
        .with_model_span(10..16)
        .with_fallbacks(fallbacks);
    let mut req = Request::post("/v1/chat/completions").body(Bytes::from_static(BODY.as_bytes())).unwrap();
    req.extensions_mut().insert(target);
    req
}

type Seen = Arc<Mutex<Vec<RouteTarget>>>;

/// An inner service that records each target it is given and answers
/// with what `answer` says for it.
fn recording(
    answer: impl Fn(&RouteTarget) -> Result<Response<String>, BoxError> + Clone + Send + 'static,
) -> (impl Service<Request<Bytes>, Response = Response<String>, Error = BoxError, Future: Send> + Clone + Send, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let svc = service_fn(move |req: Request<Bytes>| {
        let target = req.extensions().get::<RouteTarget>().unwrap().clone();
        assert_eq!(req.body(), BODY.as_bytes(), "every try sends the same bytes");
        log.lock().unwrap().push(target.clone());
        let answer = answer(&target);
        async move { answer }
    });
    (svc, seen)
}

fn served_by(target: &RouteTarget) -> Response<String> {
    Response::new(format!("{}/{}", target.provider(), target.model()))
}

fn pool_errors() -> Vec<BoxError> {
    let wait = Duration::from_secs(30);
    vec![
        AllKeysCooling::new("openai", "gpt-4o", wait).into(),
        KeysRecovering::new("openai", "gpt-4o", wait).into(),
        NoUsableKey::new("openai", None).into(),
        NoKeyConfigured::new("openai").into(),
        ModelNotServed::new("openai", "gpt-4o").into(),
        KeysExhausted::new("openai").into(),
        UpstreamFailed::new("openai", 3, "500 from key openai:1".to_owned()).into(),
    ]
}

#[tokio::test]
async fn each_pool_error_moves_to_the_next_target() {
    for (i, _) in pool_errors().iter().enumerate() {
        let (inner, seen) = recording(move |target| match target.provider().as_str() {
            "openai" => Err(pool_errors().swap_remove(i)),
            _ => Ok(served_by(target)),
        });
        let res = FallbackLayer::new(pool()).layer(inner).oneshot(request(&[("openrouter", "openai/gpt-4o")])).await;
        assert_eq!(res.unwrap().body(), "openrouter/openai/gpt-4o", "error #{i}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn each_try_gets_its_target_with_the_first_ones_span_and_stream() {
    let (inner, seen) = recording(|target| match target.provider().as_str() {
        "groq" => Ok(served_by(target)),
        _ => Err(NoUsableKey::new(target.provider().as_str(), None).into()),
    });
    let req = request(&[("openrouter", "openai/gpt-4o"), ("groq", "llama-3.3-70b")]);
    let res = FallbackLayer::new(pool()).layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.body(), "groq/llama-3.3-70b");
    let seen = seen.lock().unwrap();
    let tried: Vec<_> = seen.iter().map(|t| (t.provider().as_str(), t.model())).collect();
    assert_eq!(tried, [("openai", "gpt-4o"), ("openrouter", "openai/gpt-4o"), ("groq", "llama-3.3-70b")]);
    for target in &seen[1..] {
        assert_eq!(
            (target.model_span(), target.stream(), target.endpoint()),
            (Some(10..16), true, Endpoint::ChatCompletions)
        );
        assert!(target.fallbacks().is_none(), "a fallback's target carries no further list");
    }
}

#[tokio::test]
async fn an_upstream_client_error_is_the_requests_own_and_does_not_move() {
    let (inner, seen) = recording(|target| {
        let mut res = served_by(target);
        *res.status_mut() = StatusCode::BAD_REQUEST;
        Ok(res)
    });
    let res = FallbackLayer::new(pool()).layer(inner).oneshot(request(&[("openrouter", "x")])).await.unwrap();
    assert_eq!((res.status(), res.body().as_str()), (StatusCode::BAD_REQUEST, "openai/gpt-4o"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_proxys_own_refusals_do_not_move() {
    let refusals: Vec<fn() -> BoxError> =
        vec![|| InvalidBody::new("no").into(), || ModelBlocked::new("openai", "gpt-4o", "*").into()];
    for refusal in refusals {
        let (inner, seen) = recording(move |_| Err(refusal()));
        let err = FallbackLayer::new(pool()).layer(inner).oneshot(request(&[("openrouter", "x")])).await.unwrap_err();
        assert_eq!(ErrorReply::from_error(&*err).status, refusal_status(&*refusal()));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

fn refusal_status(err: &(dyn Error + 'static)) -> StatusCode {
    ErrorReply::from_error(err).status
}

#[tokio::test]
async fn when_every_target_fails_the_last_error_is_returned() {
    let (inner, seen) = recording(|target| Err(NoKeyConfigured::new(target.provider().as_str()).into()));
    let req = request(&[("openrouter", "a"), ("groq", "b")]);
    let err = FallbackLayer::new(pool()).layer(inner).oneshot(req).await.unwrap_err();
    assert!(ErrorReply::from_error(&*err).message.contains("`groq`"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_blocked_target_is_skipped() {
    let (inner, seen) = recording(|target| match target.provider().as_str() {
        "openai" => Err(NoUsableKey::new("openai", None).into()),
        _ => Ok(served_by(target)),
    });
    let req = request(&[("blocked", "anything"), ("groq", "b")]);
    let res = FallbackLayer::new(pool()).layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.body(), "groq/b");
    assert_eq!(seen.lock().unwrap().len(), 2, "the blocked provider was never asked");
}

#[tokio::test(start_paused = true)]
async fn nothing_falls_back_once_the_deadline_has_passed() {
    let (inner, seen) =
        recording(|target| Err(AllKeysCooling::new(target.provider().as_str(), "m", Duration::ZERO).into()));
    // The first target's pool used the whole deadline before giving up.
    let slow = tower::ServiceBuilder::new()
        .then(|res| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            res
        })
        .service(inner);
    let mut req = request(&[("openrouter", "a")]);
    req.extensions_mut().insert(Deadline(Instant::now() + Duration::from_secs(5)));
    let err = FallbackLayer::new(pool()).layer(slow).oneshot(req).await.unwrap_err();
    assert!(err.to_string().contains("`openai`"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // With time left, the next target gets its turn.
    let (inner, seen) =
        recording(|target| Err(AllKeysCooling::new(target.provider().as_str(), "m", Duration::ZERO).into()));
    let mut req = request(&[("openrouter", "a")]);
    req.extensions_mut().insert(Deadline(Instant::now() + Duration::from_secs(5)));
    FallbackLayer::new(pool()).layer(inner).oneshot(req).await.unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_request_bound_to_one_key_stays_with_it() {
    let (inner, seen) = recording(|_| Err(NoUsableKey::new("openai", None).into()));
    let mut req = request(&[("openrouter", "a")]);
    let target = req.extensions().get::<RouteTarget>().unwrap().clone();
    let bound =
        target.with_required_key(RequiredKey::new(KeyId::new(&ProviderId::new("openai"), &Secret::new("k")), "resp_1"));
    req.extensions_mut().insert(bound);
    FallbackLayer::new(pool()).layer(inner).oneshot(req).await.unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<Bytes>, Response<String>, _>(FallbackLayer::new(pool()));
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
}
