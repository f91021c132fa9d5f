//! Header hygiene between the client and the provider.
//!
//! The upstream never sees the client's credentials, hop-by-hop headers,
//! `Host` or `Content-Length`; the client never sees hop-by-hop headers or
//! the provider's cookies.
//!
//! ```
//! use http::HeaderMap;
//! use keyrelay_layers::upstream::headers::{for_client, for_upstream};
//!
//! let mut request = HeaderMap::new();
//! request.insert("authorization", "Bearer proxy-key".parse().unwrap());
//! request.insert("connection", "keep-alive, x-trace".parse().unwrap());
//! request.insert("x-trace", "1".parse().unwrap());
//! request.insert("content-type", "application/json".parse().unwrap());
//! for_upstream(&mut request);
//! assert_eq!(request.keys().map(|name| name.as_str()).collect::<Vec<_>>(), ["content-type"]);
//!
//! let mut response = HeaderMap::new();
//! response.insert("set-cookie", "session=1".parse().unwrap());
//! response.insert("x-request-id", "req_123".parse().unwrap());
//! for_client(&mut response);
//! assert!(response.get("set-cookie").is_none());
//! assert_eq!(response["x-upstream-request-id"], "req_123");
//! ```

use http::{
    HeaderMap,
    header::{self, HeaderName},
};

/// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own framing: never
/// forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those `also` names, in one pass over
/// the names present (fifteen removes of mostly absent names cost more
/// than the rest of the header work of a request).
fn remove_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    crate::credentials::remove_where(headers, |name| HOP_BY_HOP.contains(name) || named.contains(name) || also(name));
}

/// Cleans a client's request headers for the provider: no hop-by-hop
/// headers, no client credentials (the upstream only ever sees the key the
/// proxy chose), no `Host` (set from the upstream URI) and no
/// `Content-Length` (the body may be rewritten).
pub fn for_upstream(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, |name| {
        crate::credentials::is_credential(name) || name == header::HOST || name == header::CONTENT_LENGTH
    });
}

/// Where the provider's own request id goes, since `x-request-id` is the
/// proxy's: the provider's is what its support asks for.
pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Cleans a provider's response headers for the client: no hop-by-hop
/// headers and no provider cookies; the provider's `x-request-id` moves to
/// `x-upstream-request-id`.
pub fn for_client(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, |name| name == header::SET_COOKIE);
    if let Some(id) = headers.remove("x-request-id") {
        headers.insert(X_UPSTREAM_REQUEST_ID, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_and_hop_by_hop_but_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer client-key"),
            ("x-api-key", "client-key"),
            ("x-goog-api-key", "g"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("host", "proxy.local"),
            ("content-length", "12"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("openai-organization", "org-1"),
            ("x-request-id", "r1"),
        ] {
            h.append(name, value.parse().unwrap());
        }
        for_upstream(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "openai-organization", "x-request-id"]);
    }

    #[test]
    fn client_gets_no_provider_cookies_or_hop_by_hop() {
        let mut h = HeaderMap::new();
        for (name, value) in
            [("set-cookie", "__cf_bm=x"), ("connection", "close"), ("content-type", "text/event-stream")]
        {
            h.append(name, value.parse().unwrap());
        }
        for_client(&mut h);
        assert_eq!(h.len(), 1);
    }
}
