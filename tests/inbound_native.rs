//! The inbound dialects against providers of their own dialect, end to
//! end: Claude Code's Messages API to Anthropic, Gemini CLI's
//! generateContent to Gemini, Codex's Responses API to OpenAI. Each cell
//! of the matrix where both sides speak the same dialect passes through
//! byte for byte, model and credentials aside; the pool (rotation,
//! cooldowns) works as for chat completions; errors are in the client's
//! own shape; and a Responses follow-up always reaches the key that made
//! the response.

mod support;

use serde_json::{Value, json};
use support::{
    ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO, Auth, GEMINI_KEY_ONE, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY,
    Proxy, Script, TestClient, dialect_env, get, keys_by_id,
    mock::{anthropic, gemini, responses},
    post, request,
};

const MESSAGES: &str = "/v1/messages";

async fn start(mocks: &[&MockUpstream], keys: usize) -> (Proxy, TestClient) {
    (Proxy::start(dialect_env(mocks, keys)).await, TestClient::http1())
}

/// A Claude Code request, as its SDK writes it: a bare model, blocks with
/// `cache_control`, a thinking block with its signature, a beta header.
fn claude_code_body(model: &str, stream: bool) -> String {
    json!({
        "model": model, "max_tokens": 32000, "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Fix the bug.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look at main.rs", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
                {"type": "tool_use", "id": "toolu_01Read", "name": "Read", "input": {"file_path": "src/main.rs"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01Read", "content": "fn main() {}"}]}
        ],
        "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object"}}],
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "metadata": {"user_id": "user_abc_account__session_123"}
    })
    .to_string()
}

fn messages_request(proxy: &Proxy, body: &str) -> http::Request<support::client::ReqBody> {
    let mut req = post(&proxy.url(MESSAGES), Auth::XApiKey(PROXY_KEY), body.to_owned());
    req.headers_mut().insert("anthropic-version", "2023-06-01".parse().unwrap());
    req.headers_mut().insert("anthropic-beta", "interleaved-thinking-2025-05-14".parse().unwrap());
    req
}

#[tokio::test]
async fn claude_code_reaches_anthropic_byte_for_byte() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 1).await;
    let body = claude_code_body("claude-sonnet-4-5-20250929", false);
    let reply = client.fetch(messages_request(&proxy, &body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), anthropic::message_text(), "the answer as Anthropic wrote it");

    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.body_str(), body, "a bare model needs no rewrite: the body goes as it came");
    assert_eq!(seen.key.as_deref(), Some(ANTHROPIC_KEY_ONE));
    assert_eq!(seen.header("anthropic-beta"), Some("interleaved-thinking-2025-05-14"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert!(!seen.all_header_values().contains(PROXY_KEY), "the proxy key stays here");

    // With a provider prefix, only the model token changes.
    let prefixed = claude_code_body("anthropic/claude-sonnet-4-5-20250929", false);
    let reply = client.fetch(messages_request(&proxy, &prefixed)).await;
    assert_eq!(reply.status, 200);
    let seen = &mock.requests()[1];
    assert_eq!(seen.body_str(), prefixed.replace("anthropic/claude", "claude"));
}

#[tokio::test]
async fn a_thinking_stream_passes_through_unchanged_and_is_counted() {
    let mock = MockUpstream::anthropic().await;
    let events = vec![
        anthropic::event(json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 300, "output_tokens": 1}}})),
        anthropic::event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}})),
        anthropic::event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "The bug is in main."}})),
        anthropic::event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}})),
        anthropic::event(json!({"type": "content_block_stop", "index": 0})),
        anthropic::event(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic::event(
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Fixed."}}),
        ),
        anthropic::event(json!({"type": "content_block_stop", "index": 1})),
        anthropic::event(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 57}}),
        ),
        anthropic::event(json!({"type": "message_stop"})),
    ];
    mock.push(Script::events(events.clone()));
    let (proxy, client) = start(&[&mock], 1).await;
    let reply = client.fetch(messages_request(&proxy, &claude_code_body("claude-sonnet-4-5", true))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(reply.text(), events.concat(), "every event, signatures included, as Anthropic sent them");

    let keys = keys_by_id(&client, &proxy, Auth::Bearer(PROXY_KEY)).await;
    let today = &keys[&mock.key_id(ANTHROPIC_KEY_ONE)]["today"];
    assert_eq!(today["tokens_in"], 312, "input plus cache reads, from message_start: {today}");
    assert_eq!(today["tokens_out"], 57, "from message_delta: {today}");
}

#[tokio::test]
async fn messages_rotate_on_429_401_and_529_and_answer_in_anthropics_shape() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 2).await;
    for (fault, class) in [
        (anthropic::rate_limited(Some("30")), "rate_limit"),
        (anthropic::overloaded(), "transient"),
        (anthropic::invalid_key(), "credential"),
    ] {
        // The key the pool tries first fails, every time; the other answers.
        let victim = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        for key in [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO] {
            let (victim, fault) = (victim.clone(), fault.clone());
            mock.faults_for(key, move |req| {
                let key = req.key.clone().unwrap_or_default();
                let mut victim = victim.lock().unwrap();
                if victim.get_or_insert_with(|| key.clone()) == &key { fault.clone() } else { Script::Ok }
            });
        }
        mock.take_requests();
        let reply = client.fetch(messages_request(&proxy, &claude_code_body("claude-sonnet-4-5", false))).await;
        assert_eq!(reply.status, 200, "{class}: {}", reply.text());
        assert_eq!(reply.text(), anthropic::message_text(), "{class}");
        let seen = mock.keys_seen();
        let victim = victim.lock().unwrap().clone().unwrap();
        assert_eq!(seen.first(), Some(&victim), "{class}: {seen:?}");
        assert_ne!(seen.last(), Some(&victim), "{class}: rotated to the other key: {seen:?}");
        for key in [ANTHROPIC_KEY_ONE, ANTHROPIC_KEY_TWO] {
            mock.clear_for(key);
            let reset = format!("/v1/keys/{}/reset", mock.key_id(key));
            let reset = client.fetch(post(&proxy.url(&reset), Auth::Bearer(PROXY_KEY), "")).await;
            assert_eq!(reset.status, 200);
        }
    }

    // Every key rate limited: a 429 with Retry-After, in Anthropic's shape.
    mock.always_for(ANTHROPIC_KEY_ONE, anthropic::rate_limited(Some("120")));
    mock.always_for(ANTHROPIC_KEY_TWO, anthropic::rate_limited(Some("120")));
    let reply = client.fetch(messages_request(&proxy, &claude_code_body("claude-sonnet-4-5", false))).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn proxy_errors_on_dialect_routes_take_the_dialects_shape() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 1).await;
    let reply = client.fetch(post(&proxy.url(MESSAGES), Auth::XApiKey("wrong"), "{}")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
        "message": reply.json()["error"]["message"]}})
    );
    let reply = client.fetch(post(&proxy.url(MESSAGES), Auth::Bearer(PROXY_KEY), "not json")).await;
    assert_eq!((reply.status.as_u16(), reply.json()["error"]["type"].clone()), (400, json!("invalid_request_error")));

    let gemini_path = "/v1beta/models/gemini-2.5-pro:generateContent";
    let reply = client.fetch(post(&proxy.url(gemini_path), Auth::GoogKey("wrong"), "{}")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(reply.json()["error"]["code"], 401);
    // The Gemini provider has no key here: 503, in Google's words.
    let reply = client.fetch(post(&proxy.url(gemini_path), Auth::GoogKey(PROXY_KEY), r#"{"contents": []}"#)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["status"], "UNAVAILABLE");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("GEMINI_API_KEY"), "{message}");

    let reply =
        client.fetch(request(http::Method::PUT, &proxy.url("/v1/responses/resp_1"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, DELETE"));
}

#[tokio::test]
async fn a_messages_stream_cut_mid_way_ends_with_anthropics_error_event() {
    let mock = MockUpstream::anthropic().await;
    mock.push(Script::BreakAfter(3));
    let (proxy, client) = start(&[&mock], 1).await;
    let reply = client.fetch(messages_request(&proxy, &claude_code_body("claude-sonnet-4-5", true))).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.starts_with(&anthropic::text_stream()[..3].concat()), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{last}");
    let data: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error");
}

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic() {
    let mock = MockUpstream::anthropic().await;
    let (proxy, client) = start(&[&mock], 1).await;
    // Without an anthropic-version header: the provider's default fills in.
    let body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let reply =
        client.fetch(post(&proxy.url("/v1/messages/count_tokens?beta=true"), Auth::Bearer(PROXY_KEY), body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"input_tokens": anthropic::COUNTED_TOKENS}));
    let seen = &mock.requests()[0];
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/v1/messages/count_tokens", Some("beta=true")));
    assert_eq!(seen.header("anthropic-version"), Some(anthropic::VERSION));
}

#[tokio::test]
async fn gemini_cli_reaches_gemini_with_the_key_in_any_of_googles_places() {
    let mock = MockUpstream::gemini().await;
    let (proxy, client) = start(&[&mock], 1).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                      "generationConfig": {"thinkingConfig": {"includeThoughts": true}}})
    .to_string();
    let whole = "/v1beta/models/gemini-2.5-pro:generateContent";
    for auth in [Auth::GoogKey(PROXY_KEY), Auth::Bearer(PROXY_KEY)] {
        let reply = client.fetch(post(&proxy.url(whole), auth, body.clone())).await;
        assert_eq!(reply.status, 200, "{auth:?}: {}", reply.text());
        assert_eq!(reply.text(), gemini::response_text());
    }
    let streamed = format!("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={PROXY_KEY}");
    let reply = client.fetch(post(&proxy.url(&streamed), Auth::None, body.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), gemini::text_stream().concat(), "the stream as Google sent it");
    let counted = "/v1beta/models/gemini-2.5-pro:countTokens";
    let reply = client.fetch(post(&proxy.url(counted), Auth::GoogKey(PROXY_KEY), body.clone())).await;
    assert_eq!(reply.json(), json!({"totalTokens": gemini::COUNTED_TOKENS}));

    for seen in mock.requests() {
        assert_eq!(seen.body_str(), body, "the body goes as it came");
        assert_eq!(seen.key.as_deref(), Some(GEMINI_KEY_ONE));
        assert!(!seen.query.as_deref().unwrap_or_default().contains("key="), "the proxy key stays here");
        assert!(!seen.all_header_values().contains(PROXY_KEY), "the proxy key stays here");
    }
    assert_eq!(mock.requests()[2].query.as_deref(), Some("alt=sse"));
    assert_eq!(mock.requests()[2].path, "/v1beta/models/gemini-2.5-pro:streamGenerateContent");
}

fn responses_body(extra: Value) -> String {
    let mut body = json!({"model": "gpt-5-codex", "input": "Hi", "store": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

#[tokio::test]
async fn a_response_belongs_to_the_key_that_made_it() {
    let mock = MockUpstream::start().await;
    let (proxy, client) = start(&[&mock], 3).await;
    let url = proxy.url("/v1/responses");
    let first = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), responses_body(json!({})))).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let owner = mock.requests()[0].key.clone().unwrap();
    assert!(responses::made_with(&id, &owner));

    // Least-used selection would spread these over the idle keys; each
    // follow-up goes to the key that holds the conversation.
    let mut previous = id.clone();
    for turn in 0..4 {
        let stream = turn % 2 == 1;
        let body = responses_body(json!({"previous_response_id": previous, "stream": stream}));
        let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), body)).await;
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.text());
        let next = match stream {
            true => {
                let created = reply.text().split("\n\n").next().unwrap().split_once("data: ").unwrap().1.to_owned();
                serde_json::from_str::<Value>(&created).unwrap()["response"]["id"].as_str().unwrap().to_owned()
            }
            false => reply.json()["id"].as_str().unwrap().to_owned(),
        };
        assert!(responses::made_with(&next, &owner), "turn {turn} on the owner's key");
        previous = next;
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(owner.as_str())), "{:?}", mock.keys_seen());

    // Counting, reading, cancelling and deleting go there too.
    let body = responses_body(json!({"previous_response_id": id}));
    let counted = client.fetch(post(&proxy.url("/v1/responses/input_tokens"), Auth::Bearer(PROXY_KEY), body)).await;
    assert_eq!(counted.json()["input_tokens"], 42, "{}", counted.text());
    let stored = format!("/v1/responses/{id}");
    let read = client.fetch(get(&proxy.url(&stored), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!((read.status.as_u16(), read.json()["id"].clone()), (200, json!(id)));
    let cancel = client.fetch(post(&proxy.url(&format!("{stored}/cancel")), Auth::Bearer(PROXY_KEY), "")).await;
    assert_eq!(cancel.json()["status"], "cancelled");
    let delete = client.fetch(request(http::Method::DELETE, &proxy.url(&stored), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(delete.json()["deleted"], true);
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(owner.as_str())));
    assert!(proxy.pool().responses().owner(&id, u64::MAX / 2).is_none(), "a deleted response is forgotten");

    // The owner disabled: a follow-up hears why, naming the response.
    let disable = format!("/v1/keys/{}/disable", mock.key_id(&owner));
    assert_eq!(client.fetch(post(&proxy.url(&disable), Auth::Bearer(PROXY_KEY), "")).await.status, 200);
    let body = responses_body(json!({"previous_response_id": previous}));
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), body)).await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "response_key_unavailable");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains(&previous));
    assert!([KEY_ONE, KEY_TWO, KEY_THREE].contains(&owner.as_str()));
}

#[tokio::test]
async fn a_follow_up_waits_for_its_cooling_key_instead_of_moving() {
    let mock = MockUpstream::start().await;
    let (proxy, client) = start(&[&mock], 2).await;
    let url = proxy.url("/v1/responses");
    let first = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), responses_body(json!({})))).await;
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let owner = mock.requests()[0].key.clone().unwrap();
    // One 429 with a one-second Retry-After: the follow-up waits for it.
    mock.push_for(&owner, Script::rate_limited(Some("1")));
    let body = responses_body(json!({"previous_response_id": id}));
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let keys: Vec<_> = mock.keys_seen();
    assert_eq!(keys, [owner.clone(), owner.clone(), owner], "never another key");
}

#[tokio::test]
async fn response_owners_survive_a_restart() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let client = TestClient::http1();
    let first = Proxy::start_in(dialect_env(&[&mock], 3), data.path(), |_| {}).await;
    let reply =
        client.fetch(post(&first.url("/v1/responses"), Auth::Bearer(PROXY_KEY), responses_body(json!({})))).await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let owner = mock.requests()[0].key.clone().unwrap();
    first.stop().await;
    let state = support::store::pool_state(data.path()).expect("state saved at shutdown");
    assert!(state.contains(&id) && !state.contains(&owner), "the id and its key id, never the key");

    let second = Proxy::start_in(dialect_env(&[&mock], 3), data.path(), |_| {}).await;
    for _ in 0..3 {
        let body = responses_body(json!({"previous_response_id": id}));
        let reply = client.fetch(post(&second.url("/v1/responses"), Auth::Bearer(PROXY_KEY), body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(owner.as_str())), "{:?}", mock.keys_seen());
    second.stop().await;
}

#[tokio::test]
async fn encrypted_reasoning_goes_back_to_the_key_that_made_it() {
    // Codex keeps no state at OpenAI (`store: false`): it sends the
    // encrypted reasoning of earlier turns back, which only the
    // organisation that made it can read.
    let mock = MockUpstream::start().await;
    let (proxy, client) = start(&[&mock], 3).await;
    let url = proxy.url("/v1/responses");
    let first = json!({"model": "gpt-5-codex", "input": "Hi", "store": false, "stream": true,
                       "include": ["reasoning.encrypted_content"]});
    let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), first.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let owner = mock.requests()[0].key.clone().unwrap();
    let completed = reply.text().trim_end().rsplit("\n\n").next().unwrap().split_once("data: ").unwrap().1.to_owned();
    let completed: Value = serde_json::from_str(&completed).unwrap();
    let reasoning = completed["response"]["output"][0].clone();
    let encrypted = reasoning["encrypted_content"].as_str().unwrap().to_owned();

    for turn in 0..3 {
        // As Codex sends it: the reasoning item without its id, `/` escaped by some encoders.
        let escaped = encrypted.replace('/', "\\/");
        let body = format!(
            r#"{{"model": "gpt-5-codex", "store": false, "input": [{{"type": "message", "role": "user", "content": "Hi"}}, {{"type": "reasoning", "summary": [], "encrypted_content": "{escaped}"}}, {{"type": "message", "role": "user", "content": "turn {turn}"}}]}}"#
        );
        let reply = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), body)).await;
        assert_eq!(reply.status, 200, "turn {turn}: {}", reply.text());
    }
    assert!(mock.requests().iter().all(|r| r.key.as_deref() == Some(owner.as_str())), "{:?}", mock.keys_seen());
}
