//! What the proxy knows about one upstream provider: where it lives, how it
//! takes a key, which wire dialect it speaks, and which models it lists.
//!
//! ```
//! use keyrelay_layers::provider::{AuthStyle, Provider};
//!
//! let groq = Provider::openai_compatible("groq", "https://api.groq.com/openai/v1").unwrap();
//! assert_eq!(groq.api_base().to_string(), "https://api.groq.com/openai/v1");
//! assert!(matches!(groq.auth(), AuthStyle::Bearer));
//! ```

use std::{fmt, sync::Arc};

use http::{HeaderName, HeaderValue, Uri, uri::PathAndQuery};

use crate::{
    extensions::{Endpoint, Inbound},
    filter::ModelRules,
};

/// A provider's name, as in `provider/model`; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(Arc<str>);

impl ProviderId {
    /// The id as configured, e.g. `openai`.
    pub fn new(id: &str) -> Self {
        Self(id.into())
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// How a provider takes its key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI and every compatible API).
    Bearer,
    /// The bare key in a header of its own, e.g. `x-api-key`.
    Header(HeaderName),
}

/// The wire format a provider speaks; Anthropic's Messages and Gemini's
/// generateContent translate in their own modules under `upstream::dialect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI's API: bodies pass through with only `model` rewritten.
    OpenAi,
    /// Anthropic's Messages API (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// Google's Gemini API (`x-goog-api-key`).
    Gemini,
}

impl Dialect {
    /// The inbound dialect whose requests this provider dialect takes as
    /// they are (passed through, model and key aside).
    pub fn native_inbound(self) -> Inbound {
        match self {
            Self::OpenAi => Inbound::OpenAi,
            Self::Anthropic => Inbound::Anthropic,
            Self::Gemini => Inbound::Gemini,
        }
    }

    /// `openai`, `anthropic` or `gemini`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }
}

/// A provider's base URL, parsed once. `Display` leaves out any userinfo.
#[derive(Clone, Debug)]
pub struct ApiBase {
    uri: Uri,
    /// The path without its trailing `/`, so that `join` can append `/suffix`.
    path: Box<str>,
    had_userinfo: bool,
}

/// An `api_base` that is not an absolute `http(s)://` URL.
#[derive(Debug)]
pub struct InvalidApiBase {
    reason: String,
}

impl fmt::Display for InvalidApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid api_base: {}", self.reason)
    }
}

impl std::error::Error for InvalidApiBase {}

impl ApiBase {
    /// Parses an absolute `http(s)://` URL without a query string; any
    /// `user:password@` is dropped (see [`had_userinfo`](Self::had_userinfo)).
    ///
    /// ```
    /// use keyrelay_layers::provider::ApiBase;
    ///
    /// let base = ApiBase::parse("https://user:pass@api.groq.com/openai/v1/").unwrap();
    /// assert!(base.had_userinfo());
    /// assert_eq!(base.to_string(), "https://api.groq.com/openai/v1");
    /// assert_eq!(base.join("models"), "https://api.groq.com/openai/v1/models");
    /// assert!(ApiBase::parse("api.groq.com/openai/v1").is_err(), "no scheme");
    /// ```
    pub fn parse(s: &str) -> Result<Self, InvalidApiBase> {
        let invalid = |reason: &str| InvalidApiBase { reason: reason.to_owned() };
        let uri: Uri = s.trim().parse().map_err(|_| invalid("not a URL, expected e.g. https://api.openai.com/v1"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(invalid("must start with http:// or https://")),
        }
        if uri.authority().is_none() {
            return Err(invalid("has no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("must not have a query string"));
        }
        let path: Box<str> = uri.path().trim_end_matches('/').into();
        // Credentials in the URL are dropped: the proxy sends the provider
        // key itself, and a URL travels into connection-pool logs.
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let had_userinfo = authority.contains('@');
        let uri = if had_userinfo {
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            let mut parts = uri.clone().into_parts();
            parts.authority = Some(host.parse().map_err(|_| invalid("has no valid host"))?);
            Uri::from_parts(parts).map_err(|_| invalid("has no valid host"))?
        } else {
            uri
        };
        Ok(Self { uri, path, had_userinfo })
    }

    /// Whether the URL as written carried `user:password@` (now dropped).
    pub fn had_userinfo(&self) -> bool {
        self.had_userinfo
    }

    /// `base + "/" + suffix`, e.g. `https://api.openai.com/v1/chat/completions`.
    pub fn join(&self, suffix: &str) -> Uri {
        let path = format!("{}/{}", self.path, suffix.trim_start_matches('/'));
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path).expect("a valid path plus a valid suffix is valid"));
        Uri::from_parts(parts).expect("parts of a valid absolute URI")
    }
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        write!(f, "{scheme}://{host}{}", self.path)
    }
}

/// One upstream provider.
#[derive(Clone, Debug)]
pub struct Provider {
    id: ProviderId,
    api_base: ApiBase,
    auth: AuthStyle,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    dialect: Dialect,
    models: Vec<String>,
    model_rules: ModelRules,
    split_think_tags: bool,
    ask_stream_usage: bool,
    responses_api: bool,
    /// Built once so that each request only clones a `Uri`.
    chat_uri: Uri,
    embeddings_uri: Uri,
}

impl Provider {
    /// An OpenAI-compatible provider with bearer auth. `api_base` includes
    /// the version path, as the provider's own SDK takes it.
    pub fn openai_compatible(id: &str, api_base: &str) -> Result<Self, InvalidApiBase> {
        Self::new(id, api_base, Dialect::OpenAi)
    }

    /// A provider of any dialect, with that dialect's auth: bearer for
    /// OpenAI's, `x-api-key` plus `anthropic-version` for Anthropic's,
    /// `x-goog-api-key` for Gemini's. Anthropic and Gemini bases are
    /// host-only (`https://api.anthropic.com`); the dialect adds the path.
    pub fn new(id: &str, api_base: &str, dialect: Dialect) -> Result<Self, InvalidApiBase> {
        let api_base = ApiBase::parse(api_base)?;
        let (auth, extra_headers) = match dialect {
            Dialect::OpenAi => (AuthStyle::Bearer, Vec::new()),
            Dialect::Anthropic => (
                AuthStyle::Header(HeaderName::from_static("x-api-key")),
                vec![(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"))],
            ),
            Dialect::Gemini => (AuthStyle::Header(HeaderName::from_static("x-goog-api-key")), Vec::new()),
        };
        Ok(Self {
            id: ProviderId::new(id),
            chat_uri: api_base.join(Endpoint::ChatCompletions.path_suffix()),
            embeddings_uri: api_base.join(Endpoint::Embeddings.path_suffix()),
            api_base,
            auth,
            extra_headers,
            dialect,
            models: Vec::new(),
            model_rules: ModelRules::default(),
            split_think_tags: false,
            ask_stream_usage: true,
            responses_api: false,
        })
    }

    /// Headers every request to this provider carries (e.g. `anthropic-version`).
    pub fn extra_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.extra_headers
    }

    /// Overrides the dialect's way of sending the key.
    pub fn with_auth(mut self, auth: AuthStyle) -> Self {
        self.auth = auth;
        self
    }

    /// Models to list in `/v1/models` besides those the provider reports.
    pub fn with_models(mut self, models: Vec<String>) -> Self {
        self.models = models;
        self
    }

    /// Which models requests may name, and `/v1/models` lists.
    pub fn with_model_rules(mut self, rules: ModelRules) -> Self {
        self.model_rules = rules;
        self
    }

    /// The allow and deny globs of this provider's models.
    pub fn model_rules(&self) -> &ModelRules {
        &self.model_rules
    }

    /// For OpenAI-compatible providers whose models write their reasoning
    /// into the content as `<think>...</think>`: move it to
    /// `reasoning_content`, streams included.
    pub fn with_think_tags_split(mut self, split: bool) -> Self {
        self.split_think_tags = split && self.dialect == Dialect::OpenAi;
        self
    }

    /// Whether `<think>` blocks are moved to `reasoning_content`.
    pub fn splits_think_tags(&self) -> bool {
        self.split_think_tags
    }

    /// Whether the proxy asks this OpenAI-compatible provider for a usage
    /// chunk at the end of every stream (`stream_options.include_usage`);
    /// on by default, off for servers that refuse the field.
    pub fn with_stream_usage(mut self, ask: bool) -> Self {
        self.ask_stream_usage = ask;
        self
    }

    /// For OpenAI-compatible providers that also serve OpenAI's Responses
    /// API (`/responses`, OpenAI's own does): Responses requests pass
    /// through instead of being translated to chat completions.
    pub fn with_responses_api(mut self, speaks: bool) -> Self {
        self.responses_api = speaks && self.dialect == Dialect::OpenAi;
        self
    }

    /// Whether the provider serves the Responses API itself.
    pub fn speaks_responses_api(&self) -> bool {
        self.responses_api
    }

    /// Whether requests to `endpoint` pass through to this provider as the
    /// client sent them (the same dialect on both sides), rather than being
    /// translated through chat completions.
    pub fn passes_through(&self, endpoint: Endpoint) -> bool {
        let inbound = endpoint.inbound();
        inbound == self.dialect.native_inbound() || (inbound == Inbound::Responses && self.responses_api)
    }

    /// Whether streams ask the upstream for a usage chunk.
    pub fn asks_stream_usage(&self) -> bool {
        self.ask_stream_usage
    }

    /// The provider's id, the `provider/` of model names.
    pub fn id(&self) -> &ProviderId {
        &self.id
    }
    /// The base URL requests are sent below.
    pub fn api_base(&self) -> &ApiBase {
        &self.api_base
    }
    /// How the key is sent.
    pub fn auth(&self) -> &AuthStyle {
        &self.auth
    }
    /// The wire format the provider speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
    /// The configured models (see [`with_models`](Self::with_models)).
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The upstream URI for an inbound endpoint.
    pub fn endpoint_uri(&self, endpoint: Endpoint) -> Uri {
        match endpoint {
            Endpoint::ChatCompletions => self.chat_uri.clone(),
            Endpoint::Embeddings => self.embeddings_uri.clone(),
            endpoint => self.api_base.join(endpoint.path_suffix()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_with_exactly_one_slash() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            let base = ApiBase::parse(base).unwrap();
            assert_eq!(base.join("chat/completions"), "https://api.openai.com/v1/chat/completions");
            assert_eq!(base.join("/models"), "https://api.openai.com/v1/models");
        }
        let bare = ApiBase::parse("http://127.0.0.1:11434").unwrap();
        assert_eq!(bare.join("models"), "http://127.0.0.1:11434/models");
    }

    #[test]
    fn rejects_what_cannot_be_a_base() {
        for bad in ["api.openai.com/v1", "ftp://x/v1", "https://x/v1?key=1", "", "not a url"] {
            assert!(ApiBase::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn userinfo_is_dropped_everywhere() {
        let base = ApiBase::parse("https://user:hunter2@proxy.example/v1").unwrap();
        assert_eq!(base.to_string(), "https://proxy.example/v1");
        assert_eq!(base.join("models"), "https://proxy.example/v1/models");
        assert!(base.had_userinfo());
    }
}
