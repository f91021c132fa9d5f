//! `POST /v1/token-count`: `{model, messages}` -> `{"token_count": N}`.
//!
//! Exact for OpenAI-family models (the `o200k_base` or `cl100k_base`
//! encoding that model uses, through tiktoken), counted as OpenAI bills a
//! chat: 3 tokens per message, 1 more for a `name`, 3 to prime the reply.
//! For every other model, and for non-text parts, an estimate: 4 characters
//! per token with the same per-message overhead (Anthropic's and Gemini's
//! tokenizers are not available offline). The answer says which:
//! `"method": "exact" | "estimate"`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use keyrelay_layers::{
    BoxError, ProxyBody,
    error::{BodyTooLarge, InvalidBody, InvalidModel, MissingModel, UnknownProvider},
    pool::KeyPool,
    provider::Dialect,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tiktoken_rs::CoreBPE;

use crate::status::json as json_response;

const TOKENS_PER_MESSAGE: usize = 3;
const TOKENS_PER_NAME: usize = 1;
const REPLY_PRIMING: usize = 3;
/// What an image part is counted as (a low-detail image), always an estimate.
const IMAGE_TOKENS: usize = 85;

#[derive(Deserialize)]
struct CountRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
}

/// How text becomes a count.
enum Counter {
    Exact(&'static CoreBPE),
    Estimate,
}

impl Counter {
    fn count(&self, text: &str) -> usize {
        match self {
            Self::Exact(bpe) => bpe.encode_with_special_tokens(text).len(),
            Self::Estimate => text.chars().count().div_ceil(4),
        }
    }
}

pub async fn handle<B>(pool: &KeyPool, max_body_bytes: usize, req: Request<B>) -> Result<Response<ProxyBody>, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = match Limited::new(req.into_body(), max_body_bytes).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(BodyTooLarge::new(max_body_bytes as u64).into());
        }
        Err(err) => return Err(InvalidBody::new(format_args!("could not read it: {err}")).into()),
    };
    let request: CountRequest = serde_json::from_slice(&body).map_err(InvalidBody::new)?;
    let model = request.model.ok_or_else(MissingModel::new)?;
    let (provider, name) = model
        .split_once('/')
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
        .ok_or_else(|| InvalidModel::new(&model))?;
    let pool = pool
        .provider(provider)
        .ok_or_else(|| UnknownProvider::new(provider, pool.providers().map(|p| p.provider().id().as_str())))?;
    let encoding = match pool.provider().dialect() {
        // An OpenAI-compatible router may name the vendor: `openai/gpt-4o`.
        Dialect::OpenAi => tiktoken_rs::tokenizer::get_tokenizer(name.rsplit('/').next().unwrap_or(name)),
        _ => None,
    };
    let counter = match encoding {
        Some(tokenizer) => Counter::Exact(tiktoken_rs::bpe_for_tokenizer(tokenizer)?),
        None => Counter::Estimate,
    };
    let (count, exact_parts) = count_messages(&counter, &request.messages);
    let exact = matches!(counter, Counter::Exact(_)) && exact_parts;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "token_count",
            "model": model,
            "token_count": count,
            "method": if exact { "exact" } else { "estimate" },
            "encoding": encoding.map(|t| format!("{t:?}")),
        }),
    ))
}

/// The count, and whether every part could be counted exactly.
fn count_messages(counter: &Counter, messages: &[Value]) -> (usize, bool) {
    let mut exact = true;
    let mut total = REPLY_PRIMING;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            total += counter.count(role);
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            total += TOKENS_PER_NAME + counter.count(name);
        }
        match message.get("content") {
            Some(Value::String(text)) => total += counter.count(text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("text").and_then(Value::as_str) {
                        Some(text) => total += counter.count(text),
                        None => {
                            exact = false;
                            total += IMAGE_TOKENS;
                        }
                    }
                }
            }
            _ => {}
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let function = call.get("function");
            for field in ["name", "arguments"] {
                if let Some(text) = function.and_then(|f| f.get(field)).and_then(Value::as_str) {
                    total += counter.count(text);
                }
            }
        }
    }
    (total, exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_openai_bills_a_chat() {
        let bpe = tiktoken_rs::bpe_for_tokenizer(tiktoken_rs::tokenizer::Tokenizer::O200kBase).unwrap();
        let messages: Vec<Value> = serde_json::from_str(
            r#"[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hello world"}]"#,
        )
        .unwrap();
        let (count, exact) = count_messages(&Counter::Exact(bpe), &messages);
        let text = |t: &str| bpe.encode_with_special_tokens(t).len();
        let expected = 3 + (3 + text("system") + text("You are helpful.")) + (3 + text("user") + text("Hello world"));
        assert_eq!((count, exact), (expected, true));
    }

    #[test]
    fn estimates_four_characters_a_token_and_images_make_it_an_estimate() {
        let messages: Vec<Value> = serde_json::from_str(
            r#"[{"role":"user","content":[{"type":"text","text":"12345678"},{"type":"image_url","image_url":{"url":"x"}}]}]"#,
        )
        .unwrap();
        let (count, exact) = count_messages(&Counter::Estimate, &messages);
        assert_eq!(count, 3 + 3 + 1 + 2 + IMAGE_TOKENS);
        assert!(!exact);
    }
}
