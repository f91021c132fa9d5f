//! The inbound dialects against providers of another dialect, end to end:
//! the client's request goes through chat completions to the provider, the
//! answer comes back the same way, whole or streamed, with the pool,
//! usage and errors working as for chat completions.
//!
//! The cells: the Responses API to a chat-only OpenAI-compatible provider
//! (Groq here) and to Anthropic; Gemini's generateContent to OpenAI and to
//! Anthropic; Anthropic's Messages to OpenAI-compatible providers and to
//! Gemini. Each checks both sides: what the provider saw, and what the
//! client reads.

mod support;

use serde_json::{Value, json};
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, Auth, GEMINI_KEY_ONE, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy,
    Script, TestClient, dialect_env, keys_by_id,
    mock::{anthropic, gemini},
    post,
};

/// A chat-only OpenAI-compatible provider (`groq`) at `mock`, `keys` keys.
fn groq_env(mock: &MockUpstream, keys: usize) -> Vec<(String, String)> {
    let mut env = vec![("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned())];
    env.push(("GROQ_API_BASE".to_owned(), mock.base()));
    for (i, key) in [KEY_ONE, KEY_TWO][..keys].iter().enumerate() {
        env.push((format!("GROQ_API_KEY_{}", i + 1), (*key).to_owned()));
    }
    env
}

async fn start(env: Vec<(String, String)>) -> (Proxy, TestClient) {
    (Proxy::start(env).await, TestClient::http1())
}

/// The `data:` JSON of every event of an SSE body, with its event name.
fn events(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, serde_json::from_str(&data).unwrap_or_else(|_| panic!("JSON data: {event}")))
        })
        .collect()
}

// ---- Responses API in ---------------------------------------------------------------

#[tokio::test]
async fn codex_reaches_a_chat_only_provider() {
    let mock = MockUpstream::start().await;
    let (proxy, client) = start(groq_env(&mock, 1)).await;
    let body = json!({"model": "groq/llama-3.3-70b", "instructions": "Be brief.", "input": "Say hi",
                      "max_output_tokens": 100, "store": false});
    let reply = client.fetch(post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let response = reply.json();
    assert_eq!(response["object"], "response");
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(response["status"], "completed");
    let message = response["output"].as_array().unwrap().iter().find(|i| i["type"] == "message").unwrap();
    assert_eq!(message["content"][0]["text"], "Hello! How can I assist you today?");
    assert_eq!(
        (response["usage"]["input_tokens"].clone(), response["usage"]["output_tokens"].clone()),
        (json!(19), json!(10))
    );

    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/chat/completions", "translated for a provider without the Responses API");
    let chat = seen.json();
    assert_eq!(chat["model"], "llama-3.3-70b");
    assert_eq!(chat["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(chat["max_tokens"], 100);

    // Streamed: the Responses event sequence, numbered, ending completed.
    let body = json!({"model": "groq/llama-3.3-70b", "input": "Say hi", "stream": true});
    let reply = client.fetch(post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    let events = events(reply.text());
    let types: Vec<&str> = events.iter().map(|(_, data)| data["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"response.created"), "{types:?}");
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
    for expected in ["response.output_item.added", "response.output_text.delta", "response.output_item.done"] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], n, "numbered from 0");
        assert_eq!(name.as_deref(), data["type"].as_str(), "the event name is its type");
    }
    let text: String = events
        .iter()
        .filter(|(_, d)| d["type"] == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello! How can I help?");
    assert!(mock.requests()[1].json()["stream_options"]["include_usage"] == true, "usage asked for");

    // The Responses API's token count, estimated: this provider cannot count.
    let body = json!({"model": "groq/llama-3.3-70b", "input": "Count these words please"});
    let url = proxy.url("/v1/responses/input_tokens");
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["object"], "response.input_tokens");
    assert!(reply.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(mock.requests().len(), 2, "nothing sent upstream");
}

#[tokio::test]
async fn a_codex_tool_conversation_reaches_anthropic_with_its_ids() {
    let mock = MockUpstream::anthropic().await;
    mock.push(Script::respond(200, anthropic::message_tools()));
    let (proxy, client) = start(dialect_env(&[&mock], 1)).await;
    let body = json!({
        "model": "anthropic/claude-sonnet-4-5",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 21}"},
            {"type": "message", "role": "user", "content": "And the time?"}
        ],
        "tools": [
            {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
        ]
    });
    let reply = client.fetch(post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.requests()[0].json();
    let turns = sent["messages"].as_array().unwrap();
    let tool_use = turns
        .iter()
        .flat_map(|t| t["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!((tool_use["id"].clone(), tool_use["input"].clone()), (json!("call_1"), json!({"city": "Paris"})));
    let result = turns
        .iter()
        .flat_map(|t| t["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result")
        .unwrap();
    assert_eq!(result["tool_use_id"], "call_1", "the id ties the result to its call");
    assert_eq!(sent["system"], "You are Codex.");

    let calls: Vec<Value> =
        reply.json()["output"].as_array().unwrap().iter().filter(|i| i["type"] == "function_call").cloned().collect();
    assert_eq!(calls.len(), 2, "{}", reply.text());
    assert_eq!(calls[0]["call_id"], "toolu_01Weather");
    assert_eq!(
        serde_json::from_str::<Value>(calls[0]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris", "unit": "celsius"})
    );
    assert_eq!(reply.json()["usage"]["input_tokens"], 410, "input plus cache reads");
}

#[tokio::test]
async fn what_only_openai_can_do_is_refused_before_any_key_is_spent() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(dialect_env(&[&mock], 1)).await;
    for (body, what) in [
        (
            json!({"model": "anthropic/claude-sonnet-4-5", "input": "x", "tools": [{"type": "web_search"}]}),
            "web_search",
        ),
        (
            json!({"model": "anthropic/claude-sonnet-4-5", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
    ] {
        let reply = client.fetch(post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.to_string())).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.json()["error"]["code"], "unsupported_request", "OpenAI's shape");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains(what), "{}", reply.text());
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_translated_stream_cut_mid_way_ends_with_the_responses_error_event() {
    let mock = MockUpstream::anthropic().await;
    mock.push(Script::BreakAfter(4));
    let (proxy, client) = start(dialect_env(&[&mock], 1)).await;
    let body = json!({"model": "anthropic/claude-sonnet-4-5", "input": "Hi", "stream": true});
    let reply = client.fetch(post(&proxy.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200);
    let events = events(reply.text());
    let (name, last) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{}", reply.text());
    assert_eq!(last["type"], "error");
    assert!(!events.iter().any(|(_, d)| d["type"] == "response.completed"), "a cut stream never looks complete");
}

// ---- Gemini in ---------------------------------------------------------------------

fn gemini_body() -> String {
    json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
           "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
           "generationConfig": {"maxOutputTokens": 50, "temperature": 0.2}})
    .to_string()
}

#[tokio::test]
async fn gemini_cli_reaches_openai_and_anthropic() {
    let openai = MockUpstream::start().await;
    let claude = MockUpstream::anthropic().await;
    let (proxy, client) = start(dialect_env(&[&openai, &claude], 1)).await;

    let path = "/v1beta/models/openai/gpt-4o-mini:generateContent";
    let reply = client.fetch(post(&proxy.url(path), Auth::GoogKey(PROXY_KEY), gemini_body())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["candidates"][0]["content"]["parts"][0]["text"], "Hello! How can I assist you today?");
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
    assert_eq!(answer["usageMetadata"]["promptTokenCount"], 19);
    let chat = openai.requests()[0].json();
    assert_eq!(openai.requests()[0].path, "/v1/chat/completions");
    assert_eq!((chat["model"].clone(), chat["max_tokens"].clone()), (json!("gpt-4o-mini"), json!(50)));

    let path = "/v1beta/models/anthropic%2Fclaude-sonnet-4-5:streamGenerateContent?alt=sse";
    let reply = client.fetch(post(&proxy.url(path), Auth::GoogKey(PROXY_KEY), gemini_body())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events = events(reply.text());
    let text: String = events
        .iter()
        .flat_map(|(_, d)| d["candidates"][0]["content"]["parts"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello from Claude.");
    let last = &events.last().unwrap().1;
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 25);
    assert_eq!(claude.requests()[0].json()["model"], "claude-sonnet-4-5");
    assert_eq!(claude.requests()[0].json()["system"], "Be brief.");

    // countTokens for a provider that cannot count Gemini's way: estimated, no key spent.
    let counted = "/v1beta/models/anthropic/claude-sonnet-4-5:countTokens";
    let reply = client.fetch(post(&proxy.url(counted), Auth::GoogKey(PROXY_KEY), gemini_body())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["totalTokens"].as_u64().unwrap() > 0);
    assert_eq!(claude.requests().len(), 1, "nothing sent upstream");
}

#[tokio::test]
async fn a_translated_providers_errors_rotate_and_reach_the_client_in_its_shape() {
    let claude = MockUpstream::anthropic().await;
    let (proxy, client) = start(dialect_env(&[&claude], 2)).await;
    // A revoked key, in Anthropic's words: judged as a credential failure
    // (the key is marked invalid) though the client reads Google's shape.
    claude.always_for(ANTHROPIC_KEY_ONE, anthropic::invalid_key());
    let path = "/v1beta/models/anthropic/claude-sonnet-4-5:generateContent";
    // Two requests: least-used selection tries the first key in one of them.
    for _ in 0..2 {
        let reply = client.fetch(post(&proxy.url(path), Auth::GoogKey(PROXY_KEY), gemini_body())).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(claude.answers(ANTHROPIC_KEY_ONE), ["status:401"], "tried once, then left alone");
    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    assert_eq!(keys[&claude.key_id(ANTHROPIC_KEY_ONE)]["state"], "invalid");

    // The request's own fault comes back as it is, reshaped for Google's clients.
    claude.clear_for(ANTHROPIC_KEY_ONE);
    claude.clear_for(ANTHROPIC_KEY_TWO);
    claude.push(anthropic::bad_request("max_tokens: 999999 > 64000, the maximum for this model"));
    let reply = client.fetch(post(&proxy.url(path), Auth::GoogKey(PROXY_KEY), gemini_body())).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("64000"));
}

// ---- Anthropic Messages in ---------------------------------------------------------------

fn messages(model: &str, stream: bool) -> String {
    json!({
        "model": model, "max_tokens": 1024, "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "21 degrees"},
                {"type": "text", "text": "Thanks. And tomorrow?"}]}
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "stop_sequences": ["\n\nHuman:"]
    })
    .to_string()
}

#[tokio::test]
async fn claude_code_reaches_an_openai_compatible_provider() {
    let mock = MockUpstream::start().await;
    let (proxy, client) = start(groq_env(&mock, 1)).await;
    let reply =
        client.fetch(post(&proxy.url("/v1/messages"), Auth::Bearer(PROXY_KEY), messages("groq/kimi-k2", false))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["content"][0], json!({"type": "text", "text": "Hello! How can I assist you today?"}));
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(
        (answer["usage"]["input_tokens"].clone(), answer["usage"]["output_tokens"].clone()),
        (json!(19), json!(10))
    );

    let chat = mock.requests()[0].json();
    let roles: Vec<&str> = chat["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"], "{chat}");
    assert_eq!(chat["messages"][2]["tool_calls"][0]["id"], "toolu_01A");
    assert_eq!(chat["messages"][3]["tool_call_id"], "toolu_01A");
    assert_eq!(chat["stop"], json!(["\n\nHuman:"]));

    // Streamed: Anthropic's events in their order.
    let reply =
        client.fetch(post(&proxy.url("/v1/messages"), Auth::Bearer(PROXY_KEY), messages("groq/kimi-k2", true))).await;
    assert_eq!(reply.status, 200);
    let events = events(reply.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"], "{names:?}");
    assert!(names.contains(&"content_block_start") && names.contains(&"content_block_stop"), "{names:?}");
    let text: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello! How can I help?");
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn claude_code_reaches_gemini_and_its_tool_calls_come_back() {
    let mock = MockUpstream::gemini().await;
    mock.push(Script::respond(200, gemini::response_tools()));
    let (proxy, client) = start(dialect_env(&[&mock], 1)).await;
    let reply = client
        .fetch(post(&proxy.url("/v1/messages"), Auth::XApiKey(PROXY_KEY), messages("gemini/gemini-2.5-flash", false)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["stop_reason"], "tool_use");
    let uses: Vec<&Value> = answer["content"].as_array().unwrap().iter().filter(|b| b["type"] == "tool_use").collect();
    assert_eq!(uses.len(), 2, "{answer}");
    assert_eq!(uses[0]["name"], "get_weather");
    assert_eq!(uses[0]["input"], json!({"city": "Paris", "unit": "celsius"}));
    assert!(uses[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    let sent = mock.requests()[0].json();
    assert_eq!(mock.requests()[0].key.as_deref(), Some(GEMINI_KEY_ONE));
    let parts: Vec<Value> = sent["contents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(parts.iter().any(|p| p["functionCall"]["name"] == "get_weather"), "{sent}");
    assert!(parts.iter().any(|p| p["functionResponse"]["name"] == "get_weather"), "{sent}");

    // count_tokens for Gemini: estimated, nothing sent.
    let body = json!({"model": "gemini/gemini-2.5-flash", "messages": [{"role": "user", "content": "Hello there"}]});
    let reply =
        client.fetch(post(&proxy.url("/v1/messages/count_tokens"), Auth::XApiKey(PROXY_KEY), body.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(mock.requests().len(), 1);
}
