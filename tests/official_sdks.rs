//! The official SDKs against keyrelay, end to end: Anthropic's `anthropic`,
//! OpenAI's `openai` (the Responses API) and Google's `google-genai`, the
//! real packages from PyPI, each pointed at an in-process keyrelay in front
//! of mock upstreams of every dialect. A script per SDK (`tests/sdk/*.py`)
//! asks for an answer, a stream folded the SDK's own way, a tool call
//! round trip and a streamed tool call, checks usage in each (and, for OpenAI's own servers, a
//! `previous_response_id` follow-up), and prints a JSON summary; the tests
//! here check that summary and what the upstream received. Where keyrelay
//! translated, every answer must also validate strictly against the SDK's
//! own model (required fields and types), which the SDKs do not check.
//!
//! The SDKs live in a venv at `target/sdk-venv` made by `.ci/sdk-venv.sh`.
//! Without it the tests say so on stderr and pass, unless `CI` is set,
//! where a missing venv is a failure.

#[path = "sdk/fixtures.rs"]
mod fixtures;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fixtures::{CALL_ID, anthropic_answers, chat_answers, gemini_answers, responses_answers};
use serde_json::{Value, json};
use support::{
    ANTHROPIC_KEY_ONE, GEMINI_KEY_ONE, KEY_ONE, KEY_THREE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Recorded, Script,
    dialect_env,
    mock::{anthropic, gemini, responses},
};

/// Far above what a healthy script needs (a few seconds, most of it
/// importing the SDK), short enough that a hang fails the test.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// For the cells where keyrelay writes the answers: each must validate
/// against the SDK's own model (the SDKs do not validate what they read).
const STRICT: &[(&str, &str)] = &[("SDK_STRICT", "1")];

/// The OpenAI chat fixture's texts (see tests/fixtures/openai).
const CHAT_TEXT: &str = "Hello! How can I assist you today?";
const CHAT_STREAM_TEXT: &str = "Hello! How can I help?";

/// The venv's python, or `None` (after a note) when the venv is missing
/// outside CI.
fn python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the official SDKs are missing: run .ci/sdk-venv.sh (it makes {})",
        python.display()
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("skipped: no SDK venv at {} (run .ci/sdk-venv.sh)", python.display());
    }
    None
}

/// Runs `tests/sdk/{script}` against `proxy` with `model` (and `extra`
/// settings), failing on a non-zero exit or a hang; returns its summary.
async fn run_sdk(python: &Path, script: &str, base_url: String, model: &str, extra: &[(&str, &str)]) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("KEYRELAY_BASE_URL", base_url)
        .env("KEYRELAY_API_KEY", PROXY_KEY)
        .env("SDK_MODEL", model)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Nothing from the developer's shell may send the SDKs elsewhere.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(var);
    }
    for var in ["GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "OPENAI_BASE_URL"] {
        command.env_remove(var);
    }
    for (name, value) in extra {
        command.env(name, value);
    }
    let child = command.spawn().unwrap_or_else(|err| panic!("{} did not start: {err}", python.display()));
    // On a timeout the child is dropped, which kills it.
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} ({model}) hung for {SCRIPT_TIMEOUT:?}: killed"))
        .expect("the script's output");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} ({model}) failed, {}:\n{stderr}\n{stdout}", output.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{script}: a JSON summary ({err}):\n{stdout}"))
}

/// Answers every request with `key`s as `pick` says.
fn answer(mock: &MockUpstream, keys: &[&str], pick: impl Fn(&Recorded) -> Script + Clone + Send + Sync + 'static) {
    for key in keys {
        mock.faults_for(key, pick.clone());
    }
}

/// The request that carried the tool results (the fourth: after an
/// answer, a stream and a tool call; before a streamed tool call).
fn tool_results_request(mock: &MockUpstream) -> Value {
    let requests = mock.requests();
    assert!(requests.len() >= 5, "an answer, a stream, a tool call, its results, a streamed call: {requests:?}");
    requests[3].json()
}

/// Every object anywhere in `value` whose `field` is `want`, in document order.
fn objects_with(value: &Value, field: &str, want: &str) -> Vec<Value> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            if map.get(field).and_then(Value::as_str) == Some(want) {
                found.push(value.clone());
            }
            map.values().for_each(|v| found.extend(objects_with(v, field, want)));
        }
        Value::Array(items) => items.iter().for_each(|v| found.extend(objects_with(v, field, want))),
        _ => {}
    }
    found
}

/// A chat-only OpenAI-compatible provider (`groq`) at `mock`, one key.
fn groq_env(mock: &MockUpstream) -> Vec<(String, String)> {
    vec![
        ("PROXY_API_KEY".to_owned(), PROXY_KEY.to_owned()),
        ("GROQ_API_BASE".to_owned(), mock.base()),
        ("GROQ_API_KEY_1".to_owned(), KEY_ONE.to_owned()),
    ]
}

/// The summary's `(text, input tokens, output tokens)` of `step`.
fn step(summary: &Value, step: &str) -> (String, u64, u64) {
    let s = &summary[step];
    let text = s["text"].as_str().unwrap_or_else(|| panic!("{step}.text: {summary}")).to_owned();
    (text, s["usage"]["input"].as_u64().unwrap(), s["usage"]["output"].as_u64().unwrap())
}

/// The summary's tool calls as `(id, name, input)`.
fn calls(summary: &Value) -> Vec<(String, String, Value)> {
    summary["tools"]["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("tools.calls: {summary}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
                c["input"].clone(),
            )
        })
        .collect()
}

fn weather() -> Value {
    json!({"city": "Paris", "unit": "celsius"})
}

/// The streamed tool call: one `get_weather` call (with this id, when the
/// provider gives one), its arguments whole, and the stream's usage.
#[track_caller]
fn assert_streamed_call(summary: &Value, id: Option<&str>, usage: (u64, u64)) {
    let streamed = &summary["stream_tools"];
    let calls = streamed["calls"].as_array().unwrap_or_else(|| panic!("stream_tools.calls: {summary}"));
    assert_eq!(calls.len(), 1, "{summary}");
    assert_eq!((&calls[0]["name"], &calls[0]["input"]), (&json!("get_weather"), &weather()), "{summary}");
    if let Some(id) = id {
        assert_eq!(calls[0]["id"], id, "{summary}");
    }
    assert_eq!(streamed["usage"], json!({"input": usage.0, "output": usage.1}), "{summary}");
}

// ---- the Anthropic SDK ------------------------------------------------------------------

#[tokio::test]
async fn anthropic_sdk_to_anthropic_passes_through() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::anthropic().await;
    answer(&mock, &[ANTHROPIC_KEY_ONE], anthropic_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    let summary = run_sdk(&python, "anthropic_sdk.py", proxy.url(""), "claude-haiku-4-5", &[]).await;

    assert_eq!(step(&summary, "answer"), (anthropic::TEXT.to_owned(), 21, 7), "{summary}");
    assert_eq!(step(&summary, "stream"), (anthropic::TEXT.to_owned(), 25, 6), "{summary}");
    let ids: Vec<String> = calls(&summary).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, ["toolu_01Weather", "toolu_02Time"], "{summary}");
    assert_eq!(summary["tools"]["usage"], json!({"input": 310, "output": 54}), "Anthropic's own count");
    assert_streamed_call(&summary, Some("toolu_01Weather"), (40, 30));
    assert_eq!(summary["tools"]["answer"], anthropic::TEXT);

    let sent = tool_results_request(&mock);
    assert!(mock.requests().iter().all(|r| r.path == "/v1/messages"), "Anthropic's own route");
    let results = objects_with(&sent, "type", "tool_result");
    let result_ids: Vec<&Value> = results.iter().map(|r| &r["tool_use_id"]).collect();
    assert_eq!(result_ids, [&json!("toolu_01Weather"), &json!("toolu_02Time")], "{sent}");
    assert_eq!(sent["model"], "claude-haiku-4-5", "passed through, model and all");
}

#[tokio::test]
async fn anthropic_sdk_to_an_openai_compatible_provider() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::start().await;
    answer(&mock, &[KEY_ONE], chat_answers);
    let proxy = Proxy::start(groq_env(&mock)).await;
    let summary = run_sdk(&python, "anthropic_sdk.py", proxy.url(""), "groq/llama-3.3-70b", STRICT).await;

    assert_eq!(step(&summary, "answer"), (CHAT_TEXT.to_owned(), 19, 10), "{summary}");
    assert_eq!(summary["answer"]["stop_reason"], "end_turn");
    assert_eq!(step(&summary, "stream"), (CHAT_STREAM_TEXT.to_owned(), 19, 6), "{summary}");
    assert_eq!(calls(&summary), [(CALL_ID.to_owned(), "get_weather".to_owned(), weather())]);
    assert_eq!(summary["tools"]["usage"], json!({"input": 80, "output": 20}));
    assert_streamed_call(&summary, Some(CALL_ID), (80, 20));

    let sent = tool_results_request(&mock);
    assert!(mock.requests().iter().all(|r| r.path == "/v1/chat/completions"), "translated to chat");
    assert_eq!(sent["model"], "llama-3.3-70b");
    let tool_turns = objects_with(&sent, "role", "tool");
    assert_eq!(tool_turns.len(), 1, "{sent}");
    assert_eq!(tool_turns[0]["tool_call_id"], "call_weather_1", "the result names its call: {sent}");
    assert_eq!(objects_with(&sent, "id", "call_weather_1").len(), 1, "the call goes back with its id: {sent}");
}

#[tokio::test]
async fn anthropic_sdk_to_gemini() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::gemini().await;
    answer(&mock, &[GEMINI_KEY_ONE], gemini_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    // Gemini 3: a replayed function call must carry a thought signature.
    let summary = run_sdk(&python, "anthropic_sdk.py", proxy.url(""), "gemini/gemini-3-pro-preview", STRICT).await;

    assert_eq!(step(&summary, "answer"), (gemini::TEXT.to_owned(), 11, 5), "{summary}");
    assert_eq!(step(&summary, "stream"), (gemini::TEXT.to_owned(), 9, 4), "{summary}");
    let calls = calls(&summary);
    let names: Vec<&str> = calls.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, ["get_weather", "get_time"], "{summary}");
    assert_eq!(calls[0].2, weather());
    assert_eq!(summary["tools"]["usage"], json!({"input": 120, "output": 40}));
    assert_streamed_call(&summary, None, (50, 12));

    let sent = tool_results_request(&mock);
    let calls: Vec<&Value> = sent["contents"][1]["parts"].as_array().unwrap().iter().skip(1).collect();
    assert_eq!(calls.len(), 2, "both calls go back: {sent}");
    assert_eq!(calls[0]["functionCall"], json!({"name": "get_weather", "args": weather()}), "{sent}");
    // Anthropic's tool_use block has no room for Gemini's signature: the
    // documented stand-in replaces it (see the gemini dialect's docs).
    assert!(calls[0]["thoughtSignature"].is_string(), "the first call is signed: {sent}");
    let results = objects_with(&sent, "role", "user").pop().unwrap();
    let names: Vec<&Value> =
        results["parts"].as_array().unwrap().iter().map(|p| &p["functionResponse"]["name"]).collect();
    assert_eq!(names, [&json!("get_weather"), &json!("get_time")], "one response per call, in order: {sent}");
}

// ---- the OpenAI SDK (Responses API) -----------------------------------------------------

#[tokio::test]
async fn openai_sdk_to_openai_passes_through_and_follow_ups_keep_their_key() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::start().await;
    answer(&mock, &[KEY_ONE, KEY_TWO, KEY_THREE], responses_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 3)).await;
    let summary = run_sdk(&python, "openai_sdk.py", proxy.url("/v1"), "gpt-5", &[("SDK_FOLLOW_UP", "1")]).await;

    assert_eq!(step(&summary, "answer"), (responses::TEXT.to_owned(), 11, 7), "{summary}");
    assert_eq!(step(&summary, "stream"), (responses::TEXT.to_owned(), 11, 7), "{summary}");
    assert_eq!(calls(&summary), [(CALL_ID.to_owned(), "get_weather".to_owned(), weather())]);
    assert_eq!(summary["tools"]["usage"], json!({"input": 60, "output": 15}));
    assert_streamed_call(&summary, Some(CALL_ID), (60, 15));
    assert_eq!(summary["follow_up"]["text"], responses::TEXT);

    let requests = mock.requests();
    assert_eq!(requests.len(), 6, "answer, stream, tool call, results, streamed call, follow-up");
    assert!(requests.iter().all(|r| r.path == "/v1/responses"), "OpenAI's own route");
    let results = objects_with(&requests[3].json(), "type", "function_call_output");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["call_id"], "call_weather_1");
    let (first, follow_up) = (&requests[0], &requests[5]);
    assert_eq!(follow_up.json()["previous_response_id"], summary["answer"]["id"]);
    assert_eq!(follow_up.key, first.key, "the follow-up went to the key that made the response");
    let keys: std::collections::BTreeSet<_> = requests.iter().map(|r| r.key.clone()).collect();
    assert!(keys.len() > 1, "the pool rotated otherwise, so the binding is what kept the key: {keys:?}");
    assert!(requests.iter().all(|r| r.answer != "refused"));
}

#[tokio::test]
async fn openai_sdk_to_a_chat_only_provider() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::start().await;
    answer(&mock, &[KEY_ONE], chat_answers);
    let proxy = Proxy::start(groq_env(&mock)).await;
    let summary = run_sdk(&python, "openai_sdk.py", proxy.url("/v1"), "groq/llama-3.3-70b", STRICT).await;

    assert_eq!(step(&summary, "answer"), (CHAT_TEXT.to_owned(), 19, 10), "{summary}");
    assert_eq!(step(&summary, "stream"), (CHAT_STREAM_TEXT.to_owned(), 19, 6), "{summary}");
    assert_eq!(calls(&summary), [(CALL_ID.to_owned(), "get_weather".to_owned(), weather())]);
    assert_eq!(summary["tools"]["usage"], json!({"input": 80, "output": 20}));
    assert_streamed_call(&summary, Some(CALL_ID), (80, 20));

    let sent = tool_results_request(&mock);
    assert!(mock.requests().iter().all(|r| r.path == "/v1/chat/completions"), "translated to chat");
    let tool_turns = objects_with(&sent, "role", "tool");
    assert_eq!(tool_turns.len(), 1, "{sent}");
    assert_eq!(tool_turns[0]["tool_call_id"], "call_weather_1", "{sent}");
    assert_eq!(objects_with(&sent, "id", "call_weather_1").len(), 1, "the call goes back with its id: {sent}");
}

#[tokio::test]
async fn openai_sdk_to_anthropic() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::anthropic().await;
    answer(&mock, &[ANTHROPIC_KEY_ONE], anthropic_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    let summary = run_sdk(&python, "openai_sdk.py", proxy.url("/v1"), "anthropic/claude-sonnet-4-5", STRICT).await;

    assert_eq!(step(&summary, "answer"), (anthropic::TEXT.to_owned(), 21, 7), "{summary}");
    assert_eq!(step(&summary, "stream"), (anthropic::TEXT.to_owned(), 25, 6), "{summary}");
    let ids: Vec<String> = calls(&summary).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, ["toolu_01Weather", "toolu_02Time"], "{summary}");
    assert_eq!(summary["tools"]["usage"], json!({"input": 410, "output": 54}), "input plus cache reads");
    assert_streamed_call(&summary, Some("toolu_01Weather"), (40, 30));

    let sent = tool_results_request(&mock);
    let result_ids: Vec<Value> =
        objects_with(&sent, "type", "tool_result").iter().map(|r| r["tool_use_id"].clone()).collect();
    assert_eq!(result_ids, [json!("toolu_01Weather"), json!("toolu_02Time")], "{sent}");
    assert_eq!(objects_with(&sent, "type", "tool_use").len(), 2, "the calls go back too: {sent}");
}

// ---- the Google GenAI SDK ----------------------------------------------------------------

#[tokio::test]
async fn genai_sdk_to_gemini_passes_through() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::gemini().await;
    answer(&mock, &[GEMINI_KEY_ONE], gemini_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    let summary = run_sdk(&python, "genai_sdk.py", proxy.url(""), "gemini-2.5-flash", &[]).await;

    assert_eq!(step(&summary, "answer"), (gemini::TEXT.to_owned(), 11, 5), "{summary}");
    assert_eq!(step(&summary, "stream"), (gemini::TEXT.to_owned(), 9, 4), "{summary}");
    let names: Vec<String> = calls(&summary).into_iter().map(|(_, name, _)| name).collect();
    assert_eq!(names, ["get_weather", "get_time"], "{summary}");
    assert_eq!(summary["tools"]["usage"], json!({"input": 120, "output": 40}));
    assert_streamed_call(&summary, None, (50, 12));

    let requests = mock.requests();
    assert_eq!(requests[1].path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    assert_eq!(requests[1].query.as_deref(), Some("alt=sse"));
    let sent = tool_results_request(&mock);
    let parts = &sent["contents"];
    assert_eq!(parts[1]["parts"][1]["functionCall"]["name"], "get_weather", "the call goes back: {sent}");
    assert_eq!(parts[2]["parts"][0]["functionResponse"]["name"], "get_weather", "with its response: {sent}");
    assert_eq!(objects_with(&sent, "thoughtSignature", "c2lnbmF0dXJl").len(), 1, "signature kept: {sent}");
}

#[tokio::test]
async fn genai_sdk_to_openai() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::start().await;
    answer(&mock, &[KEY_ONE], chat_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    let summary = run_sdk(&python, "genai_sdk.py", proxy.url(""), "openai/gpt-4o-mini", STRICT).await;

    assert_eq!(step(&summary, "answer"), (CHAT_TEXT.to_owned(), 19, 10), "{summary}");
    assert_eq!(summary["answer"]["finish_reason"], "STOP");
    assert_eq!(step(&summary, "stream"), (CHAT_STREAM_TEXT.to_owned(), 19, 6), "{summary}");
    let calls = calls(&summary);
    assert_eq!((calls.len(), calls[0].1.as_str(), &calls[0].2), (1, "get_weather", &weather()), "{summary}");
    assert_eq!(summary["tools"]["usage"], json!({"input": 80, "output": 20}));
    assert_streamed_call(&summary, Some(CALL_ID), (80, 20));

    let sent = tool_results_request(&mock);
    assert!(mock.requests().iter().all(|r| r.path == "/v1/chat/completions"), "translated to chat");
    let tool_turns = objects_with(&sent, "role", "tool");
    assert_eq!(tool_turns.len(), 1, "{sent}");
    let call_id = objects_with(&sent, "type", "function")
        .iter()
        .find_map(|c| c["id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("the call goes back with an id: {sent}"));
    assert_eq!(tool_turns[0]["tool_call_id"], call_id.as_str(), "the result names its call: {sent}");
}

#[tokio::test]
async fn genai_sdk_to_anthropic() {
    let Some(python) = python() else { return };
    let mock = MockUpstream::anthropic().await;
    answer(&mock, &[ANTHROPIC_KEY_ONE], anthropic_answers);
    let proxy = Proxy::start(dialect_env(&[&mock], 1)).await;
    let summary = run_sdk(&python, "genai_sdk.py", proxy.url(""), "anthropic/claude-sonnet-4-5", STRICT).await;

    assert_eq!(step(&summary, "answer"), (anthropic::TEXT.to_owned(), 21, 7), "{summary}");
    assert_eq!(step(&summary, "stream"), (anthropic::TEXT.to_owned(), 25, 6), "{summary}");
    let names: Vec<String> = calls(&summary).into_iter().map(|(_, name, _)| name).collect();
    assert_eq!(names, ["get_weather", "get_time"], "{summary}");
    assert_eq!(summary["tools"]["usage"], json!({"input": 410, "output": 54}), "input plus cache reads");
    assert_streamed_call(&summary, Some("toolu_01Weather"), (40, 30));

    let sent = tool_results_request(&mock);
    let use_ids: Vec<Value> = objects_with(&sent, "type", "tool_use").iter().map(|u| u["id"].clone()).collect();
    let result_ids: Vec<Value> =
        objects_with(&sent, "type", "tool_result").iter().map(|r| r["tool_use_id"].clone()).collect();
    assert_eq!(use_ids.len(), 2, "{sent}");
    assert_eq!(result_ids, use_ids, "each result names its call: {sent}");
}
