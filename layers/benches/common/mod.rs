//! Inputs and settings shared by the benches.

#![allow(dead_code, reason = "each bench uses a subset")]

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use criterion::Criterion;
use keyrelay_layers::{
    pool::{KeyPool, ProviderPause, Secret, Selection},
    provider::Provider,
};

/// The model clients ask for; the provider is `openai`.
pub const MODEL: &str = "openai/gpt-4o-mini";
/// The upstream model name, as the pool and the upstream see it.
pub const UPSTREAM_MODEL: &str = "gpt-4o-mini";

/// Short runs, so that all four benches together take about two and a half
/// minutes on a small machine; command-line flags still override these.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
}

/// One `openai` provider (never dialled) with `keys` keys, least-used.
///
/// The wall clock is pinned at noon UTC, so no daily reset ends a bench's
/// cooldowns, and the provider pause is off, so that rate-limiting many
/// keys cools those keys without pausing the whole provider.
pub fn pool(keys: usize) -> Arc<KeyPool> {
    let provider = Provider::openai_compatible("openai", "http://127.0.0.1:9/v1").expect("a valid base URL");
    let secrets = (0..keys).map(|i| Secret::new(format!("sk-bench-{i:04}"))).collect();
    KeyPool::builder()
        .wall_clock(UNIX_EPOCH + Duration::from_secs(1_767_268_800))
        .provider_pause(ProviderPause::new(0, Duration::from_secs(10), Duration::from_secs(10)))
        .provider(provider, Selection::LeastUsed, secrets)
        .build()
        .expect("valid keys")
}

/// Message texts with what real prompts contain: newlines, quotes,
/// non-ASCII, code. Escapes matter: they are what makes JSON strings slow.
const TEXTS: [&str; 4] = [
    "You are a helpful assistant. Answer briefly, and say \"I don't know\" when unsure.",
    "Can you explain what this function does?\n\n```rust\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n```\nThanks!",
    "It adds two 32-bit integers and returns their sum; in debug builds an overflow panics, in release it wraps. \
     Note the café example ☕ below uses the same idea.",
    "Great, now write a version that saturates instead of wrapping, and a unit test for it.",
];

/// An OpenAI chat request body of about `len` bytes (whole messages, so a
/// little under): messages first, then `model` and `stream`, as the OpenAI
/// Python SDK writes them.
pub fn chat_body(len: usize, stream: bool) -> Bytes {
    let tail = format!(r#","model":"{MODEL}","stream":{stream},"temperature":0.7}}"#);
    let mut messages: Vec<String> = Vec::new();
    let mut total = r#"{"messages":[]"#.len() + tail.len();
    for (i, text) in TEXTS.iter().cycle().enumerate() {
        let role = match i {
            0 => "system",
            _ if i % 2 == 1 => "user",
            _ => "assistant",
        };
        let message = serde_json::json!({ "role": role, "content": text }).to_string();
        if !messages.is_empty() && total + message.len() + 1 > len {
            break;
        }
        total += message.len() + 1;
        messages.push(message);
    }
    Bytes::from(format!(r#"{{"messages":[{}]{tail}"#, messages.join(",")))
}

/// A whole OpenAI chat completion, with the usage the usage tap reads.
pub const COMPLETION: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

/// An OpenAI chat stream, one event per element: the role chunk,
/// `content_events` content chunks, the finish chunk, the usage-only chunk
/// (`choices: []`, as `stream_options.include_usage` asks), and `[DONE]`.
pub fn openai_stream(content_events: usize) -> Vec<Bytes> {
    const HEAD: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","#;
    let event = |rest: &str| Bytes::from(format!("data: {HEAD}{rest}}}\n\n"));
    let words = ["Hello", "!", " How", " can", " I", " help", " you", " with", " your", " café", " ☕", " today", "?"];
    let mut events = vec![event(
        r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null"#,
    )];
    for word in words.iter().cycle().take(content_events) {
        events.push(event(&format!(
            r#""choices":[{{"index":0,"delta":{{"content":"{word}"}},"logprobs":null,"finish_reason":null}}],"usage":null"#
        )));
    }
    events.push(event(r#""choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null"#));
    events.push(event(
        r#""choices":[],"usage":{"prompt_tokens":19,"completion_tokens":20,"total_tokens":39,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    ));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}
