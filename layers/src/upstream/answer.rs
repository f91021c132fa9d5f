//! [`answer`]: the provider's answer as the client gets it. Bodies stream;
//! only a translated whole answer (and a translated error) is read,
//! bounded, to be translated at once.

use std::{pin::Pin, time::Duration};

use bytes::Bytes;
use http::{
    HeaderValue, Response, StatusCode,
    header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE},
    response::Parts,
};
use http_body_util::{BodyExt, Limited};

use super::{
    capture::{Capture, CapturedBody},
    cost,
    dialect::{self, client::ChainedStream},
    headers,
    meter::{MeteredBody, UsageMeter},
    native::{IdCapture, NativeBody},
    prepare::{Crossing, Plan},
    stream::{TranslatedStream, UsageChunkFilter},
};
use crate::{
    BoxError, ProxyBody,
    body::{CoalescedBody, IdleTimeoutBody, SseErrorTail, full},
    error::{UpstreamFailed, shape},
    extensions::{Endpoint, UpstreamError},
    pool::{KeyLease, ResponseOwner},
    provider::Dialect,
};

/// A translated provider's whole answer is read up to this size.
const MAX_TRANSLATED_BODY: usize = 32 << 20;
/// A translated provider's error body is read up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;

type Upstream = CoalescedBody<CapturedBody<hyper::body::Incoming>>;

/// The provider's answer as the client gets it: a success passes the usage
/// meter (and, for a stream, ends with an SSE error event should it break);
/// an error answer is left for RetryRotate to judge, in the client's shape.
pub(super) async fn answer(
    res: Response<hyper::body::Incoming>,
    lease: KeyLease,
    plan: Plan,
    idle: Duration,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = res.into_parts();
    let capture = Capture::for_record(plan.record.as_ref(), lease.secret());
    // Events that arrive in one read leave in one write (see CoalescedBody),
    // and a stream's first events with the response head; a whole answer
    // that came with its head is priced in it (see `cost`).
    let success = parts.status.is_success();
    let mut body = CoalescedBody::new(CapturedBody::new(body, capture));
    if success {
        std::future::poll_fn(|cx| Pin::new(&mut body).poll_prefetch(cx)).await;
    }
    headers::for_client(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    match &plan.crossing {
        Crossing::Hub => hub(parts, body, lease, &plan, idle).await,
        Crossing::Native => Ok(native(parts, body, lease, &plan, idle)),
        Crossing::Translated(_) => translated(parts, body, lease, &plan, idle).await,
    }
}

/// OpenAI's chat completions or embeddings in: passed through from an
/// OpenAI-compatible provider, translated from the others.
async fn hub(
    mut parts: Parts,
    body: Upstream,
    lease: KeyLease,
    plan: &Plan,
    idle: Duration,
) -> Result<Response<ProxyBody>, BoxError> {
    let success = parts.status.is_success();
    let split_think = plan.split_think && plan.endpoint == Endpoint::ChatCompletions;
    let passes_through = plan.dialect == Dialect::OpenAi && !split_think;
    if !success && plan.dialect == Dialect::OpenAi {
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    if success && plan.stream {
        let translator: Option<Box<dyn dialect::StreamTranslator>> = match (passes_through, plan.usage_injected) {
            (true, true) => Some(Box::new(UsageChunkFilter::default())),
            (true, false) => None,
            (false, _) => Some(
                dialect::for_dialect(plan.dialect)
                    .stream(plan.endpoint, &plan.model, plan.include_usage, now(), plan.hints)
                    .unwrap_or_else(|| Box::new(dialect::think::ThinkSplitter::new())),
            ),
        };
        return Ok(stream(parts, body, translator, !passes_through, &lease, plan, idle));
    }
    if success && passes_through {
        let whole = cost::usage_if_whole(&body);
        cost::set(&mut parts.headers, &lease, &plan.model, whole);
        // A whole body read once for the header is not read again at its end.
        let body = MeteredBody::new(body, meter(&lease, plan)).knowing(whole);
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    let bytes = read_whole(&mut parts, body, &lease).await?;
    let provider_dialect = dialect::for_dialect(plan.dialect);
    let translated = match (plan.dialect, success) {
        (Dialect::OpenAi, _) => dialect::think::split_completion(&bytes),
        (_, true) => provider_dialect.answer(plan.endpoint, &bytes, &plan.model, now(), plan.hints),
        (_, false) => Ok(provider_dialect.error_body(parts.status.as_u16(), &bytes)),
    };
    let translated = translated.map_err(|err| unreadable(&lease, err))?;
    if success {
        let usage = crate::usage::usage_in_tail(&translated);
        cost::set(&mut parts.headers, &lease, &plan.model, usage);
        meter(&lease, plan).finished(usage);
    }
    Ok(Response::from_parts(parts, full(translated)))
}

/// The client speaks the provider's dialect: the answer passes through as
/// it came, its usage (and a Responses id) read on the way.
fn native(mut parts: Parts, body: Upstream, lease: KeyLease, plan: &Plan, idle: Duration) -> Response<ProxyBody> {
    let success = parts.status.is_success();
    if !success {
        // Passed through as it came: RetryRotate reads every dialect's errors.
        return Response::from_parts(parts, body.boxed_unsync());
    }
    let ids = lease.pool().responses();
    if plan.endpoint == Endpoint::ResponseResource && parts.status == StatusCode::OK {
        // A deleted response is gone for good: forget its key.
        if let Some(deleted) = plan.deleted_response.as_deref() {
            ids.forget(deleted);
        }
    }
    let id = (plan.endpoint == Endpoint::Responses).then(|| {
        let owner = ResponseOwner::new(
            lease.provider_id().clone(),
            lease.key_id().clone(),
            &plan.model,
            lease.pool().clock().now_unix_ms(),
        );
        IdCapture::new(ids.clone(), owner)
    });
    if !plan.stream {
        cost::set(&mut parts.headers, &lease, &plan.model, cost::usage_if_whole(&body));
        return Response::from_parts(parts, NativeBody::new(body, false, meter(&lease, plan), id).boxed_unsync());
    }
    parts.headers.remove(CONTENT_LENGTH);
    let plain = parts.headers.get(CONTENT_ENCODING).is_none_or(|e| e == "identity");
    let body = NativeBody::new(IdleTimeoutBody::new(body, idle), true, meter(&lease, plan), id);
    if !plain {
        return Response::from_parts(parts, body.boxed_unsync());
    }
    let provider = lease.provider_id().as_str().to_owned();
    let body = SseErrorTail::new(body).in_dialect(plan.inbound()).counting_chunks_of(provider);
    Response::from_parts(parts, body.boxed_unsync())
}

/// Another dialect in: the provider's answer as chat completions, then as
/// the client's dialect.
async fn translated(
    mut parts: Parts,
    body: Upstream,
    lease: KeyLease,
    plan: &Plan,
    idle: Duration,
) -> Result<Response<ProxyBody>, BoxError> {
    let Crossing::Translated(hints) = &plan.crossing else { unreachable!("called for translated requests") };
    let client = dialect::client::for_inbound(plan.inbound()).expect("a translated dialect has its translator");
    let provider_dialect = dialect::for_dialect(plan.dialect);
    let success = parts.status.is_success();
    if success && plan.stream {
        let from_provider = match plan.dialect {
            Dialect::OpenAi if plan.split_think => Some(Box::new(dialect::think::ThinkSplitter::new()) as _),
            _ => provider_dialect.stream(Endpoint::ChatCompletions, &plan.model, plan.include_usage, now(), plan.hints),
        };
        let chain = ChainedStream::new(from_provider, client.stream(&plan.model, hints));
        return Ok(stream(parts, body, Some(Box::new(chain)), true, &lease, plan, idle));
    }
    let bytes = read_whole(&mut parts, body, &lease).await?;
    if !success {
        let status = parts.status.as_u16();
        let openai = match plan.dialect {
            Dialect::OpenAi => bytes,
            _ => provider_dialect.error_body(status, &bytes),
        };
        // RetryRotate judges the provider's words; the client reads its own shape.
        parts.extensions.insert(UpstreamError(openai.clone()));
        return Ok(Response::from_parts(parts, full(shape::reshape(plan.inbound(), status, &openai))));
    }
    let chat = match plan.dialect {
        Dialect::OpenAi if plan.split_think => dialect::think::split_completion(&bytes),
        Dialect::OpenAi => Ok(bytes),
        _ => provider_dialect.answer(Endpoint::ChatCompletions, &bytes, &plan.model, now(), plan.hints),
    };
    let chat = chat.map_err(|err| unreadable(&lease, err))?;
    let answer = client.answer(&chat, &plan.model, hints).map_err(|err| unreadable(&lease, err))?;
    let usage = crate::usage::usage_in_tail(&chat);
    cost::set(&mut parts.headers, &lease, &plan.model, usage);
    meter(&lease, plan).finished(usage);
    Ok(Response::from_parts(parts, full(answer)))
}

/// A successful stream as the client gets it: through `translator` if
/// any (`reframed`: the proxy writes the events, as `text/event-stream`),
/// metered, and ending with the client's error event should it break.
fn stream(
    mut parts: Parts,
    body: Upstream,
    translator: Option<Box<dyn dialect::StreamTranslator>>,
    reframed: bool,
    lease: &KeyLease,
    plan: &Plan,
    idle: Duration,
) -> Response<ProxyBody> {
    // The events may be re-framed, a usage chunk dropped or an error
    // event added: a provider's Content-Length no longer holds.
    parts.headers.remove(CONTENT_LENGTH);
    let plain = parts.headers.get(CONTENT_ENCODING).is_none_or(|e| e == "identity");
    if reframed {
        parts.headers.remove(CONTENT_ENCODING);
        parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    let body = IdleTimeoutBody::new(body, idle);
    let body: ProxyBody = match translator {
        // An encoded stream cannot be read: it passes as it is.
        Some(translator) if plain || reframed => {
            TranslatedStream::new(body, translator, Some(meter(lease, plan))).boxed_unsync()
        }
        _ => MeteredBody::new(body, meter(lease, plan)).boxed_unsync(),
    };
    if !plain && !reframed {
        // An encoded stream cannot take an event: it breaks as it is.
        return Response::from_parts(parts, body);
    }
    let provider = lease.provider_id().as_str().to_owned();
    let body = SseErrorTail::new(body).in_dialect(plan.inbound()).counting_chunks_of(provider);
    Response::from_parts(parts, body.boxed_unsync())
}

/// Reads a whole answer to translate it: new bytes, new length, the
/// proxy's content type.
async fn read_whole(parts: &mut Parts, body: Upstream, lease: &KeyLease) -> Result<Bytes, BoxError> {
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_ENCODING);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let success = parts.status.is_success();
    let limit = if success { MAX_TRANSLATED_BODY } else { MAX_ERROR_BODY };
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if success => Err(unreadable(lease, err)),
        // An error body that breaks or is huge: what matters is its status.
        Err(_) => Ok(Bytes::new()),
    }
}

fn meter(lease: &KeyLease, plan: &Plan) -> UsageMeter {
    UsageMeter::new(lease.clone(), plan.model.clone(), plan.record.clone())
}

fn unreadable(lease: &KeyLease, err: impl std::fmt::Display) -> BoxError {
    UpstreamFailed::new(lease.provider_id().as_str(), 1, format!("unreadable answer: {err}")).into()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
