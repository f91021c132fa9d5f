//! [`answer`]: the provider's answer as the client gets it. Bodies stream;
//! only a translated whole answer (and a translated error) is read,
//! bounded, to be translated at once.

use std::{pin::Pin, time::Duration};

use bytes::Bytes;
use http::{
    HeaderValue, Response,
    header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE},
};
use http_body_util::{BodyExt, Limited};

use super::{
    capture::{Capture, CapturedBody},
    dialect, headers,
    meter::{MeteredBody, UsageMeter},
    prepare::Plan,
    stream::{TranslatedStream, UsageChunkFilter},
};
use crate::{
    BoxError, ProxyBody,
    body::{CoalescedBody, IdleTimeoutBody, SseErrorTail, full},
    error::UpstreamFailed,
    extensions::Endpoint,
    pool::KeyLease,
    provider::Dialect,
};

/// A translated provider's whole answer is read up to this size.
const MAX_TRANSLATED_BODY: usize = 32 << 20;
/// A translated provider's error body is read up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The provider's answer as the client gets it: a success passes the usage
/// meter (and, for a stream, ends with an SSE error event should it break);
/// an error answer is left for RetryRotate to judge, in OpenAI's shape.
pub(super) async fn answer(
    res: Response<hyper::body::Incoming>,
    lease: KeyLease,
    plan: Plan,
    idle: Duration,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = res.into_parts();
    let capture = Capture::for_record(plan.record.as_ref(), lease.secret());
    // Events that arrive in one read leave in one write (see CoalescedBody),
    // and a stream's first events with the response head.
    let success = parts.status.is_success();
    let mut body = CoalescedBody::new(CapturedBody::new(body, capture));
    if plan.stream && success {
        std::future::poll_fn(|cx| Pin::new(&mut body).poll_prefetch(cx)).await;
    }
    headers::for_client(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    let split_think = plan.split_think && plan.endpoint == Endpoint::ChatCompletions;
    let passes_through = plan.dialect == Dialect::OpenAi && !split_think;
    if !success && plan.dialect == Dialect::OpenAi {
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    let meter = || UsageMeter::new(lease.clone(), plan.model.clone(), plan.record.clone());
    if success && plan.stream {
        // The events may be re-framed, a usage chunk dropped or an error
        // event added: a provider's Content-Length no longer holds.
        parts.headers.remove(CONTENT_LENGTH);
        let plain = parts.headers.get(CONTENT_ENCODING).is_none_or(|e| e == "identity");
        let body = IdleTimeoutBody::new(body, idle);
        let body: ProxyBody = match (passes_through, plan.usage_injected && plain) {
            (true, true) => {
                TranslatedStream::new(body, Box::new(UsageChunkFilter::default()), Some(meter())).boxed_unsync()
            }
            (true, false) => MeteredBody::new(body, meter()).boxed_unsync(),
            (false, _) => {
                parts.headers.remove(CONTENT_ENCODING);
                parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                let translator = dialect::for_dialect(plan.dialect)
                    .stream(plan.endpoint, &plan.model, plan.include_usage, now(), plan.hints)
                    .unwrap_or_else(|| Box::new(dialect::think::ThinkSplitter::new()));
                TranslatedStream::new(body, translator, Some(meter())).boxed_unsync()
            }
        };
        if !plain {
            // An encoded stream cannot take an event: it breaks as it is.
            return Ok(Response::from_parts(parts, body));
        }
        let provider = lease.provider_id().as_str().to_owned();
        let body = SseErrorTail::new(body).counting_chunks_of(provider);
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    if success && passes_through {
        return Ok(Response::from_parts(parts, MeteredBody::new(body, meter()).boxed_unsync()));
    }
    // A translated answer: new bytes, new length, the proxy's content type.
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_ENCODING);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let limit = if success { MAX_TRANSLATED_BODY } else { MAX_ERROR_BODY };
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if success => {
            let provider = lease.provider_id().as_str();
            return Err(UpstreamFailed::new(provider, 1, format!("unreadable answer: {err}")).into());
        }
        // An error body that breaks or is huge: what matters is its status.
        Err(_) => Bytes::new(),
    };
    let provider_dialect = dialect::for_dialect(plan.dialect);
    let translated = match (plan.dialect, success) {
        (Dialect::OpenAi, _) => dialect::think::split_completion(&bytes),
        (_, true) => provider_dialect.answer(plan.endpoint, &bytes, &plan.model, now(), plan.hints),
        (_, false) => Ok(provider_dialect.error_body(parts.status.as_u16(), &bytes)),
    };
    let translated = translated.map_err(|err| {
        let provider = lease.provider_id().as_str();
        UpstreamFailed::new(provider, 1, format!("unreadable answer: {err}"))
    })?;
    if success {
        meter().finished(crate::usage::usage_in_tail(&translated));
    }
    Ok(Response::from_parts(parts, full(translated)))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
