//! A client's request body, as Parse and the upstream's request side see it.
//!
//! The whole input is the body. For each endpoint: `parse::route_target`
//! against a pool of OpenAI-compatible, Anthropic and Gemini providers; for
//! a target it accepts, the OpenAI model-token swap and the stream-usage
//! splice must leave valid JSON (when the input was) whose `model` is the
//! upstream model. The Anthropic and Gemini request translators must answer
//! Ok (JSON) or a `TranslateError` for any body.
#![no_main]

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use keyrelay_fuzz::assert_json;
use keyrelay_layers::{
    extensions::Endpoint,
    parse::route_target,
    pool::KeyPool,
    provider::{Dialect, Provider},
    upstream::dialect::{anthropic, gemini, openai},
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static POOL: LazyLock<Arc<KeyPool>> = LazyLock::new(|| {
    let providers = [
        Provider::openai_compatible("openai", "https://api.openai.com/v1").unwrap(),
        Provider::openai_compatible("openrouter", "https://openrouter.ai/api/v1").unwrap(),
        Provider::new("anthropic", "https://api.anthropic.com", Dialect::Anthropic).unwrap(),
        Provider::new("gemini", "https://generativelanguage.googleapis.com", Dialect::Gemini).unwrap(),
    ];
    let mut builder = KeyPool::builder();
    for provider in providers {
        builder = builder.provider(provider, Default::default(), vec![]);
    }
    builder.build().unwrap()
});

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let input: Option<Value> = serde_json::from_slice(data).ok();
    let mut model = String::from("fuzz-model");
    let mut stream = false;
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
        let Ok(target) = route_target(&body, endpoint, &POOL) else { continue };
        assert!(POOL.provider(target.provider().as_str()).is_some(), "a target names a known provider");
        assert!(!target.model().is_empty());
        model = target.model().to_owned();
        stream = target.stream();

        let span = target.model_span().expect("route_target records the model token's span");
        let token: String = serde_json::from_slice(&data[span.clone()]).expect("the span holds a JSON string");
        assert_eq!(token, format!("{}/{}", target.provider().as_str(), target.model()));

        let rewritten = openai::rewrite_model(&body, span, target.model());
        let with_usage = openai::ask_for_stream_usage(&rewritten, target.has_stream_options());
        if input.is_some() {
            let value = assert_json("the rewritten body", &rewritten);
            assert_eq!(value["model"].as_str(), Some(target.model()), "rewritten: {value}");
            let value = assert_json("the body asking for usage", &with_usage);
            assert_eq!(value["model"].as_str(), Some(target.model()), "with usage: {value}");
            assert_eq!(value["stream_options"]["include_usage"], Value::Bool(true), "with usage: {value}");
        }
    }

    // The translators read the client's body whatever its `model` says.
    if let Ok(out) = anthropic::chat_request(data, &model, stream) {
        let value = assert_json("anthropic::chat_request", &out);
        assert_eq!(value["model"].as_str(), Some(model.as_str()));
    }
    if let Ok(out) = gemini::chat_request(data, &model, stream) {
        assert!(assert_json("gemini::chat_request", &out).is_object());
    }
    if let Ok(out) = gemini::embeddings_request(data, &model) {
        let value = assert_json("gemini::embeddings_request", &out);
        let name = format!("models/{model}");
        for request in value["requests"].as_array().expect("`requests` is an array") {
            assert_eq!(request["model"].as_str(), Some(name.as_str()));
        }
    }
});
