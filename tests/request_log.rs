//! `--enable-request-logging` end to end: one directory per request under
//! `<data dir>/logs/requests/` with the request (credentials redacted), the
//! answer as the client got it, and the attempts with their keys.

mod support;

use std::{collections::BTreeMap, fs, path::Path};

use http::HeaderValue;
use serde_json::Value;
use support::{
    KEY_ONE, KEY_TWO, PROXY_KEY, SECRETS, assert_no_secret, chat_body,
    client::{Auth, TestClient, post},
    key_id,
    mock::{MockUpstream, Script},
    proxy::{Proxy, openai_env},
};

/// Every request directory: name -> (file name -> contents).
fn request_dirs(data_dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let root = data_dir.join("logs").join("requests");
    let mut dirs = BTreeMap::new();
    for dir in fs::read_dir(&root).unwrap_or_else(|err| panic!("{}: {err}", root.display())) {
        let dir = dir.unwrap();
        let mut files = BTreeMap::new();
        for file in fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap();
            files.insert(file.file_name().into_string().unwrap(), fs::read_to_string(file.path()).unwrap());
        }
        dirs.insert(dir.file_name().into_string().unwrap(), files);
    }
    dirs
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// The one directory whose name ends with `_<id>`.
fn dir_of<'a>(dirs: &'a BTreeMap<String, BTreeMap<String, String>>, id: &str) -> &'a BTreeMap<String, String> {
    let found: Vec<_> = dirs.iter().filter(|(name, _)| name.ends_with(&format!("_{id}"))).collect();
    assert_eq!(found.len(), 1, "one directory for {id}: {:?}", dirs.keys());
    let (name, files) = found[0];
    // 20261121T233700.123Z_<id>
    let stamp = name.split('_').next().unwrap();
    assert!(stamp.len() == 20 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'), "UTC stamp: {name}");
    files
}

#[tokio::test]
async fn every_request_gets_a_directory_with_request_answer_and_attempts() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 2), data.path(), |s| s.request_logging = true).await;
    let client = TestClient::http1();
    let send = |id: &'static str, body: String| {
        let mut req = post(&proxy.url("/v1/chat/completions"), Auth::Bearer(PROXY_KEY), body);
        req.headers_mut().insert("x-request-id", HeaderValue::from_static(id));
        client.fetch(req)
    };

    let plain = send("plain-1", chat_body("openai/gpt-4o-mini", false)).await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    let stream = send("stream/2", chat_body("openai/gpt-4o-mini", true)).await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    // The next upstream request, whichever key it carries, is rate limited;
    // the proxy rotates to the other key.
    mock.push(Script::rate_limited(Some("60")));
    let rotated = send("rotated-3", chat_body("openai/gpt-4o-mini", false)).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());

    // Shutdown writes whatever is still queued.
    proxy.stop().await;
    let dirs = request_dirs(data.path());
    assert_eq!(dirs.len(), 3, "{:?}", dirs.keys());
    for (name, files) in &dirs {
        for (file, text) in files {
            assert_no_secret(&format!("{name}/{file}"), text);
            for secret in SECRETS {
                assert!(!text.contains(secret), "{name}/{file} shows a secret");
            }
        }
    }

    let plain_files = dir_of(&dirs, "plain-1");
    assert_eq!(plain_files.keys().collect::<Vec<_>>(), ["metadata.json", "request.json", "response.json"]);
    let request = json(&plain_files["request.json"]);
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/v1/chat/completions");
    assert_eq!(request["body"], json(&chat_body("openai/gpt-4o-mini", false)));
    let headers = request["headers"].as_array().unwrap();
    assert!(headers.contains(&serde_json::json!(["authorization", "[redacted]"])), "{headers:?}");
    let response = json(&plain_files["response.json"]);
    assert_eq!(response["status"], 200);
    assert_eq!(response["body"], plain.json(), "the answer as the client got it");
    let meta = json(&plain_files["metadata.json"]);
    assert_eq!(meta["id"], "plain-1");
    assert_eq!((meta["provider"].as_str(), meta["status"].as_u64()), (Some("openai"), Some(200)));
    assert_eq!(meta["outcome"], "completed");
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(meta["attempts"][0]["outcome"], "success");
    let usage = &plain.json()["usage"];
    assert_eq!(meta["tokens"]["prompt"], usage["prompt_tokens"], "{meta}");
    assert_eq!(meta["tokens"]["completion"], usage["completion_tokens"]);
    assert!(meta["duration_ms"].is_u64() && meta["headers_after_ms"].is_u64());

    let stream_files = dir_of(&dirs, "stream_2");
    assert_eq!(stream_files.keys().collect::<Vec<_>>(), ["metadata.json", "request.json", "stream.sse"]);
    assert_eq!(stream_files["stream.sse"], stream.text(), "the stream as the client got it");
    assert!(stream.text().contains("data: [DONE]"));
    let meta = json(&stream_files["metadata.json"]);
    assert_eq!((meta["id"].as_str(), meta["stream"].as_bool()), (Some("stream/2"), Some(true)));

    let rotated_files = dir_of(&dirs, "rotated-3");
    assert_eq!(json(&rotated_files["response.json"])["body"], rotated.json());
    let meta = json(&rotated_files["metadata.json"]);
    let attempts = meta["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{meta}");
    assert_eq!((attempts[0]["outcome"].as_str(), attempts[0]["status"].as_u64()), (Some("rate_limit"), Some(429)));
    assert_eq!((attempts[1]["outcome"].as_str(), attempts[1]["status"].as_u64()), (Some("success"), Some(200)));
    let keys = [key_id(KEY_ONE), key_id(KEY_TWO)];
    let (first, second) = (attempts[0]["key"].as_str().unwrap(), attempts[1]["key"].as_str().unwrap());
    assert!(keys.iter().any(|k| k == first) && keys.iter().any(|k| k == second) && first != second, "{meta}");
}

#[tokio::test]
async fn off_by_default() {
    let mock = MockUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_in(openai_env(&mock, 1), data.path(), |_| {}).await;
    let reply = TestClient::http1()
        .fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await;
    assert_eq!(reply.status, 200);
    proxy.stop().await;
    assert!(!data.path().join("logs").exists());
}
