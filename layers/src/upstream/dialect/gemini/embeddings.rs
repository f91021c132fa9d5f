//! OpenAI embeddings requests as `batchEmbedContents`, and the answers back.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{TranslateError, err, error::error_message, parse_object, to_bytes};
use crate::upstream::dialect::AnswerHints;

/// A `batchEmbedContents` request for an OpenAI embeddings request.
pub fn embeddings_request(body: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    translate(body, model).map(|(body, _)| body)
}

/// [`embeddings_request`], and what its answer's translation must know
/// (whether the client wants base64 vectors), from one parse of the body.
pub(super) fn translate(body: &[u8], model: &str) -> Result<(Bytes, AnswerHints), TranslateError> {
    let request = parse_object(body, "the embeddings request")?;
    let hints = AnswerHints {
        embeddings_base64: match request.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(format) if format == "float" => false,
            Some(format) if format == "base64" => true,
            Some(_) => return Err(err("`encoding_format` must be float or base64")),
        },
        ..AnswerHints::default()
    };
    const TEXT_ONLY: &str = "Gemini embeds text: `input` must be a string or an array of strings (not token ids)";
    let texts: Vec<&str> = match request.get("input") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(|item| item.as_str().ok_or_else(|| err(TEXT_ONLY))).collect::<Result<_, _>>()?
        }
        Some(Value::Array(_)) => return Err(err("`input` must not be empty")),
        None | Some(Value::Null) => return Err(err("`input` is missing")),
        Some(_) => return Err(err(TEXT_ONLY)),
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Some(n.clone()),
        Some(_) => return Err(err("`dimensions` must be a positive integer")),
    };
    let name = format!("models/{model}");
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|text| {
            let mut request = json!({ "model": name, "content": { "parts": [{ "text": text }] } });
            if let (Some(n), Value::Object(fields)) = (&dimensions, &mut request) {
                fields.insert("outputDimensionality".into(), Value::Number(n.clone()));
            }
            request
        })
        .collect();
    Ok((to_bytes(&json!({ "requests": requests })), hints))
}

/// An OpenAI embeddings answer (float vectors) from a `batchEmbedContents` answer.
pub fn embeddings_response(body: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    embeddings_response_encoded(body, model, false)
}

/// [`embeddings_response`], with vectors as base64 of little-endian `f32`s
/// when `base64` is set (OpenAI's `encoding_format: "base64"`).
pub fn embeddings_response_encoded(body: &[u8], model: &str, base64: bool) -> Result<Bytes, TranslateError> {
    let response = parse_object(body, "Gemini's embeddings answer")?;
    if let Some(error) = response.get("error") {
        return Err(err(format!("Gemini answered with an error: {}", error_message(error))));
    }
    let embeddings = response
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| err("Gemini's embeddings answer has no `embeddings` array"))?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (i, embedding) in embeddings.iter().enumerate() {
        let values = embedding
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("Gemini's embedding {i} has no `values` array")))?;
        let vector = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for value in values {
                let value = value.as_f64().ok_or_else(|| err(format!("Gemini's embedding {i} holds a non-number")))?;
                bytes.extend_from_slice(&(value as f32).to_le_bytes());
            }
            Value::String(encode_base64(&bytes))
        } else {
            if !values.iter().all(Value::is_number) {
                return Err(err(format!("Gemini's embedding {i} holds a non-number")));
            }
            Value::Array(values.clone())
        };
        data.push(json!({ "object": "embedding", "index": i, "embedding": vector }));
    }
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 },
    });
    Ok(to_bytes(&out))
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[(n >> shift & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_standard_and_padded() {
        for (input, expected) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(encode_base64(input.as_bytes()), expected);
        }
        assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_body_is_read_once_for_the_vectors_and_their_encoding() {
        let translate = |body: &str| translate(body.as_bytes(), "text-embedding-004").map(|(_, h)| h.embeddings_base64);
        assert_eq!(translate(r#"{"input":"hi","encoding_format":"base64"}"#), Ok(true));
        assert_eq!(translate(r#"{"input":"hi","encoding_format":"float"}"#), Ok(false));
        assert_eq!(translate(r#"{"input":"hi","encoding_format":null}"#), Ok(false));
        assert_eq!(translate(r#"{"input":"hi"}"#), Ok(false));
        let error = translate(r#"{"input":"hi","encoding_format":"binary"}"#).unwrap_err();
        assert_eq!(error.0, "`encoding_format` must be float or base64");
        let (body, _) = translate_body(r#"{"input":["a","b"],"dimensions":8}"#);
        assert_eq!(body, embeddings_request(br#"{"input":["a","b"],"dimensions":8}"#, "m").unwrap());
    }

    fn translate_body(body: &str) -> (Bytes, AnswerHints) {
        translate(body.as_bytes(), "m").unwrap()
    }
}
