//! OpenAI and every OpenAI-compatible provider: the body passes through with
//! only `model` replaced by the provider's own model name.
//!
//! Parse records where the `model` token sits; only that token is replaced.
//! A stream also asks for the usage chunk, which the proxy drops again before
//! the client sees it (unless the client asked for it too).
//!
//! ```
//! use bytes::Bytes;
//! use keyrelay_layers::{
//!     extensions::Endpoint, parse::route_target, pool::KeyPool, provider::Provider, upstream::dialect::openai,
//! };
//!
//! let groq = Provider::openai_compatible("groq", "https://api.groq.com/openai/v1").unwrap();
//! let pool = KeyPool::builder().provider(groq, Default::default(), vec![]).build().unwrap();
//! let body = Bytes::from_static(br#"{"model": "groq/llama-3.1-8b-instant", "stream": true}"#);
//! let target = route_target(&body, Endpoint::ChatCompletions, &pool).unwrap();
//!
//! let out = openai::rewrite_model(&body, target.model_span().unwrap(), target.model());
//! assert_eq!(&out[..], br#"{"model": "llama-3.1-8b-instant", "stream": true}"#);
//! let out = openai::ask_for_stream_usage(&out, target.has_stream_options());
//! assert_eq!(
//!     &out[..],
//!     br#"{"model": "llama-3.1-8b-instant", "stream": true,"stream_options":{"include_usage":true}}"#
//! );
//! assert!(openai::is_usage_only_chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#));
//! ```

use std::{borrow::Cow, ops::Range};

use bytes::{BufMut, Bytes, BytesMut};

use super::{AnswerHints, OutboundRequest, ProviderDialect, StreamTranslator, TranslateError, Translated};
use crate::extensions::Endpoint;

/// OpenAI's API as a [`ProviderDialect`]: the pass-through. Its request
/// only gets the provider's model name ([`rewrite_model`]); answers,
/// streams and errors go to the client as they came. Asking for the usage
/// chunk ([`ask_for_stream_usage`]) and splitting `<think>` tags
/// ([`super::think`]) depend on the provider's settings, not on the wire
/// format, and stay with the upstream service.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAi;

impl ProviderDialect for OpenAi {
    fn request(&self, req: &OutboundRequest<'_>) -> Result<Translated, TranslateError> {
        let body = match &req.model_span {
            Some(span) => rewrite_model(req.body, span.clone(), req.model),
            None => req.body.clone(),
        };
        Ok(Translated { path: Cow::Borrowed(req.endpoint.path_suffix()), body, hints: AnswerHints::default() })
    }

    fn answer(&self, _: Endpoint, body: &Bytes, _: &str, _: u64, _: AnswerHints) -> Result<Bytes, TranslateError> {
        Ok(body.clone())
    }

    fn stream(&self, _: Endpoint, _: &str, _: bool, _: u64, _: AnswerHints) -> Option<Box<dyn StreamTranslator>> {
        None
    }

    fn error_body(&self, _: u16, body: &Bytes) -> Bytes {
        body.clone()
    }

    fn model_ids(&self, body: &[u8]) -> Result<Vec<String>, TranslateError> {
        crate::upstream::models::parse_model_list(body).map_err(|e| TranslateError::new(e.to_string()))
    }

    fn native_path(&self, endpoint: Endpoint, _: &str, client_path: &str) -> Option<Cow<'static, str>> {
        match endpoint {
            Endpoint::ChatCompletions | Endpoint::Embeddings | Endpoint::Responses | Endpoint::ResponsesInputTokens => {
                Some(Cow::Borrowed(endpoint.path_suffix()))
            }
            // `/v1/responses/{id}[/cancel|/input_items]` below the base URL.
            Endpoint::ResponseResource => {
                let bare = client_path.strip_prefix("/v1").unwrap_or(client_path);
                Some(Cow::Owned(bare.trim_start_matches('/').to_owned()))
            }
            _ => None,
        }
    }
}

/// `body` without its `stream_options`, for OpenAI-compatible servers that
/// refuse the field; a body that is not a JSON object goes as it is.
pub fn without_stream_options(body: &Bytes) -> Bytes {
    let Ok(mut object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) else {
        return body.clone();
    };
    if object.remove("stream_options").is_none() {
        return body.clone();
    }
    serde_json::to_vec(&object).map_or_else(|_| body.clone(), Bytes::from)
}

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

/// Asks an OpenAI-compatible upstream to end its stream with a usage
/// chunk (`stream_options.include_usage`), so that every stream is
/// counted. `has_options`: the body already has `stream_options` (Parse
/// knows). The proxy drops that chunk before the client sees it
/// ([`is_usage_only_chunk`]).
pub fn ask_for_stream_usage(body: &Bytes, has_options: bool) -> Bytes {
    if has_options {
        // Rare: the client set other stream options. Rewrite the object.
        let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else { return body.clone() };
        if let Some(options) = value.get_mut("stream_options").and_then(|o| o.as_object_mut()) {
            options.insert("include_usage".into(), true.into());
        } else if let Some(object) = value.as_object_mut() {
            object.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
        }
        return serde_json::to_vec(&value).map(Bytes::from).unwrap_or_else(|_| body.clone());
    }
    // Common: splice the field in before the object's closing brace.
    let end = body.iter().rposition(|&b| b == b'}');
    let Some(end) = end else { return body.clone() };
    let before = body[..end].trim_ascii_end();
    let empty = before.ends_with(b"{");
    let mut out = BytesMut::with_capacity(body.len() + 40);
    out.put_slice(before);
    out.put_slice(if empty { b"" } else { b"," });
    out.put_slice(br#""stream_options":{"include_usage":true}"#);
    out.put_slice(&body[end..]);
    out.freeze()
}

/// Whether an SSE event's data is the usage-only chunk the proxy asked for:
/// `choices` empty and `usage` set.
pub fn is_usage_only_chunk(data: &str) -> bool {
    // Every chunk of a stream that asked for usage says `"usage":null`; only
    // one with a usage object is worth parsing.
    if !crate::usage::has_usage_object(data.as_bytes()) {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Chunk>(data).is_ok_and(|c| c.choices.is_some_and(|c| c.is_empty()) && c.usage.is_some())
}

#[cfg(test)]
mod stream_options_tests {
    use super::*;

    #[test]
    fn stream_options_go_for_servers_that_refuse_them() {
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!(&without_stream_options(&body)[..], br#"{"model":"m","stream":true}"#);
        let plain = Bytes::from_static(br#"{"model": "m"}"#);
        assert_eq!(without_stream_options(&plain), plain, "untouched without them");
    }
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

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn asks_for_usage_without_touching_the_rest() {
        let out = ask_for_stream_usage(&Bytes::from_static(br#"{"model":"m","stream":true} "#), false);
        assert_eq!(&out[..], br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}} "#);
        let out = ask_for_stream_usage(&Bytes::from_static(br#"{"stream":true,"stream_options":{"x":1}}"#), true);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"], serde_json::json!({"x": 1, "include_usage": true}));
        // `null` is replaced: a second `stream_options` key could be the one
        // a provider ignores.
        let out = ask_for_stream_usage(&Bytes::from_static(br#"{"stream":true,"stream_options":null}"#), true);
        assert_eq!(String::from_utf8_lossy(&out).matches("stream_options").count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"], serde_json::json!({"include_usage": true}));
    }

    #[test]
    fn recognises_only_the_usage_chunk() {
        assert!(is_usage_only_chunk(r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#));
        assert!(!is_usage_only_chunk(r#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":null}"#));
        assert!(!is_usage_only_chunk(r#"{"id":"c","choices":[],"usage":null}"#));
        assert!(!is_usage_only_chunk("[DONE]"));
    }
}
