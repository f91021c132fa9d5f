//! Forwarding through keyrelay to an OpenAI-speaking upstream: chat whole
//! and streamed, embeddings, the model rewrite, which credentials reach the
//! upstream, how requests spread over a provider's keys, and h2c.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderValue, Version, header};
use serde_json::Value;
use support::{
    Auth, CLIENT_OWN_KEY, Gate, KEY_ONE, KEY_THREE, KEY_TWO, LOCAL_KEY, MockUpstream, PROXY_KEY, Proxy, Reply, Script,
    SseReader, TestClient, chat_body, chat_completion, get, openai_env, post, stream_events,
};

const CHAT: &str = "/v1/chat/completions";

fn chat(proxy: &Proxy, body: impl Into<bytes::Bytes>) -> http::Request<support::client::ReqBody> {
    post(&proxy.url(CHAT), Auth::Bearer(PROXY_KEY), body)
}

/// `/v1/keys` as a map from key id to its status object.
async fn key_statuses(client: &TestClient, proxy: &Proxy) -> BTreeMap<String, Value> {
    let reply = client.fetch(get(&proxy.url("/v1/keys"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"]
        .as_array()
        .expect("a key list")
        .iter()
        .map(|k| (k["id"].as_str().expect("an id").to_owned(), k.clone()))
        .collect()
}

#[tokio::test]
async fn chat_completion_is_forwarded_and_answered_untouched() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let mut req = chat(&proxy, chat_body("openai/gpt-4o-mini", false));
    req.headers_mut().insert("x-request-id", HeaderValue::from_static("test-request-42"));
    let reply = client.fetch(req).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.text(), chat_completion("gpt-4o-mini"), "the upstream's answer reaches the client byte for byte");
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(reply.header("x-request-id"), Some("test-request-42"));

    let seen = mock.requests();
    assert_eq!(seen.len(), 1, "one upstream call");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].bearer(), Some(KEY_ONE));
}

#[tokio::test]
async fn stream_first_chunk_arrives_before_upstream_finishes() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.push(Script::gated_stream(&gate));
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", true))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream; charset=utf-8");
    let mut sse = SseReader::new(res.into_body());
    let expected = stream_events("gpt-4o-mini");

    let first = sse.next_event().await.expect("a first event");
    assert_eq!(format!("{first}\n\n"), expected[0]);
    assert_eq!(
        mock.streams_finished(),
        0,
        "the first chunk reached the client while the upstream still holds the rest"
    );

    gate.open();
    let rest: Vec<String> = sse.rest().await.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(rest, expected[1..], "the rest follows verbatim, in order");
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]\n\n"));
    assert_eq!(mock.streams_finished(), 1);
}

#[tokio::test]
async fn stream_relays_every_event_verbatim_and_in_order() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", true))).await;
    assert_eq!(res.status(), 200);
    let events: Vec<String> = SseReader::new(res.into_body()).rest().await.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(events, stream_events("gpt-4o-mini"));
    for event in &events[..events.len() - 1] {
        let chunk: Value =
            serde_json::from_str(event.trim().strip_prefix("data: ").unwrap()).expect("each event is a JSON chunk");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
    }
    let upstream = &mock.requests()[0];
    assert_eq!(upstream.json()["stream"], true, "the upstream is asked to stream");
    assert_eq!(upstream.bearer(), Some(KEY_ONE));
}

#[tokio::test]
async fn embeddings_are_forwarded_with_the_model_rewritten() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let body =
        r#"{"model":"openai/text-embedding-3-small","input":"The food was delicious","encoding_format":"float"}"#;
    let reply = client.fetch(post(&proxy.url("/v1/embeddings"), Auth::Bearer(PROXY_KEY), body)).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["object"], "list");
    assert_eq!(json["data"][0]["object"], "embedding");
    assert!(json["data"][0]["embedding"].is_array());
    assert_eq!(json["model"], "text-embedding-3-small");

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(seen[0].bearer(), Some(KEY_ONE));
    assert_eq!(
        seen[0].body_str(),
        r#"{"model":"text-embedding-3-small","input":"The food was delicious","encoding_format":"float"}"#
    );
}

#[tokio::test]
async fn model_rewrite_changes_only_the_model_token() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    // Odd spacing, a look-alike string in the content, unknown fields,
    // numbers and escapes: all must reach the upstream exactly as sent.
    let sent = r#"{ "messages" : [ {"role":"user","content":"route me to openai/gpt-4o-mini, caf\u00e9"} ],
  "model":   "openai/gpt-4o-mini" , "temperature":0.50,"x_vendor":{"nested":[1,2.0,null,"a\"b"]}}"#;
    let expected = r#"{ "messages" : [ {"role":"user","content":"route me to openai/gpt-4o-mini, caf\u00e9"} ],
  "model":   "gpt-4o-mini" , "temperature":0.50,"x_vendor":{"nested":[1,2.0,null,"a\"b"]}}"#;
    let reply = client.fetch(chat(&proxy, sent)).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["model"], "gpt-4o-mini");
    assert_eq!(mock.requests()[0].body_str(), expected);
}

#[tokio::test]
async fn custom_provider_gets_its_base_path_its_key_and_the_model_after_the_first_slash() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 1);
    env.push(("LOCAL_API_BASE".to_owned(), format!("http://{}/custom/v1", mock.addr())));
    env.push(("LOCAL_API_KEY".to_owned(), LOCAL_KEY.to_owned()));
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    let reply = client
        .fetch(chat(&proxy, r#"{"model":"local/meta-llama/llama-3-70b","messages":[{"role":"user","content":"hi"}]}"#))
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["model"], "meta-llama/llama-3-70b");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/custom/v1/chat/completions");
    assert_eq!(seen[0].bearer(), Some(LOCAL_KEY), "the custom provider's own key");
    assert_eq!(seen[0].body_str(), r#"{"model":"meta-llama/llama-3-70b","messages":[{"role":"user","content":"hi"}]}"#);
}

#[tokio::test]
async fn upstream_gets_the_pool_key_never_the_clients_credentials() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();
    let body = chat_body("openai/gpt-4o-mini", false);

    let by_bearer = chat(&proxy, body.clone());
    let by_x_api_key = post(&proxy.url(CHAT), Auth::XApiKey(PROXY_KEY), body.clone());
    // A client that also sends its own OpenAI key: the proxy key in
    // x-api-key admits it, and neither credential may travel on.
    let mut with_own_key = post(&proxy.url(CHAT), Auth::XApiKey(PROXY_KEY), body);
    with_own_key
        .headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {CLIENT_OWN_KEY}")).unwrap());

    for req in [by_bearer, by_x_api_key, with_own_key] {
        let reply = client.fetch(req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    for upstream in &seen {
        assert_eq!(upstream.bearer(), Some(KEY_ONE));
        assert_eq!(upstream.headers.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert!(upstream.headers.get("x-api-key").is_none());
        let headers = upstream.all_header_values();
        assert!(!headers.contains(PROXY_KEY), "proxy key forwarded:\n{headers}");
        assert!(!headers.contains(CLIENT_OWN_KEY), "client key forwarded:\n{headers}");
    }
}

#[tokio::test]
async fn least_used_spreads_sequential_requests_evenly_over_keys() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 3)).await;
    let client = TestClient::http1();

    for _ in 0..9 {
        let reply = client.fetch(chat(&proxy, chat_body("openai/gpt-4o-mini", false))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for key in mock.keys_seen() {
        *per_key.entry(key).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        [KEY_ONE, KEY_TWO, KEY_THREE].iter().map(|k| ((*k).to_owned(), 3)).collect();
    assert_eq!(per_key, expected, "each key used equally");

    let statuses = key_statuses(&client, &proxy).await;
    assert_eq!(statuses.len(), 3);
    for status in statuses.values() {
        assert_eq!(status["requests"], 3, "{status}");
        assert_eq!(status["in_flight"], 0, "{status}");
    }
}

#[tokio::test]
async fn held_streams_spread_over_distinct_keys() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    for _ in 0..3 {
        mock.push(Script::gated_stream(&gate));
    }
    let proxy = Proxy::start(openai_env(&mock, 3)).await;
    let client = TestClient::http1();

    // Each stream is open (its first chunk read) before the next starts, so
    // every choice sees the keys already streaming.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", true))).await;
        assert_eq!(res.status(), 200);
        let mut sse = SseReader::new(res.into_body());
        sse.next_event().await.expect("a first event");
        streams.push(sse);
    }

    let keys: BTreeSet<String> = mock.keys_seen().into_iter().collect();
    let all: BTreeSet<String> = [KEY_ONE, KEY_TWO, KEY_THREE].iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(keys, all, "three concurrent streams, three different keys");
    for status in key_statuses(&client, &proxy).await.values() {
        assert_eq!(status["in_flight"], 1, "a stream holds its key: {status}");
    }

    gate.open();
    for sse in &mut streams {
        let rest = sse.rest().await;
        assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    }
    for status in key_statuses(&client, &proxy).await.values() {
        assert_eq!(status["in_flight"], 0, "released at the stream's end: {status}");
    }
}

#[tokio::test]
async fn round_robin_takes_each_key_in_turn() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 3);
    env.push(("KEYRELAY_PROVIDERS__OPENAI__SELECTION".to_owned(), "round_robin".to_owned()));
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();

    for _ in 0..6 {
        let reply = client.fetch(chat(&proxy, chat_body("openai/gpt-4o-mini", false))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    assert_eq!(mock.keys_seen(), [KEY_ONE, KEY_TWO, KEY_THREE, KEY_ONE, KEY_TWO, KEY_THREE]);
}

#[tokio::test]
async fn h2c_prior_knowledge_requests_are_served() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::h2c();

    let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", false))).await;
    assert_eq!(res.version(), Version::HTTP_2);
    let reply = Reply::read(res).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), chat_completion("gpt-4o-mini"));

    let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", true))).await;
    assert_eq!((res.version(), res.status().as_u16()), (Version::HTTP_2, 200));
    let events: Vec<String> = SseReader::new(res.into_body()).rest().await.iter().map(|e| format!("{e}\n\n")).collect();
    assert_eq!(events, stream_events("gpt-4o-mini"));

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.bearer() == Some(KEY_ONE)));
}

#[tokio::test]
async fn client_leaving_mid_stream_releases_its_key() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.push(Script::gated_stream(&gate));
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let res = client.send(chat(&proxy, chat_body("openai/gpt-4o-mini", true))).await;
    let mut sse = SseReader::new(res.into_body());
    sse.next_event().await.expect("a first event");
    let statuses = key_statuses(&client, &proxy).await;
    assert_eq!(statuses.values().next().unwrap()["in_flight"], 1);

    // The client goes away with the upstream still holding the stream.
    drop(sse);
    support::within("the key to be released", async {
        loop {
            let statuses = key_statuses(&client, &proxy).await;
            if statuses.values().next().unwrap()["in_flight"] == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.open();
}

#[tokio::test]
async fn many_concurrent_requests_all_succeed_over_every_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 3)).await;
    let client = TestClient::http1();

    let requests = (0..30).map(|i| {
        let client = client.clone();
        let req = chat(&proxy, chat_body("openai/gpt-4o-mini", i % 2 == 0));
        tokio::spawn(async move { Reply::read(client.send(req).await).await })
    });
    for reply in futures_util::future::join_all(requests).await {
        let reply = reply.expect("the request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains("gpt-4o-mini"));
    }

    let used: BTreeSet<String> = mock.keys_seen().into_iter().collect();
    assert_eq!(used.len(), 3, "every key took a share: {used:?}");
    assert_eq!(mock.requests().len(), 30);
    let statuses = key_statuses(&client, &proxy).await;
    let total: u64 = statuses.values().map(|s| s["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 30);
    assert!(statuses.values().all(|s| s["in_flight"] == 0));
}

#[tokio::test]
async fn openai_routes_work_without_the_v1_prefix() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    let reply = client
        .fetch(post(&proxy.url("/chat/completions"), Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client
        .fetch(post(
            &proxy.url("/embeddings"),
            Auth::Bearer(PROXY_KEY),
            r#"{"model":"openai/text-embedding-3-small","input":"hi"}"#,
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = client.fetch(get(&proxy.url("/models"), Auth::Bearer(PROXY_KEY))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/embeddings", "/v1/models"]);
}

#[tokio::test]
async fn stream_requests_ask_the_upstream_for_plain_text() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();

    for stream in [true, false] {
        let mut req = chat(&proxy, chat_body("openai/gpt-4o-mini", stream));
        req.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        let reply = Reply::read(client.send(req).await).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    let seen = mock.requests();
    let encoding = |i: usize| seen[i].headers.get(header::ACCEPT_ENCODING).map(|v| v.to_str().unwrap().to_owned());
    // The proxy reads streams event by event, so it needs them unencoded;
    // a whole body passes through as the client accepts it.
    assert_eq!(encoding(0).as_deref(), Some("identity"));
    assert_eq!(encoding(1).as_deref(), Some("gzip, br"));
}
