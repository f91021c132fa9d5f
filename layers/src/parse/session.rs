//! The session signal: which conversation a request belongs to, so that its
//! turns can stay on the key that holds its prompt cache (see
//! [`SessionAffinity`](crate::pool::SessionAffinity)).
//!
//! Looked for in this order, the first found wins:
//!
//! 1. keyrelay's own `x-session-id` header, for any client that wants to
//!    say it;
//! 2. the coding agents' session headers: Claude Code's
//!    `x-claude-code-session-id`, Codex CLI's `session_id` (and
//!    `conversation_id`, with the same value, from older Codex versions);
//! 3. the body: OpenAI's `prompt_cache_key` (chat completions and the
//!    Responses API; Codex sets it to its conversation id), and on the
//!    Anthropic routes `metadata.user_id`, in which Claude Code puts its
//!    session (`user_<hash>_account_<uuid>_session_<uuid>`, or a JSON string
//!    with a `session_id` in newer versions): the session id is taken from
//!    it, so that it names the same session as the header; any other
//!    `user_id` is a session as it is (one end user's conversations then
//!    share a key, which is what their cache wants too).
//!
//! A signal is only a preference: a value that is empty or not text is no
//! signal, never an error.

use std::{borrow::Cow, sync::Arc};

use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::extensions::{Endpoint, Inbound};

/// The headers that name a session, in order of precedence.
const SESSION_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("x-session-id"),
    HeaderName::from_static("x-claude-code-session-id"),
    HeaderName::from_static("session_id"),
    HeaderName::from_static("conversation_id"),
];

/// The session a request's headers name, if any.
pub(super) fn from_headers(headers: &HeaderMap) -> Option<Arc<str>> {
    SESSION_HEADERS.iter().find_map(|name| {
        let value = headers.get(name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| value.into())
    })
}

/// The session a request's body names, from the two fields Parse's probe
/// kept (unparsed, borrowed from the body).
pub(super) fn from_body(
    prompt_cache_key: Option<&RawValue>,
    metadata: Option<&RawValue>,
    endpoint: Endpoint,
) -> Option<Arc<str>> {
    if let Some(key) = prompt_cache_key.and_then(|raw| text(raw.get())) {
        return Some(key.as_ref().into());
    }
    if endpoint.inbound() != Inbound::Anthropic {
        return None;
    }
    let metadata: Metadata<'_> = serde_json::from_str(metadata?.get()).ok()?;
    let user_id = metadata.user_id?;
    let user_id = user_id.trim();
    (!user_id.is_empty()).then(|| claude_code_session(user_id).into())
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct JsonUserId<'a> {
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
}

/// A JSON string's text, when it is a non-empty string.
fn text(raw: &str) -> Option<Cow<'_, str>> {
    let text: Cow<'_, str> = serde_json::from_str(raw).ok()?;
    (!text.trim().is_empty()).then_some(text)
}

/// The session in a Claude Code `user_id`, else the whole `user_id`.
fn claude_code_session(user_id: &str) -> Cow<'_, str> {
    if user_id.starts_with('{')
        && let Ok(JsonUserId { session_id: Some(session) }) = serde_json::from_str(user_id)
        && !session.is_empty()
    {
        return session;
    }
    match user_id.rsplit_once("_session_") {
        Some((_, session)) if !session.is_empty() => Cow::Borrowed(session),
        _ => Cow::Borrowed(user_id),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| (HeaderName::from_static(name), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn headers_in_order_of_precedence() {
        let all = [
            ("conversation_id", "codex-old"),
            ("session_id", "codex"),
            ("x-claude-code-session-id", "claude"),
            ("x-session-id", "own"),
        ];
        for skip in 0..all.len() {
            let expected = all[all.len() - 1 - skip].1;
            assert_eq!(from_headers(&headers(&all[..all.len() - skip])).as_deref(), Some(expected));
        }
        assert_eq!(
            from_headers(&headers(&[("x-session-id", "  "), ("session_id", "codex")])).as_deref(),
            Some("codex")
        );
        assert_eq!(from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn prompt_cache_key_on_every_route_metadata_user_id_on_anthropics() {
        let key = raw(r#""conv-1""#);
        assert_eq!(from_body(Some(&key), None, Endpoint::ChatCompletions).as_deref(), Some("conv-1"));
        assert_eq!(from_body(Some(&key), None, Endpoint::Responses).as_deref(), Some("conv-1"));
        for not_a_signal in [r#""""#, "null", "42", r#"{"a":1}"#] {
            let raw = raw(not_a_signal);
            assert_eq!(from_body(Some(&raw), None, Endpoint::ChatCompletions), None, "{not_a_signal}");
        }
        let metadata = raw(r#"{"user_id": "end-user-7"}"#);
        assert_eq!(from_body(None, Some(&metadata), Endpoint::Messages).as_deref(), Some("end-user-7"));
        assert_eq!(from_body(None, Some(&metadata), Endpoint::ChatCompletions), None, "OpenAI's metadata is free-form");
        for not_a_signal in [r#"{"user_id": ""}"#, r#"{"user_id": 7}"#, r#""text""#, "{}"] {
            let raw = raw(not_a_signal);
            assert_eq!(from_body(None, Some(&raw), Endpoint::Messages), None, "{not_a_signal}");
        }
    }

    #[test]
    fn claude_codes_user_id_yields_its_session_in_both_forms() {
        let legacy = "user_5dd07c33da27e6d2968d94ea20bf47a7_account_a1b2_session_d2e70091-3007-41a3-a916-cb8b0d3098de";
        assert_eq!(claude_code_session(legacy), "d2e70091-3007-41a3-a916-cb8b0d3098de");
        let no_account = "user_abc_account__session_0a1b-2c3d";
        assert_eq!(claude_code_session(no_account), "0a1b-2c3d");
        let json = r#"{"device_id":"3f4a","account_uuid":"","session_id":"2c4e1cf0-7a67"}"#;
        assert_eq!(claude_code_session(json), "2c4e1cf0-7a67");
        assert_eq!(claude_code_session(r#"{"device_id":"3f4a"}"#), r#"{"device_id":"3f4a"}"#);
        assert_eq!(claude_code_session("user_abc_session_"), "user_abc_session_");
        let escaped = raw(r#"{"user_id": "user_x_account__session_\u0041b"}"#);
        assert_eq!(from_body(None, Some(&escaped), Endpoint::MessagesCountTokens).as_deref(), Some("Ab"));
    }
}
