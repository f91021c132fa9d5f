//! Every error a client can get, end to end: status, OpenAI-shaped body
//! with its code and a message naming the fix, no secret anywhere, and no
//! upstream call where the proxy refuses on its own. Upstream client errors
//! pass through untouched.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::{
    Auth, CLIENT_OWN_KEY, Gate, INVALID_REQUEST, KEY_ONE, MockUpstream, PROXY_KEY, Proxy, Script, SseReader,
    TestClient, Then, assert_no_secret, assert_openai_error, chat_body, chunked, closed_port, get, openai_env, post,
    request, stream_events, within,
};

const CHAT: &str = "/v1/chat/completions";

async fn setup() -> (MockUpstream, Proxy, TestClient) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    (mock, proxy, TestClient::http1())
}

async fn post_chat(client: &TestClient, proxy: &Proxy, body: &str) -> support::Reply {
    client.fetch(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), body.to_owned())).await
}

// ---- 400: the request body ---------------------------------------------

#[tokio::test]
async fn bad_json_is_400_invalid_json() {
    let (mock, proxy, client) = setup().await;
    let reply = post_chat(&client, &proxy, r#"{"model":"openai/gpt-4o-mini","#).await;
    assert_openai_error(&reply, 400, "invalid_json", "request body must be a JSON object");
    assert!(mock.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn missing_model_is_400_missing_model() {
    let (mock, proxy, client) = setup().await;
    let reply = post_chat(&client, &proxy, r#"{"messages":[{"role":"user","content":"hi"}]}"#).await;
    assert_openai_error(&reply, 400, "missing_model", "request body has no `model`: name one as `provider/model`");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_provider_is_400_naming_the_known_providers() {
    let (mock, proxy, client) = setup().await;
    let reply = post_chat(&client, &proxy, &chat_body("nope/x", false)).await;
    assert_openai_error(&reply, 400, "unknown_provider", "unknown provider `nope`");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("openai"), "lists the known ones: {message}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn bad_request_bodies_are_400_never_500_and_never_reach_the_upstream() {
    let (mock, proxy, client) = setup().await;
    let table = [
        ("", "invalid_json", "request body must be a JSON object"),
        ("not json", "invalid_json", "request body must be a JSON object"),
        ("[1,2]", "invalid_json", "request body must be a JSON object"),
        (r#"{"model":"openai/gpt-4o","stream":"yes"}"#, "invalid_json", "request body must be a JSON object"),
        (r#"{"model":null}"#, "missing_model", "request body has no `model`"),
        (r#"{"model":42}"#, "invalid_model", "`model` must be a string"),
        (r#"{"model":"gpt-4o-mini"}"#, "invalid_model", "model `gpt-4o-mini` is not of the form `provider/model`"),
        (r#"{"model":"openai/"}"#, "invalid_model", "`provider/model`"),
        (r#"{"model":"/gpt-4o"}"#, "invalid_model", "`provider/model`"),
    ];
    for (body, code, message) in table {
        for path in [CHAT, "/v1/embeddings"] {
            let reply = client.fetch(post(&proxy.url(path), Auth::Bearer(PROXY_KEY), body)).await;
            assert_openai_error(&reply, 400, code, message);
        }
    }
    assert!(mock.requests().is_empty());
}

// ---- 401: the proxy key -------------------------------------------------

#[tokio::test]
async fn missing_proxy_key_is_401_on_every_authenticated_route() {
    let (mock, proxy, client) = setup().await;
    let body = chat_body("openai/gpt-4o-mini", false);
    let requests = [
        post(&proxy.url(CHAT), Auth::None, body.clone()),
        post(&proxy.url("/v1/embeddings"), Auth::None, body),
        get(&proxy.url("/v1/models"), Auth::None),
        get(&proxy.url("/v1/providers"), Auth::None),
        get(&proxy.url("/v1/keys"), Auth::None),
    ];
    for req in requests {
        let reply = client.fetch(req).await;
        assert_openai_error(
            &reply,
            401,
            "invalid_api_key",
            "missing proxy API key: send `Authorization: Bearer <PROXY_API_KEY>` or `x-api-key: <PROXY_API_KEY>`",
        );
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn wrong_proxy_key_is_401_by_bearer_and_by_x_api_key() {
    let (mock, proxy, client) = setup().await;
    let body = chat_body("openai/gpt-4o-mini", false);
    // A client's own provider key, and one of the pool's keys: neither is
    // the proxy key, and neither may be echoed back.
    for wrong in [CLIENT_OWN_KEY, KEY_ONE, "proxy-SECRET-ke"] {
        for auth in [Auth::Bearer(wrong), Auth::XApiKey(wrong)] {
            let reply = client.fetch(post(&proxy.url(CHAT), auth, body.clone())).await;
            assert_openai_error(
                &reply,
                401,
                "invalid_api_key",
                "invalid proxy API key: the key sent does not match PROXY_API_KEY",
            );
            let reply = client.fetch(get(&proxy.url("/v1/keys"), auth)).await;
            assert_openai_error(&reply, 401, "invalid_api_key", "invalid proxy API key");
        }
    }
    assert!(mock.requests().is_empty());
}

// ---- 404 and 405: routing, before auth ----------------------------------

#[tokio::test]
async fn unknown_route_is_404_before_auth() {
    let (mock, proxy, client) = setup().await;
    for (method, path) in [
        (Method::GET, "/v1/nope"),
        (Method::POST, "/v1/completions"),
        (Method::GET, "/"),
        (Method::POST, "/v1/chat/completions/extra"),
    ] {
        let reply = client.fetch(request(method.clone(), &proxy.url(path), Auth::None)).await;
        assert_openai_error(&reply, 404, "unknown_url", &format!("no route for `{path}`"));
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_before_auth() {
    let (mock, proxy, client) = setup().await;
    for (method, path, allow) in [
        (Method::GET, CHAT, "POST"),
        (Method::PUT, "/v1/embeddings", "POST"),
        (Method::POST, "/v1/models", "GET"),
        (Method::DELETE, "/v1/keys", "GET"),
        (Method::POST, "/v1/providers", "GET"),
        (Method::POST, "/health", "GET"),
    ] {
        let reply = client.fetch(request(method.clone(), &proxy.url(path), Auth::None)).await;
        assert_openai_error(
            &reply,
            405,
            "method_not_allowed",
            &format!("method not allowed on this route; use {allow}"),
        );
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    assert!(mock.requests().is_empty());
}

// ---- 413: body size -----------------------------------------------------

const LIMIT: usize = 256;

/// A valid chat body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let head = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let pad = len - head.len() - tail.len();
    let body = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(body.len(), len);
    body
}

async fn setup_with_limit() -> (MockUpstream, Proxy, TestClient) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| s.max_body_bytes = LIMIT).await;
    (mock, proxy, TestClient::http1())
}

#[tokio::test]
async fn body_over_the_limit_is_413_by_content_length() {
    let (mock, proxy, client) = setup_with_limit().await;
    let reply = post_chat(&client, &proxy, &body_of_len(LIMIT + 1)).await;
    assert_openai_error(
        &reply,
        413,
        "request_too_large",
        &format!("request body is larger than the proxy's limit of {LIMIT} bytes"),
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let (mock, proxy, client) = setup_with_limit().await;
    let body = Bytes::from(body_of_len(4 * LIMIT));
    let parts: Vec<Bytes> = body.chunks(100).map(Bytes::copy_from_slice).collect();
    let req = chunked(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), parts);
    assert!(req.headers().get("content-length").is_none());
    let reply = client.fetch(req).await;
    assert_openai_error(&reply, 413, "request_too_large", &format!("limit of {LIMIT} bytes"));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn body_exactly_at_the_limit_is_accepted_whole_or_chunked() {
    let (mock, proxy, client) = setup_with_limit().await;
    let body = body_of_len(LIMIT);
    let reply = post_chat(&client, &proxy, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let parts: Vec<Bytes> = Bytes::from(body).chunks(100).map(Bytes::copy_from_slice).collect();
    let reply = client.fetch(chunked(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), parts)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.requests().len(), 2);
}

// ---- 503: no key --------------------------------------------------------

#[tokio::test]
async fn provider_without_a_key_is_503_naming_the_variable_to_set() {
    let (mock, proxy, client) = setup().await;
    for path in [CHAT, "/v1/embeddings"] {
        let reply = client
            .fetch(post(&proxy.url(path), Auth::Bearer(PROXY_KEY), chat_body("groq/llama-3.1-8b-instant", false)))
            .await;
        assert_openai_error(
            &reply,
            503,
            "no_usable_key",
            "no API key configured for provider `groq`: set GROQ_API_KEY",
        );
    }
    assert!(mock.requests().is_empty());
}

// ---- 502: upstream unreachable or broken --------------------------------

#[tokio::test]
async fn unreachable_upstream_is_502_naming_the_provider_and_the_cause() {
    for stream in [false, true] {
        let env = vec![
            ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
            ("OPENAI_API_KEY_1".to_owned(), KEY_ONE.to_owned()),
            ("OPENAI_API_BASE".to_owned(), format!("http://127.0.0.1:{}/v1", closed_port())),
        ];
        let proxy = Proxy::start(env).await;
        let client = TestClient::http1();
        let reply = post_chat(&client, &proxy, &chat_body("openai/gpt-4o-mini", stream)).await;
        assert_openai_error(&reply, 502, "upstream_failed", "upstream `openai` failed before answering");
        assert!(reply.text().contains("Connection refused"), "{}", reply.text());
    }
}

#[tokio::test]
async fn upstream_closing_without_an_answer_is_retried_then_502() {
    for stream in [false, true] {
        let (mock, proxy, client) = setup().await;
        // The first attempt and its one same-key retry both meet a closed connection.
        mock.push(Script::Close);
        mock.push(Script::Close);
        let reply = post_chat(&client, &proxy, &chat_body("openai/gpt-4o-mini", stream)).await;
        assert_openai_error(&reply, 502, "upstream_failed", "upstream `openai` failed before answering");
        assert_eq!(mock.requests().len(), 2, "one attempt and one same-key retry");
    }
}

#[tokio::test]
async fn upstream_closing_once_is_retried_and_succeeds() {
    let (mock, proxy, client) = setup().await;
    mock.push(Script::Close);
    let reply = post_chat(&client, &proxy, &chat_body("openai/gpt-4o-mini", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn stream_broken_after_its_headers_ends_with_one_error_event() {
    let (mock, proxy, client) = setup().await;
    let gate = Gate::new();
    mock.push(Script::Stream { before: 2, gate: gate.clone(), then: Then::Break });

    let res = client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", true))).await;
    assert_eq!(res.status(), 200, "the 200 went out before the break");
    let mut sse = SseReader::new(res.into_body());
    let expected = stream_events("gpt-4o-mini");
    // The client has both events before the upstream breaks the stream.
    let mut events =
        vec![sse.next_event().await.expect("a first event"), sse.next_event().await.expect("a second event")];
    gate.open();
    events.extend(sse.rest().await);

    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(format!("{}\n\n", events[0]), expected[0]);
    assert_eq!(format!("{}\n\n", events[1]), expected[1]);
    let last: Value =
        serde_json::from_str(events[2].strip_prefix("data: ").expect("a data event")).expect("the last event is JSON");
    assert_eq!(last["error"]["code"], "stream_broken", "{last}");
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("upstream stream broke")), "{last}");
    assert!(!events.iter().any(|e| e == "data: [DONE]"));
    assert_no_secret("a stream's error event", &events.join("\n"));
}

// ---- 504: the deadline --------------------------------------------------

#[tokio::test]
async fn upstream_that_never_answers_is_504_at_the_global_deadline() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| {
        s.global_timeout = Duration::from_millis(300);
    })
    .await;
    let client = TestClient::http1();

    for stream in [false, true] {
        mock.push(Script::Hang);
        let reply = post_chat(&client, &proxy, &chat_body("openai/gpt-4o-mini", stream)).await;
        assert_openai_error(
            &reply,
            504,
            "deadline_exceeded",
            "did not get an answer within the proxy's deadline of 0.3 s",
        );
    }
    assert_eq!(mock.requests().len(), 2, "both reached the upstream, which hung");

    let keys = client.fetch(get(&proxy.url("/v1/keys"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(keys.json()["data"][0]["in_flight"], 0, "a timed-out request no longer holds its key");
}

// ---- upstream client errors pass through ---------------------------------

#[tokio::test]
async fn upstream_client_error_passes_through_byte_for_byte() {
    let (mock, proxy, client) = setup().await;
    let not_found = r#"{"error":{"message":"The model `gpt-5-nope` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    let unprocessable = "{\"error\": {\"message\": \"Input should be a valid list\", \"type\": \"invalid_request_error\", \"param\": \"messages\", \"code\": null}}\n";
    let cases = [
        (400, INVALID_REQUEST, false),
        (404, not_found, false),
        (422, unprocessable, false),
        (400, INVALID_REQUEST, true),
    ];
    for (status, body, stream) in cases {
        mock.push(Script::respond(status, body));
        let reply = post_chat(&client, &proxy, &chat_body("openai/gpt-4o-mini", stream)).await;
        assert_eq!(reply.status.as_u16(), status, "stream: {stream}");
        assert_eq!(reply.text(), body, "byte for byte (stream: {stream})");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    assert_eq!(mock.requests().len(), cases.len(), "a client error is not retried");
}

#[tokio::test]
async fn body_far_over_the_limit_still_gets_its_413() {
    let (mock, proxy, client) = setup_with_limit().await;
    // Megabytes the proxy will not read: the 413 must still arrive rather
    // than a reset connection.
    let big = body_of_len(4 << 20);
    let reply = post_chat(&client, &proxy, &big).await;
    assert_openai_error(&reply, 413, "request_too_large", "limit of 256 bytes");

    let parts: Vec<Bytes> = Bytes::from(big).chunks(64 << 10).map(Bytes::copy_from_slice).collect();
    let reply = TestClient::http1().fetch(chunked(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), parts)).await;
    assert_openai_error(&reply, 413, "request_too_large", "limit of 256 bytes");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn non_streaming_body_stalling_after_its_headers_is_cut_at_the_deadline() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| {
        s.global_timeout = Duration::from_millis(300);
    })
    .await;
    let client = TestClient::http1();
    mock.push(Script::Stall { prefix: Bytes::from_static(br#"{"id":"chatcmpl-1","object":"chat.completion","#) });

    let res =
        client.send(post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await;
    let status = res.status().as_u16();
    let body =
        within("the proxy to end a body stalled past its deadline", http_body_util::BodyExt::collect(res.into_body()))
            .await;
    // Either the proxy buffered and answered 504, or the 200 went out and
    // the body is cut with an error; a body that "completes" is truncated.
    match (status, body) {
        (504, Ok(body)) => {
            let body: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
            assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
        }
        (200, Err(_)) => {}
        (status, body) => panic!("status {status}, body {body:?}"),
    }
}
