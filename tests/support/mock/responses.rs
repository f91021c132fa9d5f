//! OpenAI's Responses API on the mock (`/v1/responses`), with OpenAI's own
//! rule that a response belongs to the organisation whose key made it: the
//! id of every response carries a tag of the key that made it, and a
//! follow-up (`previous_response_id`), a read, a delete or a cancel with
//! any other key gets OpenAI's 404, as the real API answers.
//!
//! - `POST /v1/responses`: a `response` object (`output_text` `Hello from
//!   the Responses API.`, usage 11 in / 7 out; with `include:
//!   ["reasoning.encrypted_content"]` a reasoning item first, whose
//!   encrypted content only the same key can send back: another key gets
//!   OpenAI's 400 `invalid_encrypted_content`), or with `"stream": true`
//!   the Responses event sequence ending in `response.completed`;
//! - `GET /v1/responses/{id}`: the response; `DELETE`: `response.deleted`;
//!   `POST /v1/responses/{id}/cancel`: the response, `cancelled`;
//!   `GET /v1/responses/{id}/input_items`: an empty list;
//! - `POST /v1/responses/input_tokens`: `{"input_tokens": 42}`.

use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;
use serde_json::{Value, json};

use super::{Recorded, dialect::Canned};

/// The default answer's text.
pub const TEXT: &str = "Hello from the Responses API.";

static NEXT: AtomicU64 = AtomicU64::new(1);

/// The tag of the key that made a response, as its id carries it.
pub fn key_tag(key: &str) -> String {
    format!("{:08x}", key.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))))
}

/// Whether `id` was made with `key`.
pub fn made_with(id: &str, key: &str) -> bool {
    id.strip_prefix("resp_").is_some_and(|rest| rest.starts_with(&key_tag(key)))
}

fn not_found(id: &str, param: Option<&str>) -> Canned {
    let message = match param {
        Some(_) => format!("Previous response with id '{id}' not found."),
        None => format!("Response with id '{id}' not found."),
    };
    let code = if param.is_some() { "previous_response_not_found" } else { "not_found" };
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    Canned::Json { status: 404, body: body.to_string() }
}

/// The encrypted reasoning the mock hands out with a response made with
/// `key` (when asked for it with `include`), and whether a client's copy
/// was made with `key`: only that organisation can read it.
pub fn encrypted_reasoning(key: &str, n: u64) -> String {
    format!("gAAAAA{}{n:016x}+/=", key_tag(key))
}

fn readable_with(encrypted: &str, key: &str) -> bool {
    encrypted.strip_prefix("gAAAAA").is_some_and(|rest| rest.starts_with(&key_tag(key)))
}

/// The `response` object the mock answers with.
pub fn response(id: &str, model: &str, status: &str) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1_741_476_542, "status": status, "model": model,
        "output": [{
            "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
        }],
        "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18},
    })
}

/// The event sequence of a streamed response.
pub fn stream(id: &str, model: &str) -> Vec<String> {
    let mut created = response(id, model, "in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let item = json!({"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []});
    let events = [
        json!({"type": "response.created", "response": created}),
        json!({"type": "response.in_progress", "response": created}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "delta": "Hello from "}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "delta": "the Responses API."}),
        json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "text": TEXT}),
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": response(id, model, "completed")["output"][0]}),
        json!({"type": "response.completed", "response": response(id, model, "completed")}),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut event)| {
            event["sequence_number"] = json!(n);
            format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap())
        })
        .collect()
}

/// Answers a Responses API request, or `None` for another path.
pub(super) fn route(req: &Recorded) -> Option<Canned> {
    let rest = req.path.strip_prefix("/v1/responses")?;
    let key = req.key.clone().unwrap_or_default();
    if rest == "/input_tokens" {
        return Some(Canned::ok(json!({"object": "response.input_tokens", "input_tokens": 42}).to_string()));
    }
    if rest.is_empty() && req.method == Method::POST {
        let body = req.json();
        if let Some(previous) = body.get("previous_response_id").and_then(Value::as_str)
            && !made_with(previous, &key)
        {
            return Some(not_found(previous, Some("previous_response_id")));
        }
        let items = body.get("input").and_then(Value::as_array).cloned().unwrap_or_default();
        let unreadable =
            items.iter().filter_map(|item| item.get("encrypted_content")?.as_str()).find(|e| !readable_with(e, &key));
        if unreadable.is_some() {
            let body = json!({"error": {"message": "The encrypted content could not be decrypted or parsed.",
                "type": "invalid_request_error", "param": null, "code": "invalid_encrypted_content"}});
            return Some(Canned::Json { status: 400, body: body.to_string() });
        }
        let model = body.get("model").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("resp_{}{n:016x}", key_tag(&key));
        let wants_reasoning =
            body["include"].as_array().is_some_and(|i| i.iter().any(|v| v == "reasoning.encrypted_content"));
        let mut whole = response(&id, &model, "completed");
        if wants_reasoning {
            let reasoning = json!({"type": "reasoning", "id": format!("rs_{n:x}"), "summary": [],
                                   "encrypted_content": encrypted_reasoning(&key, n)});
            whole["output"].as_array_mut().unwrap().insert(0, reasoning);
        }
        return Some(match req.wants_stream() {
            true => {
                let mut events = stream(&id, &model);
                // The completed response carries the reasoning too.
                let last = events.pop().unwrap();
                let (head, data) = last.split_once("data: ").unwrap();
                let mut completed: Value = serde_json::from_str(data.trim()).unwrap();
                completed["response"] = whole;
                events.push(format!("{head}data: {completed}\n\n"));
                Canned::Events(events)
            }
            false => Canned::ok(whole.to_string()),
        });
    }
    let rest = rest.strip_prefix('/')?;
    let (id, action) = rest.split_once('/').map_or((rest, None), |(id, action)| (id, Some(action)));
    if !made_with(id, &key) {
        return Some(not_found(id, None));
    }
    Some(match (&req.method, action) {
        (&Method::GET, None) => Canned::ok(response(id, "gpt-5", "completed").to_string()),
        (&Method::DELETE, None) => {
            Canned::ok(json!({"id": id, "object": "response.deleted", "deleted": true}).to_string())
        }
        (&Method::POST, Some("cancel")) => Canned::ok(response(id, "gpt-5", "cancelled").to_string()),
        (&Method::GET, Some("input_items")) => Canned::ok(json!({"object": "list", "data": []}).to_string()),
        _ => not_found(id, None),
    })
}
