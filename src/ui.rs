//! `GET /ui`: the dashboard's static files (a page, two scripts, a style
//! sheet), embedded in the binary at build time (from `ui/` at the
//! repository root), so the page works offline and always matches the
//! keyrelay that serves it.
//!
//! The files carry no data and need no key: the page asks for the key and
//! sends it (as `Authorization: Bearer`) to the data routes, which have the
//! same auth as `/v1/keys`. The answers forbid everything the page does not
//! need (inline scripts and styles, other origins, framing), so that even a
//! key id or model name shaped like markup could not run in it.

use bytes::Bytes;
use http::{
    HeaderName, HeaderValue, Response,
    header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS},
};
use keyrelay_layers::{ProxyBody, body::full};

/// One of the dashboard's files, as the router recognised its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiAsset {
    /// `/ui` and `/ui/`: the page.
    Page,
    /// `/ui/app.js`
    Script,
    /// `/ui/charts.js`
    Charts,
    /// `/ui/app.css`
    Style,
}

impl UiAsset {
    /// The asset a path names, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/ui" | "/ui/" | "/ui/index.html" => Some(Self::Page),
            "/ui/app.js" => Some(Self::Script),
            "/ui/charts.js" => Some(Self::Charts),
            "/ui/app.css" => Some(Self::Style),
            _ => None,
        }
    }

    fn content(self) -> (&'static str, &'static str) {
        match self {
            Self::Page => (include_str!("../ui/index.html"), "text/html; charset=utf-8"),
            Self::Script => (include_str!("../ui/app.js"), "text/javascript; charset=utf-8"),
            Self::Charts => (include_str!("../ui/charts.js"), "text/javascript; charset=utf-8"),
            Self::Style => (include_str!("../ui/app.css"), "text/css; charset=utf-8"),
        }
    }
}

/// Only the page's own files and the page's own origin: no inline code, no
/// other site, no framing (clickjacking the admin buttons).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'";

/// The answer for `asset`: its bytes, its type and the page's security
/// headers. `no-cache`: a browser revalidates, so an upgraded keyrelay never
/// runs last version's script against this version's data.
pub fn serve(asset: UiAsset) -> Response<ProxyBody> {
    let (text, content_type) = asset.content();
    let mut res = Response::new(full(Bytes::from_static(text.as_bytes())));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_files_and_nothing_else() {
        assert_eq!(UiAsset::from_path("/ui"), Some(UiAsset::Page));
        assert_eq!(UiAsset::from_path("/ui/"), Some(UiAsset::Page));
        assert_eq!(UiAsset::from_path("/ui/app.js"), Some(UiAsset::Script));
        assert_eq!(UiAsset::from_path("/ui/app.css"), Some(UiAsset::Style));
        assert_eq!(UiAsset::from_path("/ui/charts.js"), Some(UiAsset::Charts));
        for other in ["/ui/../Cargo.toml", "/ui/app.js/", "/uix", "/ui/secret", "/v1/ui"] {
            assert_eq!(UiAsset::from_path(other), None, "{other}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let (page, _) = UiAsset::Page.content();
        assert!(page.contains(r#"src="/ui/app.js""#));
        assert!(page.contains(r#"href="/ui/app.css""#));
        // The policy forbids inline code: the page must not need any.
        assert!(!page.contains("<style"), "no inline style element");
        assert!(!page.contains("style="), "no inline style attribute");
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("http://") && !page.contains("https://"), "nothing from elsewhere");
        let res = serve(UiAsset::Page);
        assert_eq!(res.headers()[CONTENT_SECURITY_POLICY], CSP);
    }
}
