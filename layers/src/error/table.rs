//! Every failure the layers report, one entry each: its fields, the status,
//! OpenAI `type` and `code` it answers with, its `Retry-After`, its message,
//! and its constructors. The entry syntax is in [`super::define`].
//!
//! Types follow OpenAI's: `invalid_request_error` for the client's fault,
//! `rate_limit_error` for 429, `service_unavailable` for 503 (no key can
//! serve now), `upstream_error` for 502, `timeout_error` for 504 and
//! `server_error` for 500 (the `table_is_consistent` test holds this).

use std::{error::Error, fmt, time::Duration};

use http::StatusCode;

use super::{ErrorReply, ceil_secs, define::failures, echo};
use crate::BoxError;

failures! {
    /// The client sent no proxy key, or the wrong one.
    Unauthorized { missing: bool, key_name: &'static str }
        reply 401, "invalid_request_error", "invalid_api_key";
        message |this, f| {
            let key = this.key_name;
            let which = if key == "ADMIN_API_KEY" { "admin" } else { "proxy" };
            if this.missing {
                write!(f, "missing {which} API key: send `Authorization: Bearer <{key}>` or `x-api-key: <{key}>`")
            } else {
                write!(f, "invalid {which} API key: the key sent does not match {key}")
            }
        };
        impl {
            /// No key was sent.
            pub fn missing() -> Self {
                Self { missing: true, key_name: "PROXY_API_KEY" }
            }
            /// A key was sent but it is not the configured one.
            pub fn invalid() -> Self {
                Self { missing: false, key_name: "PROXY_API_KEY" }
            }
            /// Names the key the client should send, e.g. `ADMIN_API_KEY`.
            pub fn for_key(mut self, key_name: &'static str) -> Self {
                self.key_name = key_name;
                self
            }
        }

    /// The request body is over the configured limit.
    BodyTooLarge { limit: u64 }
        reply 413, "invalid_request_error", "request_too_large";
        message |this, f| write!(
            f,
            "request body is larger than the proxy's limit of {} bytes (server.max_body_bytes)",
            this.limit
        );
        impl {
            /// `limit` is the configured maximum, in bytes.
            pub fn new(limit: u64) -> Self {
                Self { limit }
            }
        }

    /// The body is not a JSON object, or could not be read.
    InvalidBody { reason: String }
        reply 400, "invalid_request_error", "invalid_json";
        message |this, f| write!(f, "request body must be a JSON object: {}", this.reason);
        impl {
            /// `reason` says what is wrong (usually the JSON parser's message).
            pub fn new(reason: impl fmt::Display) -> Self {
                Self { reason: reason.to_string() }
            }
        }

    /// The body has no `model`.
    #[derive(Default)]
    MissingModel { _private: () }
        reply 400, "invalid_request_error", "missing_model";
        message |_this, f| f.write_str(
            "request body has no `model`: name one as `provider/model`, e.g. `openai/gpt-4o-mini`"
        );
        impl {
            /// The error.
            pub fn new() -> Self {
                Self::default()
            }
        }

    /// `model` is not a `provider/model` string.
    InvalidModel { model: Option<String> }
        reply 400, "invalid_request_error", "invalid_model";
        message |this, f| match &this.model {
            Some(model) => write!(
                f,
                "model `{model}` is not of the form `provider/model`: prefix it with a configured provider, e.g. `openai/gpt-4o-mini`"
            ),
            None => f.write_str("`model` must be a string of the form `provider/model`"),
        };
        impl {
            /// `model` was a string but not of the form `provider/model`.
            pub fn new(model: &str) -> Self {
                Self { model: Some(echo(model)) }
            }
            /// `model` was not a string at all.
            pub fn not_a_string() -> Self {
                Self { model: None }
            }
        }

    /// The `provider/` prefix of `model` names no configured provider.
    UnknownProvider { provider: String, known: String }
        reply 400, "invalid_request_error", "unknown_provider";
        message |this, f| write!(f, "unknown provider `{}`; known providers: {}", this.provider, this.known);
        impl {
            /// `provider` is the prefix the client sent (echoed, bounded); `known`
            /// the configured provider ids, listed in the message.
            pub fn new<'a>(provider: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
                let known = known.into_iter().collect::<Vec<_>>().join(", ");
                Self { provider: echo(provider), known }
            }
        }

    /// The model is blocked by the provider's ignore list.
    ModelBlocked { provider: String, model: String, pattern: String }
        reply 403, "invalid_request_error", "model_not_allowed";
        message |this, f| write!(
            f,
            "model `{}` of provider `{}` is blocked by the ignore pattern `{}` (IGNORE_MODELS_{} / providers.{}.ignore_models); add it to the whitelist to allow it",
            this.model,
            this.provider,
            this.pattern,
            this.provider.to_ascii_uppercase(),
            this.provider
        );
        impl {
            /// `pattern` is the ignore glob that matched `model`.
            pub fn new(provider: &str, model: &str, pattern: &str) -> Self {
                Self { provider: provider.to_owned(), model: echo(model), pattern: pattern.to_owned() }
            }
        }

    /// The request cannot be expressed in the provider's API.
    UnsupportedRequest { provider: String, reason: String }
        reply 400, "invalid_request_error", "unsupported_request";
        message |this, f| write!(f, "this request cannot be sent to provider `{}`: {}", this.provider, this.reason);
        impl {
            /// `reason` says what the provider's API cannot express.
            pub fn new(provider: &str, reason: &str) -> Self {
                Self { provider: provider.to_owned(), reason: echo(reason) }
            }
        }

    /// No route has this path.
    RouteNotFound { path: String }
        reply 404, "invalid_request_error", "unknown_url";
        message |this, f| write!(f, "no route for `{}`; see GET /v1/models and POST /v1/chat/completions", this.path);
        impl {
            /// `path` is the request's path (echoed, bounded).
            pub fn new(path: &str) -> Self {
                Self { path: echo(path) }
            }
        }

    /// The route exists but not for this method (with an `Allow` header).
    MethodNotAllowed { allow: &'static str }
        reply 405, "invalid_request_error", "method_not_allowed";
        allow |this| Some(this.allow);
        message |this, f| write!(f, "method not allowed on this route; use {}", this.allow);
        impl {
            /// `allow` is the value of the `Allow` header, e.g. `"POST"`.
            pub fn new(allow: &'static str) -> Self {
                Self { allow }
            }
        }

    /// The provider is known but holds no key.
    NoKeyConfigured { provider: String }
        reply 503, "service_unavailable", "no_usable_key";
        message |this, f| {
            let env = this.provider.to_ascii_uppercase();
            write!(f, "no API key configured for provider `{}`: set {env}_API_KEY (or {env}_API_KEY_1, ...)", this.provider)
        };
        impl {
            /// The message names the environment variable to set for `provider`.
            pub fn new(provider: &str) -> Self {
                Self { provider: provider.to_owned() }
            }
        }

    /// A client key asked for a model outside its client's list.
    ClientModelNotAllowed { client: String, model: String }
        reply 403, "invalid_request_error", "model_not_allowed";
        message |this, f| write!(
            f,
            "client `{}` may not use model `{}`: it is not in the client's models list ([[clients]] models, or the models given to POST /v1/admin/clients)",
            this.client,
            this.model
        );
        impl {
            /// `model` as `provider/model` (or the alias the client named).
            pub fn new(client: &str, model: &str) -> Self {
                Self { client: client.to_owned(), model: echo(model) }
            }
        }

    /// A client key is over one of its own limits (`rpm`, `tpm`,
    /// `max_parallel`), with `Retry-After` in whole seconds, rounded up.
    ClientRateLimited { client: String, limit: String, retry_after: Duration }
        reply 429, "rate_limit_error", "rate_limit_exceeded";
        retry_after |this| Some(ceil_secs(this.retry_after).max(1));
        message |this, f| write!(
            f,
            "client `{}` is over its limit of {}; retry in {} s",
            this.client,
            this.limit,
            ceil_secs(this.retry_after).max(1)
        );
        impl {
            /// `limit` says which, e.g. `60 requests per minute (rpm)`.
            pub fn new(client: &str, limit: String, retry_after: Duration) -> Self {
                Self { client: client.to_owned(), limit, retry_after }
            }
        }

    /// A client key spent its budget for the period (with `Retry-After` at
    /// the period's end; none for a `total` budget, which never resets).
    BudgetExceeded { client: String, limit_usd: f64, period: &'static str, retry_after: Option<Duration> }
        reply 429, "rate_limit_error", "budget_exceeded";
        retry_after |this| this.retry_after.map(|after| ceil_secs(after).max(1));
        message |this, f| {
            write!(f, "client `{}` has spent its budget of ${} ", this.client, this.limit_usd)?;
            match this.period {
                "total" => f.write_str("(in total); ask the operator to raise it"),
                period => write!(f, "for this {period}; it resets at the start of the next {period} (UTC)"),
            }
        };
        impl {
            /// `retry_after`: until the period ends (`None` for `total`).
            pub fn new(client: &str, limit_usd: f64, period: &'static str, retry_after: Option<Duration>) -> Self {
                Self { client: client.to_owned(), limit_usd, period, retry_after }
            }
        }

    /// Every key of the provider is rate limited or out of quota for this
    /// model (or the provider is paused) past the request's deadline, with
    /// `Retry-After` in whole seconds, rounded up.
    AllKeysCooling { provider: String, model: String, retry_after: Duration }
        reply 429, "rate_limit_error", "rate_limit_exceeded";
        retry_after |this| Some(ceil_secs(this.retry_after).max(1));
        message |this, f| write!(
            f,
            "every key of provider `{}` is cooling down for model `{}` (rate limits or quota; see GET /v1/keys); the first is usable again in {} s",
            this.provider,
            this.model,
            ceil_secs(this.retry_after)
        );
        impl {
            /// `retry_after`: when the first key is usable again.
            pub fn new(provider: &str, model: &str, retry_after: Duration) -> Self {
                Self { provider: provider.to_owned(), model: echo(model), retry_after }
            }
            /// When the first key is usable again.
            pub fn retry_after(&self) -> Duration {
                self.retry_after
            }
        }

    /// Every key able to serve this model is resting after repeated upstream
    /// failures (5xx, resets, timeouts) past the request's deadline: the
    /// upstream is struggling, the client was not rate limited. With
    /// `Retry-After` in whole seconds, rounded up.
    KeysRecovering { provider: String, model: String, retry_after: Duration }
        reply 503, "service_unavailable", "upstream_unavailable";
        retry_after |this| Some(ceil_secs(this.retry_after).max(1));
        message |this, f| write!(
            f,
            "every key of provider `{}` that can serve model `{}` is resting after repeated upstream failures (errors, resets or timeouts; not a rate limit, see GET /v1/keys); retry in {} s",
            this.provider,
            this.model,
            ceil_secs(this.retry_after).max(1)
        );
        impl {
            /// `retry_after`: when the first key is usable again.
            pub fn new(provider: &str, model: &str, retry_after: Duration) -> Self {
                Self { provider: provider.to_owned(), model: echo(model), retry_after }
            }
            /// When the first key is usable again.
            pub fn retry_after(&self) -> Duration {
                self.retry_after
            }
        }

    /// The proxy is at its cap of requests in flight (`Retry-After: 1`).
    #[derive(Default)]
    Overloaded { _private: () }
        reply 503, "service_unavailable", "overloaded";
        retry_after |_this| Some(1);
        message |_this, f| f.write_str("the proxy is at its limit of requests in flight; retry shortly");
        impl {
            /// The error [`LoadShedLayer`](crate::shed::LoadShedLayer) answers with.
            pub fn new() -> Self {
                Self::default()
            }
        }

    /// Every key of the provider is invalid or disabled (`Retry-After` when
    /// an invalid key will be probed again).
    NoUsableKey { provider: String, retry_after: Option<Duration> }
        reply 503, "service_unavailable", "no_usable_key";
        retry_after |this| this.retry_after.map(|d| ceil_secs(d).max(1));
        message |this, f| write!(
            f,
            "no usable key for provider `{}`: every key is invalid, disabled or has spent a `total` budget (see GET /v1/keys)",
            this.provider
        );
        impl {
            /// `retry_after`: when the first invalid key may be probed again.
            pub fn new(provider: &str, retry_after: Option<Duration>) -> Self {
                Self { provider: provider.to_owned(), retry_after }
            }
        }

    /// The provider has keys, but every one is bound to other models.
    ModelNotServed { provider: String, model: String }
        reply 403, "invalid_request_error", "model_not_allowed";
        message |this, f| write!(
            f,
            "no key of provider `{}` serves model `{}`: each is bound to other models (providers.{}.keys[].models)",
            this.provider, this.model, this.provider
        );
        impl {
            /// `model` (echoed, bounded) of `provider`.
            pub fn new(provider: &str, model: &str) -> Self {
                Self { provider: provider.to_owned(), model: echo(model) }
            }
        }

    /// A dialect route's bare model (no configured `provider/` prefix)
    /// went to the route's default provider, which is not configured.
    NoDefaultProvider { model: String, provider: String, setting: &'static str }
        reply 400, "invalid_request_error", "unknown_provider";
        message |this, f| write!(
            f,
            "model `{}` names no configured provider, and this route's default provider `{}` is not configured: \
             send `provider/model` (e.g. `openrouter/{}`) or set {}",
            this.model, this.provider, this.model, this.setting
        );
        impl {
            /// `model` as sent; `provider` the route's default; `setting` the
            /// config key that chooses it (e.g. `routes.messages_default_provider`).
            pub fn new(model: &str, provider: &str, setting: &'static str) -> Self {
                Self { model: echo(model), provider: provider.to_owned(), setting }
            }
        }

    /// A Responses API follow-up names a response made with a key the pool
    /// no longer has.
    ResponseKeyGone { response: String, key: String }
        reply 404, "invalid_request_error", "response_not_found";
        message |this, f| write!(
            f,
            "response `{}` was made with key {}, which is no longer configured: only that key's organisation \
             holds it; start over without previous_response_id (send the whole conversation in `input`)",
            this.response, this.key
        );
        impl {
            /// `response` the id; `key` the id of the key that made it.
            pub fn new(response: &str, key: &str) -> Self {
                Self { response: echo(response), key: key.to_owned() }
            }
        }

    /// A Responses API follow-up names a response whose key cannot be used
    /// now (invalid or disabled), or one made by another provider.
    ResponseKeyUnavailable { response: String, why: String }
        reply 409, "invalid_request_error", "response_key_unavailable";
        message |this, f| write!(
            f,
            "response `{}` is held by {}: only that key can continue it; start over without \
             previous_response_id (send the whole conversation in `input`)",
            this.response, this.why
        );
        impl {
            /// `why` names the key and its state, e.g. `key openai:3f9a1c2e, which is disabled`.
            pub fn new(response: &str, why: impl Into<String>) -> Self {
                Self { response: echo(response), why: why.into() }
            }
        }

    /// Every key the request could use was tried and failed: what
    /// [`crate::retry`] turns into [`UpstreamFailed`] with the last error.
    KeysExhausted { provider: String }
        reply 502, "upstream_error", "upstream_failed";
        message |this, f| write!(f, "every usable key of provider `{}` was tried for this request and failed", this.provider);
        impl {
            /// Every usable key of `provider` has been tried.
            pub fn new(provider: &str) -> Self {
                Self { provider: provider.to_owned() }
            }
        }

    /// The chosen key had no free concurrency slot after all (a race with
    /// another request): rotate without penalty (`Retry-After: 1` if it
    /// surfaces).
    KeyBusy { key: String }
        reply 503, "service_unavailable", "key_busy";
        retry_after |_this| Some(1);
        message |this, f| write!(f, "key {} has no free concurrency slot", this.key);
        impl {
            /// `key` is the key's id, never its secret.
            pub fn new(key: &str) -> Self {
                Self { key: key.to_owned() }
            }
        }

    /// Every attempt failed; carries the last upstream error, redacted.
    UpstreamFailed { provider: String, attempts: u32, last: String }
        reply 502, "upstream_error", "upstream_failed";
        message |this, f| write!(
            f,
            "upstream `{}` failed on every attempt ({} in all); last error: {}",
            this.provider, this.attempts, this.last
        );
        impl {
            /// `last` must already be free of secrets.
            pub fn new(provider: &str, attempts: u32, last: String) -> Self {
                Self { provider: provider.to_owned(), attempts, last }
            }
        }

    /// The key is valid but not allowed here: the admin routes want the
    /// admin key.
    #[derive(Default)]
    Forbidden { _private: () }
        reply 403, "invalid_request_error", "admin_key_required";
        message |_this, f| f.write_str("this route needs the admin key (ADMIN_API_KEY), not the proxy key");
        impl {
            /// The error.
            pub fn new() -> Self {
                Self::default()
            }
        }

    /// No key has this id (on the admin routes).
    UnknownKey { id: String }
        reply 404, "invalid_request_error", "key_not_found";
        message |this, f| write!(f, "no key with id `{}`; GET /v1/keys lists them", this.id);
        impl {
            /// `id` is the key id the client asked for (echoed, bounded).
            pub fn new(id: &str) -> Self {
                Self { id: echo(id) }
            }
        }

    /// No client key has this name (on the admin client routes).
    UnknownClient { name: String }
        reply 404, "invalid_request_error", "client_not_found";
        message |this, f| write!(f, "no client named `{}`; GET /v1/admin/clients lists them", this.name);
        impl {
            /// `name` is the client name the request named (echoed, bounded).
            pub fn new(name: &str) -> Self {
                Self { name: echo(name) }
            }
        }

    /// A client cannot be made or revoked as asked: its name is taken, or
    /// it comes from the configuration.
    ClientConflict { why: String }
        reply 409, "invalid_request_error", "client_conflict";
        message |this, f| f.write_str(&this.why);
        impl {
            /// `why` says what is in the way.
            pub fn new(why: impl Into<String>) -> Self {
                Self { why: why.into() }
            }
        }

    /// The body of `POST /v1/admin/clients` does not describe a client.
    InvalidClient { why: String }
        reply 400, "invalid_request_error", "invalid_client";
        message |this, f| write!(f, "invalid client: {}", this.why);
        impl {
            /// `why` names the field and what is wrong with it.
            pub fn new(why: impl Into<String>) -> Self {
                Self { why: why.into() }
            }
        }

    /// The durable store (the SQLite database under the data dir) failed.
    StoreFailed { why: String }
        reply 500, "server_error", "store_error";
        message |this, f| write!(f, "the store failed: {}", this.why);
        impl {
            /// `why` is the database's error (it holds no secret).
            pub fn new(why: impl std::fmt::Display) -> Self {
                Self { why: why.to_string() }
            }
        }

    /// The request's deadline passed before the upstream answered.
    DeadlineExceeded { after: Duration }
        reply 504, "timeout_error", "deadline_exceeded";
        message |this, f| write!(
            f,
            "the request did not get an answer within the proxy's deadline of {:.1} s (proxy.global_timeout_secs / GLOBAL_TIMEOUT)",
            this.after.as_secs_f64()
        );
        impl {
            /// `after` is the deadline's length, named in the message.
            pub fn new(after: Duration) -> Self {
                Self { after }
            }
        }

    /// The upstream could not be reached, or broke before answering.
    UpstreamUnreachable { provider: String, source: BoxError }
        reply 502, "upstream_error", "upstream_unreachable";
        message |this, f| {
            write!(f, "upstream `{}` failed before answering", this.provider)?;
            // The chain of a hyper client error names the cause (connect refused,
            // reset, TLS); it never holds headers, so no secret can appear here.
            let mut cause: Option<&(dyn Error + 'static)> = Some(&*this.source);
            while let Some(err) = cause {
                write!(f, ": {err}")?;
                cause = err.source();
            }
            Ok(())
        };
        impl {
            /// `source` is the client's error (connect refused, reset, TLS...).
            pub fn new(provider: &str, source: impl Into<BoxError>) -> Self {
                Self { provider: provider.to_owned(), source: source.into() }
            }
        }

    /// A layer ran without the extension an outer layer should have
    /// inserted: a mis-assembled stack, not a client error.
    MissingExtension { type_name: &'static str }
        reply 500, "server_error", "internal_error";
        message |this, f| write!(
            f,
            "request extension `{}` is missing: a layer is out of order in the stack",
            this.type_name
        );
        impl {
            /// `type_name` names the missing extension, e.g. `"RouteTarget"`.
            pub fn new(type_name: &'static str) -> Self {
                Self { type_name }
            }
        }
}
