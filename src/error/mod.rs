//! Every refusal the gateway makes, and the one place each becomes an HTTP answer (reference: Errors):
//! its status, type, code and message here, the conversions from other errors (the key
//! store's, a body's, a JSON body's) in `convert`. The `retry-after` an answer carries is
//! written with the other limit headers, by `limit::answer`, from `retry_after`.
//!
//! Messages are written here, from the variant's fields, never from anything the client sent
//! as a credential: an error can name a scope, a model or a limit, but never a key.

mod body;
mod convert;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// The type and code of a quota refusal (OpenAI's), which usage counts apart from rate limits.
pub const INSUFFICIENT_QUOTA: &str = "insufficient_quota";

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    InvalidRequest(String),
    /// A request body field is wrong; `param` names it (as OpenAI's `param` does), e.g.
    /// `name` or `limits.requests_per_minute`.
    #[error("{message}")]
    InvalidParam { param: String, message: String },
    /// A key in the path or the query (a URL ends up in logs and histories).
    #[error("API keys are not accepted in the URL; send `Authorization: Bearer <key>`.")]
    KeyInUrl,
    /// The request body stalled: a gap between its frames, or the whole of it, took longer
    /// than `body_read_timeout`.
    #[error("The request body did not arrive in time.")]
    BodyTimeout,
    /// The request body broke off or was malformed (the client's fault, not the upstream's).
    #[error("The request body could not be read: {0}.")]
    ClientBody(String),
    /// The client left before its request body was complete: nobody reads the answer, and
    /// the request is recorded as one whose client left (499), not as a bad request.
    #[error("The client closed its connection before its request body was complete.")]
    ClientGone,
    #[error("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")]
    MissingKey,
    #[error("Incorrect API key provided: {0}.")]
    InvalidKey(&'static str),
    #[error("Incorrect API key provided: {0}.")]
    MalformedKey(crate::keys::token::ParseError),
    #[error("{0}")]
    ExpiredKey(String),
    #[error("This API key has been revoked.")]
    RevokedKey,
    #[error("This API key is disabled. An administrator can enable it again.")]
    DisabledKey,
    #[error("This API key does not have the `{0}` scope required for this route.")]
    MissingScope(crate::keys::scope::Scope),
    #[error("This API key may not use the model `{0}`.")]
    ModelNotAllowed(String),
    #[error("Unknown route: {0} {1}.")]
    UnknownRoute(http::Method, String),
    /// A known route without its `/v1`: the client's base URL lacks it.
    #[error("Unknown route: {0} {1}. The route exists as {0} /v1{1}: the client's `base_url` should end in `/v1` (for example `http://127.0.0.1:4142/v1`).")]
    RouteUnderV1(http::Method, String),
    /// A refusal whose details would have repeated an API key (the one presented, or
    /// anything shaped like one): the details are withheld.
    #[error("The request carries an API key outside the credential header (in the URL, the body or another field); it is refused, and not repeated here. Send the key only in `Authorization`.")]
    KeyElsewhere,
    #[error("The request body is larger than the limit of {0} bytes.")]
    TooLarge(u64),
    #[error("Rate limit reached: {limit} requests per minute. Retry in {}.", crate::time::OpenAiDuration(*retry_after))]
    RateLimited { limit: u32, retry_after: Duration },
    #[error("Rate limit reached: {limit} tokens per minute. Retry in {}.", crate::time::OpenAiDuration(*retry_after))]
    TokenRateLimited { limit: u64, retry_after: Duration },
    /// A quota of the key is used up until its window ends (`limit::quota`).
    #[error("You exceeded this API key's quota of {} {}. It resets at {} (in {}).", .0.limit, .0.kind.words(), .0.resets_at, crate::time::OpenAiDuration(.0.reset_in))]
    InsufficientQuota(crate::limit::quota::QuotaRefusal),
    #[error("The rate-limit backend is unavailable and this gateway is set to refuse requests until it returns.")]
    LimiterUnavailable,
    #[error("Too many requests in flight for this key (limit {0}). Retry when one finishes.")]
    ConcurrencyLimited(u32),
    /// The key's token quota is not used up, but what its running requests hold of it
    /// (`limit::quota::hold_tokens`) leaves nothing for this one: retry when one ends.
    #[error("Requests of this API key that are still running hold {held} tokens of its quota of {limit} {words} ({used} used); retry when one finishes.")]
    QuotaHeld {
        limit: u64,
        words: &'static str,
        used: u64,
        held: u64,
    },
    #[error("Too many failed authentication attempts from this address. Retry in {}.", crate::time::OpenAiDuration(*retry_after))]
    TooManyFailedAttempts { retry_after: Duration },
    #[error("The upstream `{0}` is unavailable.")]
    UpstreamUnavailable(String),
    #[error("The upstream `{0}` did not answer in time.")]
    UpstreamTimeout(String),
    #[error("The gateway is not ready: the key index has not loaded yet.")]
    NotReady,
    /// `/readyz` with its reason.
    #[error("The gateway is not ready: {0}.")]
    Unready(NotReady),
    #[error("The gateway is at capacity. Retry shortly.")]
    Overloaded,
    #[error("{0}")]
    NotFound(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// The shared usage store (Redis) did not answer a usage query.
    #[error("The usage store is unavailable ({0}); retry shortly.")]
    UsageUnavailable(String),
    #[error("The key file is read-only (for example a mounted Secret); manage keys where it is writable.")]
    ReadOnlyKeyStore,
    /// The shared key store (Redis) cannot take a write now; keys keep being served.
    #[error("The key store is unavailable ({0}); no change was made. Retry shortly.")]
    KeyStoreUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidRequest(_)
            | InvalidParam { .. }
            | KeyInUrl
            | BodyTimeout
            | ClientBody(_)
            | ClientGone => StatusCode::BAD_REQUEST,
            MissingKey | InvalidKey(_) | MalformedKey(_) | ExpiredKey(_) | RevokedKey
            | DisabledKey => StatusCode::UNAUTHORIZED,
            MissingScope(_) | ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            UnknownRoute(..) | RouteUnderV1(..) | NotFound(_) | ModelNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            KeyElsewhere => StatusCode::BAD_REQUEST,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. }
            | TokenRateLimited { .. }
            | ConcurrencyLimited(_)
            | QuotaHeld { .. }
            | TooManyFailedAttempts { .. }
            | InsufficientQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            LimiterUnavailable | UsageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NotReady | Unready(_) | Overloaded | KeyStoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ReadOnlyKeyStore => StatusCode::CONFLICT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequest(_)
            | InvalidParam { .. }
            | KeyInUrl
            | BodyTimeout
            | ClientBody(_)
            | ClientGone
            | UnknownRoute(..)
            | RouteUnderV1(..)
            | TooLarge(_)
            | NotFound(_)
            | ModelNotFound(_)
            | ReadOnlyKeyStore
            | KeyElsewhere => "invalid_request_error",
            MissingKey | InvalidKey(_) | MalformedKey(_) | ExpiredKey(_) | RevokedKey
            | DisabledKey => "authentication_error",
            MissingScope(_) | ModelNotAllowed(_) => "permission_error",
            RateLimited { .. }
            | TokenRateLimited { .. }
            | ConcurrencyLimited(_)
            | QuotaHeld { .. }
            | TooManyFailedAttempts { .. } => "rate_limit_error",
            InsufficientQuota(_) => INSUFFICIENT_QUOTA,
            UpstreamUnavailable(_) | UpstreamTimeout(_) => "upstream_error",
            NotReady
            | Unready(_)
            | Overloaded
            | LimiterUnavailable
            | UsageUnavailable(_)
            | KeyStoreUnavailable(_)
            | Internal(_) => "server_error",
        }
    }

    /// The model a refusal is about (not allowed for the key, or served by no upstream): it
    /// passed the check for a key inside it, so the access log may name it.
    pub fn refused_model(&self) -> Option<&str> {
        match self {
            GatewayError::ModelNotAllowed(m) | GatewayError::ModelNotFound(m) => Some(m),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequest(_)
            | InvalidParam { .. }
            | KeyElsewhere
            | KeyInUrl
            | BodyTimeout
            | ClientBody(_)
            | ClientGone => "invalid_request",
            MissingKey => "missing_api_key",
            InvalidKey(_) | MalformedKey(_) => "invalid_api_key",
            ExpiredKey(_) => "expired_api_key",
            RevokedKey => "revoked_api_key",
            DisabledKey => "disabled_api_key",
            MissingScope(_) => "insufficient_permissions",
            ModelNotAllowed(_) => "model_not_allowed",
            UnknownRoute(..) | RouteUnderV1(..) => "unknown_route",
            NotFound(_) => "not_found",
            ModelNotFound(_) => "model_not_found",
            TooLarge(_) => "request_too_large",
            RateLimited { .. } | TokenRateLimited { .. } => "rate_limit_exceeded",
            LimiterUnavailable => "overloaded",
            ConcurrencyLimited(_) | QuotaHeld { .. } => "concurrency_limit_exceeded",
            TooManyFailedAttempts { .. } => "too_many_failed_attempts",
            InsufficientQuota(_) => INSUFFICIENT_QUOTA,
            UsageUnavailable(_) => "usage_store_unavailable",
            UpstreamUnavailable(_) => "upstream_unavailable",
            UpstreamTimeout(_) => "upstream_timeout",
            NotReady | Unready(_) => "not_ready",
            Overloaded => "overloaded",
            ReadOnlyKeyStore => "read_only_key_store",
            KeyStoreUnavailable(_) => "key_store_unavailable",
            Internal(_) => "internal_error",
        }
    }

    /// The request field the error is about; `None` (JSON `null`) for every other error.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidParam { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The text from the client that this error's message repeats, if any (a path, a model,
    /// a parser's excerpt of the body): what must be searched for a key before answering.
    pub fn client_text(&self) -> Option<&str> {
        use GatewayError::*;
        match self {
            InvalidRequest(s)
            | ClientBody(s)
            | InvalidParam { message: s, .. }
            | ModelNotAllowed(s)
            | ModelNotFound(s)
            | NotFound(s) => Some(s),
            UnknownRoute(_, s) | RouteUnderV1(_, s) => Some(s),
            _ => None,
        }
    }

    /// How long a client should wait before retrying, for a refusal that says
    /// (`retry-after`, written by `limit::answer` with the other limit headers).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after, .. }
            | GatewayError::TokenRateLimited { retry_after, .. }
            | GatewayError::TooManyFailedAttempts { retry_after } => Some(*retry_after),
            GatewayError::ConcurrencyLimited(_)
            | GatewayError::QuotaHeld { .. }
            | GatewayError::Overloaded
            | GatewayError::LimiterUnavailable
            | GatewayError::UsageUnavailable(_)
            | GatewayError::KeyStoreUnavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The OpenAI-shaped answer. The pipeline adds the request-scoped headers (request id,
    /// limits and `retry-after`).
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let message = match self {
            GatewayError::RateLimited { limit, retry_after } => body::Message::RateLimited {
                limit: *limit,
                retry_after: *retry_after,
            },
            GatewayError::InvalidKey(why) => body::Message::InvalidKey(why),
            e => body::Message::Display(e),
        };
        let body = body::envelope(&body::Envelope {
            message,
            kind: self.kind(),
            param: self.param(),
            code: self.code(),
        });
        let mut resp = Response::new(B::from(body));
        // An answer to an authenticated caller can carry the key's limit headers (the rate's
        // three, the tokens' three, `retry-after`'s two or a quota's two) besides its content
        // type and request id: room for twelve from the start, where a header map starts with
        // room for six and grew (a new index, the entries moved by a `realloc`) on every 429,
        // which has seven. A 401 has three; the larger map costs it nothing measurable
        // (callgrind, 20,884 instructions per 401 with it, 20,984 without).
        *resp.headers_mut() = http::HeaderMap::with_capacity(12);
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status() == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Why the gateway is not ready (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The key file has not loaded yet.
    NoKeys,
    /// `[keys] unready_on_load_error` and the key file's last load failed.
    KeyFile,
    /// Shutting down: load balancers should stop sending.
    Draining,
    /// This upstream has not passed its last health check.
    Upstream(Arc<str>),
    /// Redis key store: no snapshot on disk and the store has not answered yet (why).
    KeyStore(Arc<str>),
    /// Redis key store: it lost changes (diverged) and this replica, started without a
    /// snapshot, has only what the store kept.
    KeyStoreDiverged,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::NoKeys => f.write_str("the key file has not loaded yet"),
            NotReady::KeyFile => f.write_str(
                "the key file cannot be loaded (the last good keys are serving; see the log)",
            ),
            NotReady::Draining => f.write_str("shutting down"),
            NotReady::KeyStore(why) => write!(
                f,
                "no key snapshot on disk and the key store has not answered ({why})"
            ),
            NotReady::KeyStoreDiverged => f.write_str(
                "the key store lost key changes and this replica has no snapshot of its own to make up for them; run `keygate keys push` on a replica that has one",
            ),
            NotReady::Upstream(u) => {
                write!(f, "the upstream `{u}` has not passed its health check")
            }
        }
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
