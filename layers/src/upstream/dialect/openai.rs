//! OpenAI and every OpenAI-compatible provider: the body passes through with
//! only `model` replaced by the provider's own model name.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Replaces the JSON string token at `span` (quotes included) with `model`.
///
/// Only the token changes: the rest of the body goes upstream byte for byte,
/// which is cheaper than re-serialising and keeps fields the proxy does not
/// know about exactly as the client wrote them.
pub fn rewrite_model(body: &Bytes, span: Range<usize>, model: &str) -> Bytes {
    let token = serde_json::to_string(model).expect("a string always serializes");
    let mut out = BytesMut::with_capacity(body.len() - span.len() + token.len());
    out.put_slice(&body[..span.start]);
    out.put_slice(token.as_bytes());
    out.put_slice(&body[span.end..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{extensions::Endpoint, parse::route_target, pool::KeyPool, provider::Provider};

    fn rewrite(body: &str) -> String {
        let provider = Provider::openai_compatible("openrouter", "http://127.0.0.1:9/v1").unwrap();
        let pool = KeyPool::builder().provider(provider, Default::default(), vec![]).build().unwrap();
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let target = route_target(&bytes, Endpoint::ChatCompletions, &pool).unwrap();
        let out = rewrite_model(&bytes, target.model_span().unwrap(), target.model());
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replaces_only_the_model_token() {
        assert_eq!(
            rewrite(
                r#"{"messages":[{"role":"user","content":"openrouter/x"}], "model" : "openrouter/meta-llama/llama-3-70b", "n":1}"#
            ),
            r#"{"messages":[{"role":"user","content":"openrouter/x"}], "model" : "meta-llama/llama-3-70b", "n":1}"#
        );
    }

    #[test]
    fn escapes_survive_the_round_trip() {
        let out = rewrite(r#"{"model":"openrouter\/a\"b\u00e9"}"#);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["model"], "a\"bé");
    }
}
