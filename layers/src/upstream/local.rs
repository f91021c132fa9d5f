//! Token counts the provider cannot make in the client's dialect (an
//! Anthropic `count_tokens` for an OpenAI model, Gemini's `countTokens`
//! for a Claude model): estimated by the proxy, with no key and no call.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header::CONTENT_TYPE};

use super::dialect::client::{ClientRequest, for_inbound};
use crate::{BoxError, ProxyBody, body::full, error::InvalidBody, extensions::RouteTarget, pool::KeyLease};

/// The estimate for a token count that came without a key (KeySelect
/// leases none for them), else `None`: the request goes upstream.
pub(super) fn count_tokens(req: &Request<Bytes>) -> Option<Result<Response<ProxyBody>, BoxError>> {
    let target = req.extensions().get::<RouteTarget>()?;
    let endpoint = target.endpoint();
    if !endpoint.counts_tokens() || req.extensions().get::<KeyLease>().is_some() {
        return None;
    }
    let client = for_inbound(endpoint.inbound())?;
    let request = ClientRequest::new(endpoint, req.body(), target.model(), false);
    Some(match client.count_tokens(&request) {
        Ok(answer) => {
            let mut res = Response::new(full(answer));
            res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
        Err(err) => Err(InvalidBody::new(err).into()),
    })
}
