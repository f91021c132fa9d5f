//! The request headers that carry credentials, named once for everyone who
//! must treat them specially: Auth reads and strips them, the upstream
//! service never forwards them, the request log redacts them, and the binary
//! marks them sensitive before anything could log a header.
//!
//! ```
//! use http::HeaderName;
//! use keyrelay_layers::credentials::{is_credential, CREDENTIAL_HEADERS};
//!
//! assert!(is_credential(&HeaderName::from_static("x-goog-api-key")));
//! assert!(!is_credential(&HeaderName::from_static("content-type")));
//! assert!(CREDENTIAL_HEADERS.iter().any(|h| h == "authorization"));
//! ```

use http::{HeaderMap, HeaderName, header};

/// Where clients put keys (the proxy's, or by mistake a provider's):
/// `Authorization` (Bearer), Anthropic's `x-api-key`, Gemini's
/// `x-goog-api-key`, Azure's `api-key`, and cookies.
pub static CREDENTIAL_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
];

/// Whether `name` is one of [`CREDENTIAL_HEADERS`].
pub fn is_credential(name: &HeaderName) -> bool {
    CREDENTIAL_HEADERS.iter().any(|credential| credential == name)
}

/// `path`, followed by `query` less any `key` parameter (Google's clients
/// send a key in the URL as `?key=`): what may go further than Auth.
pub(crate) fn path_without_query_key(path: &str, query: Option<&str>) -> String {
    let is_key = |param: &&str| *param == "key" || param.starts_with("key=");
    let kept: Vec<&str> = query.into_iter().flat_map(|q| q.split('&')).filter(|p| !is_key(p)).collect();
    match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    }
}

/// Removes every header whose name `doomed` picks, looking at each name
/// present once: a `HeaderMap::remove` hashes its name whether or not it is
/// there, and most names a proxy strips are absent.
pub(crate) fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|name| doomed(name)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}
