//! Anthropic (`anthropic/<model>`) and Gemini (`gemini/<model>`) through
//! keyrelay, end to end, against mock upstreams that speak each provider's
//! real wire format (`support::mock`).
//!
//! Each test checks both sides: the translated request the provider saw
//! (path, auth headers, body) and what an OpenAI client gets back, with the
//! official SDK's expectations in mind (`support::sdk`): `id`, `object`,
//! `created`, `model`, `choices[].index`, tool call `arguments` as JSON
//! strings, `finish_reason`, `usage`, and for streams
//! `chat.completion.chunk` events that accumulate the way the SDK
//! accumulates them, ending in `data: [DONE]`. Then the pool: rate limits, bad keys and overloads of
//! these providers rotate, cool down and retry exactly as OpenAI's do.
//!
//! What both dialects do alike is one test body run over both ([`Side`]
//! holds what differs: models, keys, answers and faults in the provider's
//! own words, the tokens they carry); what only one does (Anthropic's
//! `max_tokens`, Gemini's embeddings) has its own test.
//!
//! Longer than 600 lines on purpose: it is the one end-to-end story of the
//! translating dialects, and another file would be another test binary to
//! link for no gain in clarity.

mod support;

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, Auth, GEMINI_KEY_ONE, GEMINI_KEY_TWO, Gate, MockUpstream, PROXY_KEY, Proxy,
    Recorded, Reply, Script, SseReader, TestClient, assert_no_secret, assert_openai_error, dialect_env, get,
    keys_by_id,
    mock::{anthropic, gemini},
    post,
    sdk::{Streamed, assert_completion, assert_stream_error_tail, decode_base64, embeddings, tool_calls},
};

const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const CLAUDE: &str = "anthropic/claude-sonnet-4-5";
/// The model as Anthropic, `/v1/keys` and the answers name it.
const CLAUDE_UPSTREAM: &str = "claude-sonnet-4-5";
const FLASH: &str = "gemini/gemini-2.5-flash";
const FLASH_UPSTREAM: &str = "gemini-2.5-flash";
const GEMINI_EMBEDDING: &str = "gemini/gemini-embedding-001";

// ---- harness -------------------------------------------------------------------

async fn start(mocks: &[&MockUpstream], keys: usize) -> (Proxy, TestClient) {
    (Proxy::start(dialect_env(mocks, keys)).await, TestClient::http1())
}

/// A proxy with both sides' mocks, `keys` keys each.
async fn start_both(sides: &[Side; 2], keys: usize) -> (Proxy, TestClient) {
    start(&[&sides[0].mock, &sides[1].mock], keys).await
}

/// One translating dialect as the tests see it: its mock, and what differs
/// between the dialects in what it is asked and answers.
struct Side {
    mock: MockUpstream,
    /// The model as clients ask for it (`anthropic/claude-sonnet-4-5`).
    model: &'static str,
    /// The model as the provider, `/v1/keys` and the answers name it.
    upstream_model: &'static str,
    keys: [&'static str; 2],
    /// The text of the default answer, whole or streamed.
    text: &'static str,
    /// The default whole answer's body.
    whole_answer: fn() -> String,
    /// `(prompt, completion)` tokens of the default whole answer and stream.
    whole_tokens: (u64, u64),
    stream_tokens: (u64, u64),
    /// The default stream, and how many of its events carry it up to its
    /// first text ("Hello").
    text_stream: fn() -> Vec<String>,
    events_to_first_text: usize,
    /// Text ("Checking."), then a `get_weather` call, streamed.
    tool_stream: fn() -> Vec<String>,
    /// Text ("Hel"), then the provider's own error event, whose message
    /// holds `broken_cause`.
    broken_stream: fn() -> Vec<String>,
    broken_cause: &'static str,
    /// The faults, in the provider's own words.
    rate_limited: fn(u64) -> Script,
    quota_exhausted: fn() -> Script,
    invalid_key: fn() -> Script,
    /// A transient failure (Anthropic's 529, Gemini's 503).
    overloaded: fn() -> Script,
    /// A 500 echoing the key, whose message holds `server_error_words`.
    server_error: fn() -> Script,
    server_error_words: &'static str,
}

impl Side {
    async fn anthropic() -> Self {
        Self {
            mock: MockUpstream::anthropic().await,
            model: CLAUDE,
            upstream_model: CLAUDE_UPSTREAM,
            keys: [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO],
            text: anthropic::TEXT,
            whole_answer: anthropic::message_text,
            whole_tokens: (21, 7),
            stream_tokens: (25, 6),
            text_stream: anthropic::text_stream,
            // message_start, content_block_start, ping and the first text delta.
            events_to_first_text: 4,
            tool_stream: anthropic::tool_stream,
            broken_stream: anthropic::broken_stream,
            broken_cause: "Overloaded",
            rate_limited: |secs| anthropic::rate_limited(Some(&secs.to_string())),
            // Anthropic says "no credit" with a 400.
            quota_exhausted: anthropic::credit_balance_too_low,
            invalid_key: anthropic::invalid_key,
            overloaded: anthropic::overloaded,
            server_error: anthropic::server_error_echoing_key,
            server_error_words: "Internal server error",
        }
    }

    async fn gemini() -> Self {
        Self {
            mock: MockUpstream::gemini().await,
            model: FLASH,
            upstream_model: FLASH_UPSTREAM,
            keys: [GEMINI_KEY_ONE, GEMINI_KEY_TWO],
            text: gemini::TEXT,
            whole_answer: gemini::response_text,
            whole_tokens: (11, 5),
            stream_tokens: (9, 4),
            text_stream: gemini::text_stream,
            events_to_first_text: 1,
            tool_stream: gemini::tool_stream,
            broken_stream: gemini::broken_stream,
            broken_cause: "An internal error has occurred.",
            rate_limited: |secs| gemini::rate_limited(&format!("{secs}s")),
            // Google says it with a per-day 429.
            quota_exhausted: gemini::daily_quota_exhausted,
            invalid_key: gemini::invalid_key,
            overloaded: gemini::unavailable,
            server_error: gemini::internal_echoing_key,
            server_error_words: "Internal error encountered",
        }
    }

    async fn both() -> [Self; 2] {
        [Self::anthropic().await, Self::gemini().await]
    }

    fn key_header(&self) -> &'static str {
        self.mock.dialect().key_header()
    }
}

async fn send_json(client: &TestClient, proxy: &Proxy, path: &str, body: &Value) -> Reply {
    client.fetch(post(&proxy.url(path), Auth::Bearer(PROXY_KEY), body.to_string())).await
}

async fn chat(client: &TestClient, proxy: &Proxy, body: &Value) -> Reply {
    send_json(client, proxy, CHAT, body).await
}

/// The smallest chat request, as an SDK sends it.
fn hello(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "stream": stream})
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Sends a streaming request and checks the head: 200, an event stream.
async fn open_stream(client: &TestClient, proxy: &Proxy, body: &Value) -> SseReader {
    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), body.to_string())).await;
    assert_eq!(res.status(), 200, "a stream's head");
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    SseReader::new(res.into_body())
}

/// `/v1/keys` by key id.
async fn keys(client: &TestClient, proxy: &Proxy) -> BTreeMap<String, Value> {
    keys_by_id(client, proxy, Auth::Bearer(PROXY_KEY)).await
}

#[track_caller]
fn status<'a>(keys: &'a BTreeMap<String, Value>, mock: &MockUpstream, secret: &str) -> &'a Value {
    let id = mock.key_id(secret);
    keys.get(&id).unwrap_or_else(|| panic!("no status for {id}: {keys:?}"))
}

#[track_caller]
fn assert_healthy(status: &Value) {
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(status["cooldowns"], json!([]), "{status}");
    assert!(status["invalid_until_unix_ms"].is_null(), "{status}");
    assert_eq!(status["in_flight"], 0, "{status}");
}

/// The remaining seconds of the key's one cooldown, for `model` and `reason`.
#[track_caller]
fn only_cooldown(status: &Value, model: &str, reason: &str) -> u64 {
    let list = status["cooldowns"].as_array().unwrap_or_else(|| panic!("`cooldowns` list: {status}"));
    assert_eq!(list.len(), 1, "one cooldown: {status}");
    assert_eq!((&list[0]["model"], &list[0]["reason"]), (&json!(model), &json!(reason)), "{status}");
    list[0]["remaining_secs"].as_u64().unwrap_or_else(|| panic!("remaining_secs: {status}"))
}

/// What every request to a provider must look like: its own key in its
/// own header, nothing of the client's credentials.
#[track_caller]
fn assert_clean_auth(seen: &Recorded, key_header: &str, keys: &[&str]) {
    let headers = seen.all_header_values();
    assert!(seen.header(key_header).is_some_and(|k| keys.contains(&k)), "a pool key in {key_header}: {headers}");
    assert!(seen.header("authorization").is_none(), "no Authorization upstream: {headers}");
    assert!(!headers.contains(PROXY_KEY), "the proxy key never goes upstream: {headers}");
    for other in [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, GEMINI_KEY_ONE, GEMINI_KEY_TWO] {
        if seen.header(key_header) != Some(other) {
            assert!(!headers.contains(other), "only the chosen key goes upstream: {headers}");
        }
    }
    assert!(!seen.query.as_deref().unwrap_or_default().contains("SECRET"), "no key in the URL: {:?}", seen.query);
}

/// A request with a system prompt, one tool and the usual knobs.
fn weather_request(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
                "additionalProperties": false
            }
        }}],
        "temperature": 0.2,
        "stop": ["END"],
        "user": "user-42"
    })
}

/// The conversation after the model's tool calls: `weather_request`'s
/// messages, the assistant message as the client received it, and one
/// tool result per call.
fn with_tool_results(request: &Value, assistant: &Value, results: &[&str]) -> Value {
    let mut next = request.clone();
    let messages = next["messages"].as_array_mut().expect("messages");
    messages.push(assistant.clone());
    for (call, result) in assistant["tool_calls"].as_array().expect("tool calls").iter().zip(results) {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
    }
    next
}

// ---- whole answers ------------------------------------------------------------------

/// What a tool-calling round trip looks like in one dialect: the answer
/// with two tool calls, the request knobs sent, and what the provider must
/// see and the client get on both turns.
struct ToolRoundTrip {
    side: Side,
    answer: Script,
    /// Fields the client adds to `weather_request`.
    knobs: Value,
    id: &'static str,
    content: &'static str,
    /// The tool call ids, when the provider names them (Gemini does not).
    call_ids: Option<[&'static str; 2]>,
    /// Gemini's `thoughtSignature` on the first call, kept for the client.
    signature: Option<&'static str>,
    usage: Value,
    /// `(path, the headers it must carry)` of the chat request upstream.
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The translated first request, whole.
    sent: Value,
    /// The second turn's usage, and the field of its request that holds the
    /// conversation with what it must hold.
    second_usage: Value,
    history: (&'static str, Value),
}

impl ToolRoundTrip {
    async fn anthropic() -> Self {
        let parameters = weather_request(CLAUDE)["tools"][0]["function"]["parameters"].clone();
        Self {
            side: Side::anthropic().await,
            answer: Script::respond(200, anthropic::message_tools()),
            knobs: json!({"tool_choice": "auto"}),
            id: "chatcmpl-msg_01ToolAnswer",
            content: "Let me look that up.",
            call_ids: Some(["toolu_01Weather", "toolu_02Time"]),
            signature: None,
            usage: json!({"prompt_tokens": 410, "completion_tokens": 54, "total_tokens": 464,
                          "prompt_tokens_details": {"cached_tokens": 100}}),
            path: "/v1/messages",
            headers: &[("anthropic-version", anthropic::VERSION), ("content-type", "application/json")],
            sent: json!({
                "model": CLAUDE_UPSTREAM,
                "system": "You are terse.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
                "max_tokens": 4096,
                "stream": false,
                "temperature": 0.2,
                "stop_sequences": ["END"],
                "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": parameters}],
                "tool_choice": {"type": "auto"},
                "metadata": {"user_id": "user-42"}
            }),
            second_usage: json!({"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}),
            history: (
                "messages",
                json!([
                    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look that up."},
                        {"type": "tool_use", "id": "toolu_01Weather", "name": "get_weather",
                         "input": {"city": "Paris", "unit": "celsius"}},
                        {"type": "tool_use", "id": "toolu_02Time", "name": "get_time", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01Weather", "content": "{\"temp_c\": 21}"},
                        {"type": "tool_result", "tool_use_id": "toolu_02Time", "content": "14:05"}
                    ]}
                ]),
            ),
        }
    }

    async fn gemini() -> Self {
        Self {
            side: Side::gemini().await,
            answer: Script::respond(200, gemini::response_tools()),
            knobs: json!({"tool_choice": "required", "max_tokens": 200}),
            id: "chatcmpl-resp-tools-1",
            content: "Let me check.",
            call_ids: None,
            signature: Some("c2lnbmF0dXJl"),
            usage: json!({"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}),
            path: "/v1beta/models/gemini-2.5-flash:generateContent",
            headers: &[("content-type", "application/json")],
            sent: json!({
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
                "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
                "tools": [{"functionDeclarations": [{
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"},
                                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                        "required": ["city"]
                    }
                }]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
                "generationConfig": {"temperature": 0.2, "maxOutputTokens": 200, "stopSequences": ["END"]}
            }),
            second_usage: json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}),
            history: (
                "contents",
                json!([
                    {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                    {"role": "model", "parts": [
                        {"text": "Let me check."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                         "thoughtSignature": "c2lnbmF0dXJl"},
                        {"functionCall": {"name": "get_time", "args": {}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                        {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}}
                    ]}
                ]),
            ),
        }
    }
}

#[tokio::test]
async fn chat_with_tools_is_translated_both_ways() {
    for case in [ToolRoundTrip::anthropic().await, ToolRoundTrip::gemini().await] {
        let (side, model) = (&case.side, case.side.model);
        let mock = &side.mock;
        let (proxy, client) = start(&[mock], 1).await;
        mock.push(case.answer.clone());

        let mut request = weather_request(model);
        for (knob, value) in case.knobs.as_object().expect("knobs") {
            request[knob] = value.clone();
        }
        let reply = chat(&client, &proxy, &request).await;
        let body = assert_completion(&reply, side.upstream_model);
        assert_eq!(body["id"], case.id, "{model}");
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], case.content, "{model}");
        let calls = tool_calls(message);
        assert_eq!(calls.len(), 2, "{model}: {body}");
        assert_eq!((calls[0].1.as_str(), &calls[0].2), ("get_weather", &json!({"city": "Paris", "unit": "celsius"})));
        assert_eq!((calls[1].1.as_str(), &calls[1].2), ("get_time", &json!({})));
        assert_ne!(calls[0].0, calls[1].0, "{model}: tool call ids are distinct");
        if let Some(ids) = case.call_ids {
            assert_eq!([calls[0].0.as_str(), calls[1].0.as_str()], ids, "{model}: the provider's ids are kept");
        }
        if let Some(signature) = case.signature {
            assert_eq!(message["tool_calls"][0]["extra_content"]["google"]["thought_signature"], signature);
        }
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{model}");
        assert_eq!(body["usage"], case.usage, "{model}: cache reads count as prompt tokens");

        let seen = mock.requests();
        assert_eq!(seen.len(), 1, "{model}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str(), seen[0].query.as_deref()),
            ("POST", case.path, None)
        );
        for (name, value) in case.headers {
            assert_eq!(seen[0].header(name), Some(*value), "{model}: {name}");
        }
        assert_clean_auth(&seen[0], side.key_header(), &[side.keys[0]]);
        assert_eq!(seen[0].json(), case.sent, "{model}");

        // The agent loop: the answer (with any signature) goes back with the tools' results.
        let next = with_tool_results(&request, message, &[r#"{"temp_c": 21}"#, "14:05"]);
        let reply = chat(&client, &proxy, &next).await;
        let body = assert_completion(&reply, side.upstream_model);
        assert_eq!(body["choices"][0]["message"]["content"], side.text, "{model}");
        assert!(body["choices"][0]["message"].get("tool_calls").is_none_or(Value::is_null), "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{model}");
        assert_eq!(body["usage"], case.second_usage, "{model}");
        let (field, history) = &case.history;
        assert_eq!(mock.requests()[1].json()[field], *history, "{model}");
    }
}

#[tokio::test]
async fn anthropic_max_tokens_defaults_to_4096_and_follows_the_client() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 1).await;

    let reply = chat(&client, &proxy, &hello(CLAUDE, false)).await;
    let body = assert_completion(&reply, CLAUDE_UPSTREAM);
    assert_eq!(body["choices"][0]["message"]["content"], anthropic::TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let mut asked = hello(CLAUDE, false);
    asked["max_completion_tokens"] = json!(300);
    assert_completion(&chat(&client, &proxy, &asked).await, CLAUDE_UPSTREAM);

    let sent: Vec<Value> = mock.requests().iter().map(Recorded::json).collect();
    assert_eq!(
        sent[0],
        json!({"model": CLAUDE_UPSTREAM, "max_tokens": 4096, "stream": false,
                               "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]})
    );
    assert_eq!(sent[1]["max_tokens"], 300);
}

// ---- streams ------------------------------------------------------------------------

#[tokio::test]
async fn streams_are_translated_as_they_arrive_with_usage_when_asked() {
    // How many events the client reads up to the first text (where it is
    // fixed), the stream's id, where it goes upstream and what the request
    // body holds.
    let cases = [
        (Side::anthropic().await, None, "chatcmpl-msg_01StreamText", "/v1/messages", None, ("stream", json!(true))),
        (
            Side::gemini().await,
            Some(1),
            "chatcmpl-resp-stream-1",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            Some("alt=sse"),
            ("contents", json!([{"role": "user", "parts": [{"text": "Say hello"}]}])),
        ),
    ];
    for (side, events_to_hello, id, path, query, (field, value)) in cases {
        let (mock, model) = (&side.mock, side.model);
        let (proxy, client) = start(&[mock], 1).await;
        let gate = Gate::new();
        // Up to the first text, then the mock holds the rest.
        mock.push(Script::gated_events((side.text_stream)(), side.events_to_first_text, &gate));

        let mut request = hello(model, true);
        request["stream_options"] = json!({"include_usage": true});
        let mut sse = open_stream(&client, &proxy, &request).await;
        let mut streamed = Streamed::default();
        let mut read = 0;
        while streamed.content != "Hello" {
            let event = sse.next_event().await.expect("events before the gate opens");
            streamed.feed(&event);
            read += 1;
        }
        if let Some(events) = events_to_hello {
            assert_eq!(read, events, "{model}: the role and the first text come together");
        }
        assert_eq!(streamed.role.as_deref(), Some("assistant"), "{model}");
        assert_eq!(streamed.id, id);
        assert_eq!(streamed.model, side.upstream_model);
        assert_eq!(mock.streams_finished(), 0, "{model}: the client reads while the provider is still streaming");

        gate.open();
        streamed.feed_all(&sse.rest().await);
        assert_eq!(mock.streams_finished(), 1, "{model}");
        assert_eq!(streamed.content, side.text, "{model}");
        assert!(streamed.tool_calls.is_empty(), "{model}");
        assert_eq!(streamed.finish_reason.as_deref(), Some("stop"), "{model}");
        let (prompt, completion) = side.stream_tokens;
        assert_eq!(streamed.usage_triple(), Some((prompt, completion, prompt + completion)), "{model}");

        let seen = &mock.requests()[0];
        assert_eq!((seen.path.as_str(), seen.query.as_deref()), (path, query));
        assert_clean_auth(seen, side.key_header(), &[side.keys[0]]);
        assert_eq!(seen.header("accept-encoding"), Some("identity"), "{model}");
        let sent = seen.json();
        assert_eq!(sent[field], value, "{model}");
        assert!(sent.get("stream_options").is_none(), "{model} has no stream_options: {sent}");
    }
}

#[tokio::test]
async fn stream_tool_calls_arrive_as_openai_deltas_without_usage_unless_asked() {
    // Anthropic names the call; Gemini does not, and keyrelay makes an id up.
    for (side, call_id) in [(Side::anthropic().await, Some("toolu_01Weather")), (Side::gemini().await, None)] {
        let (proxy, client) = start(&[&side.mock], 1).await;
        side.mock.push(Script::events((side.tool_stream)()));

        let mut request = weather_request(side.model);
        request["stream"] = json!(true);
        let mut sse = open_stream(&client, &proxy, &request).await;
        let mut streamed = Streamed::default();
        streamed.feed_all(&sse.rest().await);
        assert_eq!(streamed.content, "Checking.");
        assert_eq!(streamed.tool_calls.len(), 1, "{streamed:?}");
        let (id, name, arguments) = &streamed.tool_calls[0];
        assert!(!id.is_empty());
        if let Some(call_id) = call_id {
            assert_eq!(id, call_id);
        }
        assert_eq!(name, "get_weather");
        let arguments: Value = serde_json::from_str(arguments).expect("the pieces make JSON");
        assert_eq!(arguments, json!({"city": "Paris", "unit": "celsius"}));
        assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(streamed.usage, None, "no usage chunk unless stream_options.include_usage");
    }
}

#[tokio::test]
async fn a_provider_error_event_mid_stream_ends_the_stream_with_one_error_event() {
    for side in Side::both().await {
        let (proxy, client) = start(&[&side.mock], 1).await;
        side.mock.push(Script::events((side.broken_stream)()));

        let mut sse = open_stream(&client, &proxy, &hello(side.model, true)).await;
        let events = sse.rest().await;
        assert_stream_error_tail(&events, "Hel", side.broken_cause);
        assert_break_counted(&client, &proxy, &side.mock, side.keys[0]).await;
    }
}

/// The key that served a stream that broke has the break on its record
/// and nothing left in flight.
async fn assert_break_counted(client: &TestClient, proxy: &Proxy, mock: &MockUpstream, key: &str) {
    let keys = keys(client, proxy).await;
    let status = status(&keys, mock, key);
    assert_eq!(status["today"]["failures_transient"], 1, "the break counts against the key: {status}");
    assert_eq!(status["in_flight"], 0, "{status}");
}

#[tokio::test]
async fn a_stream_cut_before_its_finish_ends_with_an_error_event() {
    // How many events come before the clean end of body, whether usage is
    // asked for, and the text they carry: Anthropic's message_start, a text
    // block and one delta (no message_delta, no message_stop); Gemini's two
    // text chunks without a finishReason.
    let cases = [(Side::anthropic().await, 4, false, "Hello"), (Side::gemini().await, 2, true, "Hello from Gemini.")];
    for (side, kept, usage, content) in cases {
        let (proxy, client) = start(&[&side.mock], 1).await;
        let mut events = (side.text_stream)();
        events.truncate(kept);
        side.mock.push(Script::events(events));

        let mut request = hello(side.model, true);
        if usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let mut sse = open_stream(&client, &proxy, &request).await;
        let events = sse.rest().await;
        assert_stream_error_tail(&events, content, "");
        assert_break_counted(&client, &proxy, &side.mock, side.keys[0]).await;
    }
}

// ---- errors ----------------------------------------------------------------------------

#[tokio::test]
async fn provider_client_errors_come_back_in_openai_shape_without_retry_or_penalty() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    let [ant, gem] = &sides;
    let cases = [
        (ant, 400, anthropic::bad_request("messages.0.content: text is too long"), "invalid_request_error"),
        (ant, 404, anthropic::unknown_model(CLAUDE_UPSTREAM), "not_found_error"),
        (gem, 400, gemini::bad_request("Invalid value at 'contents[0].parts[0]'"), "INVALID_ARGUMENT"),
        (gem, 404, gemini::unknown_model(FLASH_UPSTREAM), "NOT_FOUND"),
    ];
    for (side, status, answer, code) in cases {
        let (mock, model) = (&side.mock, side.model);
        let before = mock.requests().len();
        for stream in [false, true] {
            mock.push(answer.clone());
            let reply = chat(&client, &proxy, &hello(model, stream)).await;
            let Script::Respond { body, .. } = &answer else { unreachable!() };
            let message: Value = serde_json::from_slice(body).unwrap();
            let message = message["error"]["message"].as_str().unwrap();
            assert_openai_error(&reply, status, code, message);
        }
        assert_eq!(mock.requests().len(), before + 2, "{model} {status}: a client error is not retried");
    }
    let keys = keys(&client, &proxy).await;
    let mut client_failures = 0;
    for status in keys.values() {
        assert_healthy(status);
        client_failures += status["today"]["failures_client"].as_u64().unwrap_or_else(|| panic!("{status}"));
    }
    assert_eq!(client_failures, 8, "{keys:?}");
}

#[tokio::test]
async fn requests_a_provider_cannot_express_are_refused_before_any_key_is_spent() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 1).await;

    let mut several = hello(CLAUDE, false);
    several["n"] = json!(2);
    let reply = chat(&client, &proxy, &several).await;
    assert_openai_error(&reply, 400, "unsupported_request", "`n` greater than 1");
    let token_ids = json!({"model": GEMINI_EMBEDDING, "input": [[1, 2, 3]]});
    let reply = send_json(&client, &proxy, EMBEDDINGS, &token_ids).await;
    assert_openai_error(&reply, 400, "unsupported_request", "not token ids");
    let no_messages = json!({"model": FLASH, "messages": [{"role": "system", "content": "Only a system prompt"}]});
    let reply = chat(&client, &proxy, &no_messages).await;
    assert_openai_error(&reply, 400, "unsupported_request", "at least one user");

    for side in &sides {
        assert!(side.mock.requests().is_empty(), "{:?}", side.mock.log());
    }
    keys(&client, &proxy).await.values().for_each(assert_healthy);
}

// ---- rotation, cooldowns, retries -------------------------------------------------------

/// Sends `hello` until key one has been tried (at most twice: least-used
/// selection reaches it by the second request), checking each answer.
async fn until_key_one_tried(client: &TestClient, proxy: &Proxy, side: &Side) {
    for _ in 0..2 {
        let reply = chat(client, proxy, &hello(side.model, false)).await;
        assert_completion(&reply, side.upstream_model);
        if !side.mock.answers(side.keys[0]).is_empty() {
            return;
        }
    }
    panic!("key one was never chosen: {:?}", side.mock.log());
}

/// Key one answers a rate limit once: the request goes on to key two, and
/// key one cools (alone) for the provider's hint, give or take a slack.
#[tokio::test]
async fn a_rate_limit_rotates_to_the_next_key_and_cools_for_the_providers_hint() {
    // Anthropic's `retry-after: 120`; Gemini's `RetryInfo.retryDelay: "30s"`.
    for (side, hint, slack) in [(Side::anthropic().await, 120, 10), (Side::gemini().await, 30, 5)] {
        let (mock, model, [key_one, key_two]) = (&side.mock, side.upstream_model, side.keys);
        let (proxy, client) = start(&[mock], 2).await;
        mock.push_for(key_one, (side.rate_limited)(hint));

        until_key_one_tried(&client, &proxy, &side).await;
        let log = mock.log();
        let at = log.iter().position(|(k, _)| k == key_one).unwrap();
        assert_eq!(log[at..], [(key_one.into(), "status:429".into()), (key_two.into(), "ok".into())]);
        for _ in 0..3 {
            assert_completion(&chat(&client, &proxy, &hello(side.model, false)).await, model);
        }
        assert_eq!(mock.answers(key_one), ["status:429"], "key one is left alone while it cools");

        let keys = keys(&client, &proxy).await;
        let one = status(&keys, mock, key_one);
        assert_eq!(one["state"], "cooling", "{one}");
        assert_eq!(one["provider"], mock.dialect().provider(), "{one}");
        let left = only_cooldown(one, model, "rate_limit");
        assert!(support::near_capped(left, hint, slack), "cooling for the provider's {hint} s: {one}");
        assert_eq!(one["today"]["failures_rate_limit"], 1, "{one}");
        assert_healthy(status(&keys, mock, key_two));
    }
}

#[tokio::test]
async fn every_key_rate_limited_is_429_with_retry_after_for_both_providers() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    // Both hints lie beyond the 60 s deadline: no waiting for a key.
    let hints = [90, 120];
    for (side, hint) in sides.iter().zip(hints) {
        for key in side.keys {
            side.mock.always_for(key, (side.rate_limited)(hint));
        }
    }
    for (side, hint) in sides.iter().zip(hints) {
        let model = side.model;
        for stream in [false, true] {
            let reply = chat(&client, &proxy, &hello(model, stream)).await;
            assert_openai_error(&reply, 429, "rate_limit_exceeded", "");
            let after: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
            assert!((1..=hint).contains(&after), "{model}: Retry-After {after} within the hint {hint}");
        }
        let [one, two] = side.keys;
        assert_eq!(side.mock.answers(one), ["status:429"], "{model}: each key tried once, then left to cool");
        assert_eq!(side.mock.answers(two), ["status:429"], "{model}");
    }
}

/// Seconds from now until the next 00:00 UTC (the default daily reset).
fn secs_to_utc_midnight() -> u64 {
    // The harness moves the daily reset twelve hours from the test's start.
    support::secs_to_daily_reset()
}

#[tokio::test]
async fn exhausted_quota_rotates_and_holds_the_key_until_the_daily_reset() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        side.mock.always_for(side.keys[0], (side.quota_exhausted)());
    }

    for side in &sides {
        let (mock, model, [one, two]) = (&side.mock, side.model, side.keys);
        until_key_one_tried(&client, &proxy, side).await;
        for _ in 0..2 {
            assert_completion(&chat(&client, &proxy, &hello(model, false)).await, side.upstream_model);
        }
        assert_eq!(mock.answers(one).len(), 1, "{model}: {:?}", mock.log());
        let keys = keys(&client, &proxy).await;
        let status_one = status(&keys, mock, one);
        assert_eq!(status_one["state"], "exhausted", "{status_one}");
        let left = only_cooldown(status_one, side.upstream_model, "quota");
        let reset = secs_to_utc_midnight();
        let diff = left.abs_diff(reset) % 86_400;
        assert!(diff <= 5 || diff >= 86_395, "{model}: until the daily reset ({reset} s): {status_one}");
        assert_eq!(status_one["today"]["failures_quota"], 1, "{status_one}");
        assert_healthy(status(&keys, mock, two));
    }
}

#[tokio::test]
async fn refused_keys_are_marked_invalid_for_both_providers() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        side.mock.always_for(side.keys[0], (side.invalid_key)());
    }

    for side in &sides {
        let (mock, model, [one, two]) = (&side.mock, side.model, side.keys);
        until_key_one_tried(&client, &proxy, side).await;
        // Another model too: a bad key is bad for all of them.
        let other = format!("{model}-other");
        for _ in 0..3 {
            let reply = chat(&client, &proxy, &hello(&other, false)).await;
            assert_completion(&reply, other.split_once('/').unwrap().1);
        }
        assert_eq!(mock.answers(one).len(), 1, "{model}: one refusal, then never again: {:?}", mock.log());
        let keys = keys(&client, &proxy).await;
        let status_one = status(&keys, mock, one);
        assert_eq!(status_one["state"], "invalid", "{status_one}");
        let until = status_one["invalid_until_unix_ms"].as_u64().unwrap_or_else(|| panic!("{status_one}"));
        let left = until.saturating_sub(now_ms()) / 1000;
        assert!((290..=300).contains(&left), "the first invalid period is 5 min: {left} s");
        assert_eq!(status_one["today"]["failures_credential"], 1, "{status_one}");
        assert_healthy(status(&keys, mock, two));
    }
}

#[tokio::test]
async fn overloaded_and_unavailable_are_retried_on_the_same_key() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        side.mock.push((side.overloaded)());
    }

    for side in &sides {
        let (mock, model, failed) = (&side.mock, side.model, (side.overloaded)().label());
        let reply = chat(&client, &proxy, &hello(model, false)).await;
        assert_completion(&reply, side.upstream_model);
        let log = mock.log();
        assert_eq!(log.len(), 2, "{model}: one failure, one retry: {log:?}");
        assert_eq!(log[0].0, log[1].0, "{model}: retried on the same key");
        assert_eq!((log[0].1.as_str(), log[1].1.as_str()), (failed.as_str(), "ok"), "{model}");
    }
    let keys = keys(&client, &proxy).await;
    let transient: u64 = keys.values().map(|s| s["today"]["failures_transient"].as_u64().unwrap()).sum();
    assert_eq!(transient, 2, "{keys:?}");
    keys.values().for_each(assert_healthy);
}

#[tokio::test]
async fn a_key_that_stays_overloaded_is_retried_once_then_the_next_key_answers() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        side.mock.always_for(side.keys[0], (side.overloaded)());
    }

    for side in &sides {
        let ([one, two], failed) = (side.keys, (side.overloaded)().label());
        until_key_one_tried(&client, &proxy, side).await;
        let log = side.mock.log();
        let at = log.iter().position(|(k, _)| k == one).unwrap();
        assert_eq!(
            log[at..],
            [(one.into(), failed.clone()), (one.into(), failed), (two.into(), "ok".into())],
            "{}: the same key once more, then the other",
            side.model
        );
    }
}

#[tokio::test]
async fn every_key_failing_is_502_naming_the_provider_error_without_secrets() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        for key in side.keys {
            side.mock.always_for(key, (side.server_error)());
        }
    }
    for side in &sides {
        let (mock, model) = (&side.mock, side.model);
        for stream in [false, true] {
            let reply = chat(&client, &proxy, &hello(model, stream)).await;
            assert_openai_error(&reply, 502, "upstream_failed", side.server_error_words);
        }
        let [one, two] = side.keys;
        assert!(mock.answers(one).iter().all(|a| a == "status:500"), "{:?}", mock.log());
        assert!(!mock.answers(two).is_empty(), "{model}: both keys tried: {:?}", mock.log());
    }
}

#[tokio::test]
async fn a_stream_whose_first_key_is_rate_limited_streams_from_the_next() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 2).await;
    for side in &sides {
        side.mock.always_for(side.keys[0], (side.rate_limited)(60));
    }

    for side in &sides {
        let (mock, model, [one, two]) = (&side.mock, side.model, side.keys);
        for _ in 0..2 {
            let mut sse = open_stream(&client, &proxy, &hello(model, true)).await;
            let mut streamed = Streamed::default();
            streamed.feed_all(&sse.rest().await);
            assert_eq!(streamed.content, side.text);
        }
        assert_eq!(mock.answers(one), ["status:429"], "{model}: {:?}", mock.log());
        assert_eq!(mock.answers(two), ["ok", "ok"], "{model}");
    }
}

#[tokio::test]
async fn a_silent_provider_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let sides = Side::both().await;
    let proxy = Proxy::start_with(dialect_env(&[&sides[0].mock, &sides[1].mock], 1), |s| {
        s.stream_idle_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let client = TestClient::http1();
    // The gate never opens: the provider goes quiet after its first text.
    let gate = Gate::new();
    for side in &sides {
        side.mock.push(Script::gated_events((side.text_stream)(), side.events_to_first_text, &gate));
    }
    for side in &sides {
        let mut sse = open_stream(&client, &proxy, &hello(side.model, true)).await;
        let events = sse.rest().await;
        assert_stream_error_tail(&events, "Hello", "");
        assert_break_counted(&client, &proxy, &side.mock, side.keys[0]).await;
    }
}

#[tokio::test]
async fn a_whole_answer_that_stalls_is_cut_at_the_deadline() {
    let sides = Side::both().await;
    let proxy = Proxy::start_with(dialect_env(&[&sides[0].mock, &sides[1].mock], 1), |s| {
        s.global_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let client = TestClient::http1();
    for side in &sides {
        side.mock.push(Script::stalled_half_way(&(side.whole_answer)()));
    }
    for side in &sides {
        let started = tokio::time::Instant::now();
        let reply = chat(&client, &proxy, &hello(side.model, false)).await;
        assert_openai_error(&reply, 504, "deadline_exceeded", "");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{}: cut at the deadline", side.model);
    }
}

// ---- token accounting -------------------------------------------------------------------

#[tokio::test]
async fn tokens_of_whole_answers_and_usage_streams_are_counted_per_key() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 1).await;

    for side in &sides {
        assert_completion(&chat(&client, &proxy, &hello(side.model, false)).await, side.upstream_model);
    }
    for side in &sides {
        let mut request = hello(side.model, true);
        request["stream_options"] = json!({"include_usage": true});
        let mut sse = open_stream(&client, &proxy, &request).await;
        Streamed::default().feed_all(&sse.rest().await);
    }
    let keys = keys(&client, &proxy).await;
    for side in &sides {
        let one = status(&keys, &side.mock, side.keys[0]);
        let (whole, streamed) = (side.whole_tokens, side.stream_tokens);
        assert_eq!(
            (&one["today"]["tokens_in"], &one["today"]["tokens_out"]),
            (&json!(whole.0 + streamed.0), &json!(whole.1 + streamed.1)),
            "{one}"
        );
    }
}

#[tokio::test]
async fn tokens_of_streams_are_counted_even_when_the_client_did_not_ask_for_usage() {
    let sides = Side::both().await;
    let (proxy, client) = start_both(&sides, 1).await;
    for side in &sides {
        let mut sse = open_stream(&client, &proxy, &hello(side.model, true)).await;
        let mut streamed = Streamed::default();
        streamed.feed_all(&sse.rest().await);
        assert_eq!(streamed.usage, None, "the client still gets no usage chunk");
    }
    let keys = keys(&client, &proxy).await;
    for side in &sides {
        let one = status(&keys, &side.mock, side.keys[0]);
        let (prompt, completion) = side.stream_tokens;
        assert_eq!(
            (&one["today"]["tokens_in"], &one["today"]["tokens_out"]),
            (&json!(prompt), &json!(completion)),
            "{one}"
        );
    }
}

// ---- embeddings -------------------------------------------------------------------------

#[test]
fn base64_decoder_reads_known_values() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("AACAPw=="), 1.0f32.to_le_bytes());
}

#[tokio::test]
async fn gemini_embeddings_for_a_string_and_a_list_as_floats() {
    let mock = MockUpstream::gemini().await;
    let (proxy, client) = start(&[&mock], 1).await;

    let single = json!({"model": GEMINI_EMBEDDING, "input": "hello"});
    let vectors = embeddings(&send_json(&client, &proxy, EMBEDDINGS, &single).await, "gemini-embedding-001", false);
    assert_eq!(vectors, [gemini::embedding_values(0, 4)]);

    let list = json!({"model": GEMINI_EMBEDDING, "input": ["one", "two", "three"], "encoding_format": "float"});
    let vectors = embeddings(&send_json(&client, &proxy, EMBEDDINGS, &list).await, "gemini-embedding-001", false);
    assert_eq!(vectors, (0..3).map(|i| gemini::embedding_values(i, 4)).collect::<Vec<_>>());

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.path, "/v1beta/models/gemini-embedding-001:batchEmbedContents");
        assert_clean_auth(request, "x-goog-api-key", &[GEMINI_KEY_ONE]);
    }
    let item = |text: &str| json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]}});
    assert_eq!(seen[0].json(), json!({"requests": [item("hello")]}));
    assert_eq!(seen[1].json(), json!({"requests": [item("one"), item("two"), item("three")]}));
}

#[tokio::test]
async fn gemini_embeddings_as_base64_are_little_endian_f32_and_dimensions_pass_through() {
    let mock = MockUpstream::gemini().await;
    let (proxy, client) = start(&[&mock], 1).await;

    // What the OpenAI Python SDK sends by default.
    let request =
        json!({"model": GEMINI_EMBEDDING, "input": ["one", "two"], "encoding_format": "base64", "dimensions": 3});
    let vectors = embeddings(&send_json(&client, &proxy, EMBEDDINGS, &request).await, "gemini-embedding-001", true);
    let expected: Vec<Vec<f64>> =
        (0..2).map(|i| gemini::embedding_values(i, 3).into_iter().map(|v| f64::from(v as f32)).collect()).collect();
    assert_eq!(vectors, expected);

    let sent = mock.requests()[0].json();
    for request in sent["requests"].as_array().expect("requests") {
        assert_eq!(request["outputDimensionality"], 3, "{sent}");
    }
}

#[tokio::test]
async fn anthropic_embeddings_are_refused_as_unsupported() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 1).await;
    let request = json!({"model": "anthropic/claude-sonnet-4-5", "input": "hello"});
    let reply = send_json(&client, &proxy, EMBEDDINGS, &request).await;
    assert_openai_error(&reply, 400, "unsupported_request", "anthropic");
    assert!(mock.requests().is_empty(), "nothing reaches Anthropic: {:?}", mock.log());
    let keys = keys(&client, &proxy).await;
    assert_healthy(status(&keys, &mock, ANTHROPIC_KEY_ONE));
}

// ---- model lists ----------------------------------------------------------------------

#[tokio::test]
async fn models_lists_anthropic_and_gemini_models_as_provider_ids() {
    let ant = MockUpstream::anthropic().await;
    let gem = MockUpstream::gemini().await;
    let (proxy, client) = start(&[&ant, &gem], 2).await;

    let reply = client.fetch(get(&proxy.url("/v1/models"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_no_secret("/v1/models", reply.text());
    let list = reply.json();
    assert_eq!(list["object"], "list");
    let mut ids: Vec<&str> = list["data"].as_array().expect("data").iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "anthropic/claude-haiku-4-5-20251001",
            "anthropic/claude-sonnet-4-5-20250929",
            "gemini/gemini-2.5-flash",
            "gemini/gemini-2.5-pro",
            "gemini/gemini-embedding-001",
        ],
        "chat and embedding models, `models/` dropped, image models left out"
    );
    for model in list["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model", "{model}");
        let owner = model["id"].as_str().unwrap().split_once('/').unwrap().0;
        assert_eq!(model["owned_by"], owner, "{model}");
        assert!(model["created"].is_u64(), "{model}");
    }

    let listed = ant.requests();
    assert_eq!(listed.len(), 1, "{:?}", ant.log());
    assert_eq!((listed[0].method.as_str(), listed[0].path.as_str()), ("GET", "/v1/models"));
    assert_eq!(listed[0].header("anthropic-version"), Some(anthropic::VERSION));
    assert_clean_auth(&listed[0], "x-api-key", &[ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO]);
    let listed = gem.requests();
    assert_eq!(listed.len(), 1, "{:?}", gem.log());
    assert_eq!((listed[0].method.as_str(), listed[0].path.as_str()), ("GET", "/v1beta/models"));
    assert_clean_auth(&listed[0], "x-goog-api-key", &[GEMINI_KEY_ONE, GEMINI_KEY_TWO]);
}

#[tokio::test]
async fn providers_route_shows_the_dialects_without_secrets() {
    let ant = MockUpstream::anthropic().await;
    let gem = MockUpstream::gemini().await;
    let (proxy, client) = start(&[&ant, &gem], 2).await;
    let reply = client.fetch(get(&proxy.url("/v1/providers"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_no_secret("/v1/providers", reply.text());
    let list = reply.json();
    let find = |id: &str| {
        list["data"].as_array().unwrap().iter().find(|p| p["id"] == id).cloned().unwrap_or_else(|| panic!("{list}"))
    };
    for (mock, id) in [(&ant, "anthropic"), (&gem, "gemini")] {
        let provider = find(id);
        assert_eq!(provider["dialect"], id, "{provider}");
        assert_eq!(provider["api_base"], mock.base(), "{provider}");
        assert_eq!(provider["keys"]["total"], 2, "{provider}");
    }
}

#[tokio::test]
async fn anthropic_style_and_http2_clients_get_the_same_translated_answers() {
    let ant = MockUpstream::anthropic().await;
    let gem = MockUpstream::gemini().await;
    let (proxy, _) = start(&[&ant, &gem], 1).await;
    let client = TestClient::h2c();
    for (mock, model, text) in [(&ant, CLAUDE, anthropic::TEXT), (&gem, FLASH, gemini::TEXT)] {
        // The proxy key as `x-api-key`, the way Anthropic's SDKs send theirs.
        let reply =
            client.fetch(post(&proxy.url(CHAT), Auth::XApiKey(PROXY_KEY), hello(model, false).to_string())).await;
        let body = assert_completion(&reply, model.split_once('/').unwrap().1);
        assert_eq!(body["choices"][0]["message"]["content"], text);
        let res = client.send(post(&proxy.url(CHAT), Auth::XApiKey(PROXY_KEY), hello(model, true).to_string())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        let mut streamed = Streamed::default();
        streamed.feed_all(&SseReader::new(res.into_body()).rest().await);
        assert_eq!(streamed.content, text);
        let key = mock.dialect().keys()[0];
        for seen in mock.requests() {
            assert_clean_auth(&seen, mock.dialect().key_header(), &[key]);
        }
    }
}
