//! A configured upstream: its connection pool, how a client's request becomes its request, and
//! the wait for its answer's head.
//!
//! One connection pool per upstream ([`crate::proxy::pool`]), HTTP/1.1 keep-alive with TCP_NODELAY.
//! Time limits are split the way LLM servers fail: connect (server down), first byte (queued
//! or stuck prefill), idle between body frames (a stream that stalls). A client that goes
//! away drops the response body, which drops the upstream connection and so cancels the
//! generation.

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::keys::entry::KeyId;
use crate::proxy::first_byte::{FirstByte, HeadLate};
use crate::proxy::headers;
use crate::proxy::health::{HealthState, Status};
use crate::proxy::pool::{Lease, Pool, SendError, Sent};
use crate::proxy::request_body::UpBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A configured upstream with its connection pool.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub name: Arc<str>,
    /// The `Host` the upstream gets (port omitted when it is the scheme's default), built
    /// once rather than formatted by the client on every request.
    host: HeaderValue,
    pool: Arc<Pool>,
    /// Metric handles resolved once for this upstream.
    pub series: Arc<crate::ops::metrics::UpstreamSeries>,
    /// The cached health-check result, when `health` is set.
    health: Option<Arc<HealthState>>,
    /// Whether a compressed answer was already reported (`answered_compressed`).
    compressed_said: Arc<AtomicBool>,
}

fn is_https(config: &UpstreamConfig) -> bool {
    config.scheme == http::uri::Scheme::HTTPS
}

fn default_port(config: &UpstreamConfig) -> u16 {
    if is_https(config) {
        443
    } else {
        80
    }
}

fn host_header(config: &UpstreamConfig) -> HeaderValue {
    let a = &config.authority;
    let text = match a.port_u16() {
        Some(p) if p == default_port(config) => a.host(),
        _ => a.as_str(),
    };
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    pub fn new(
        config: UpstreamConfig,
        series: Arc<crate::ops::metrics::UpstreamSeries>,
    ) -> Upstream {
        let pool = Pool::new(
            config.authority.host(),
            config
                .authority
                .port_u16()
                .unwrap_or_else(|| default_port(&config)),
            is_https(&config).then(|| Arc::clone(&config.tls)),
            config.connect_timeout,
        );
        Upstream {
            name: Arc::from(config.name.as_str()),
            host: host_header(&config),
            health: config.health.as_ref().map(|_| Arc::default()),
            config,
            pool: Arc::new(pool),
            series,
            compressed_said: Arc::default(),
        }
    }

    /// True when this upstream can reuse `other`'s pool (same address and connect timeout).
    pub fn same_pool(&self, other: &UpstreamConfig) -> bool {
        self.config.scheme == other.scheme
            && self.config.authority == other.authority
            && self.config.connect_timeout == other.connect_timeout
            && self.config.ca_file == other.ca_file
    }

    /// A clone sharing this pool, with new settings. The health state carries over when
    /// the check is the same, so a reload does not make a healthy upstream unknown again.
    pub fn with_config(
        &self,
        config: UpstreamConfig,
        series: Arc<crate::ops::metrics::UpstreamSeries>,
    ) -> Upstream {
        let health = match (&self.health, &config.health) {
            (Some(h), Some(c)) if self.config.health.as_ref() == Some(c) => Some(Arc::clone(h)),
            (_, Some(_)) => Some(Arc::default()),
            (_, None) => None,
        };
        Upstream {
            name: Arc::from(config.name.as_str()),
            host: host_header(&config),
            config,
            pool: Arc::clone(&self.pool),
            series,
            health,
            compressed_said: Arc::clone(&self.compressed_said),
        }
    }

    /// An answer came compressed although the gateway asked for none (`Accept-Encoding:
    /// identity`): its usage cannot be read, so token limits and quotas are charged the
    /// estimate, and a usage event hidden from a stream reaches the client. Said once per
    /// upstream: it is how the upstream (or a proxy in front of it) is set up.
    pub fn answered_compressed(&self, encoding: &HeaderValue) {
        if !self.compressed_said.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                upstream = %self.name,
                encoding = %String::from_utf8_lossy(encoding.as_bytes()),
                "the upstream compressed its answer although asked not to (Accept-Encoding: identity): its token usage cannot be read, so token limits and quotas are charged the estimate; turn compression off in front of it"
            );
        }
    }

    /// The cached health-check result, when this upstream has a check.
    pub fn health(&self) -> Option<&Arc<HealthState>> {
        self.health.as_ref()
    }

    /// Ready as far as this upstream is concerned: no check, or its last check passed.
    pub fn is_healthy(&self) -> bool {
        self.health
            .as_ref()
            .is_none_or(|h| h.status() == Status::Up)
    }

    /// The upstream's connection pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The `Host` header the upstream gets.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    pub fn serves(&self, model: &str) -> bool {
        self.config.models.is_match(model)
    }

    /// The origin-form target (`/v1/...?query`) the upstream gets for the client's URI.
    /// Without a base path the client's path and query are reused as they are (no copy, no
    /// re-parse).
    fn uri(&self, client: Uri) -> Result<Uri, GatewayError> {
        let pq = client.into_parts().path_and_query;
        let pq = if self.config.base_path.is_empty() {
            pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        } else {
            let pq = pq.as_ref().map_or("/", |pq| pq.as_str());
            let joined = format!("{}{}", self.config.base_path, pq);
            joined.try_into().map_err(|e| {
                GatewayError::InvalidRequest(format!("the request path is not valid: {e}"))
            })?
        };
        Ok(Uri::from(pq))
    }

    /// Sends `req` (already sanitized); the future ends with the response head, or when the
    /// first byte is late. [`Upstream::settle`] turns its output into the answer or the error.
    /// A plain future, not an `async fn`: one of those would hold the 264-byte request twice
    /// for the whole wait (the call's copy and the body's), in memory each request touches.
    /// `sent` is the moment it is sent, read once by the caller: the first-byte deadline
    /// counts from it, and moves on while a streamed body's `progress` does
    /// (`proxy::first_byte`).
    pub fn send(
        &self,
        req: Request<UpBody>,
        sent: std::time::Instant,
        progress: Option<Arc<AtomicU64>>,
    ) -> FirstByte<impl Future<Output = Sent> + '_> {
        FirstByte::new(
            self.pool.send(req, sent),
            tokio::time::Instant::from_std(sent),
            self.config.first_byte_timeout,
            progress,
        )
    }

    /// What [`Upstream::send`]'s wait came to.
    pub fn settle(
        &self,
        sent: Result<Sent, HeadLate>,
    ) -> Result<(Response<Incoming>, Lease), GatewayError> {
        match sent {
            Err(_) => Err(GatewayError::UpstreamTimeout(self.config.name.clone())),
            // hyper hands on a 101 as the answer; the gateway never asks an upstream to
            // switch protocols (it strips `Upgrade`), so one is an upstream that is broken.
            Ok(Ok((resp, _))) if resp.status().is_informational() => {
                tracing::warn!(upstream = %self.config.name, status = %resp.status(), "upstream answered with an interim status as its final answer");
                Err(GatewayError::UpstreamUnavailable(self.config.name.clone()))
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // The client's body failed on its way in: the client's fault, not the upstream's.
                if let Some(refusal) = GatewayError::client_body(&e) {
                    return Err(refusal);
                }
                tracing::warn!(upstream = %self.config.name, error = %error_chain(&e), "upstream request failed");
                Err(GatewayError::UpstreamUnavailable(self.config.name.clone()))
            }
        }
    }
}

pub(crate) fn error_chain(e: &SendError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the gateway adds to a forwarded request.
pub struct ForwardInfo<'a> {
    /// The client's address, as `x-forwarded-for` carries it.
    pub forwarded_for: &'a HeaderValue,
    /// The credential the client presented: no header carrying it goes upstream.
    pub credential: &'a str,
    /// The gateway's key prefix: no header holding any key of this gateway goes upstream.
    pub prefix: &'a str,
    pub https: bool,
    pub key_id: &'a KeyId,
    pub request_id: &'a HeaderValue,
}

/// Turns the client's request into the upstream's.
pub fn upstream_request(
    upstream: &Upstream,
    parts: http::request::Parts,
    body: UpBody,
    info: &ForwardInfo<'_>,
) -> Result<Request<UpBody>, GatewayError> {
    let uri = upstream.uri(parts.uri)?;
    let mut headers = parts.headers;
    headers::sanitize_request(&mut headers, upstream.host.clone());
    headers::remove_keys(&mut headers, info.credential, info.prefix);
    // The answer is read on its way through (its `usage` is what token limits and quotas are
    // charged, a usage event the client did not ask for is hidden): a compressed one could
    // not be, so the client's `Accept-Encoding` (the OpenAI SDKs send gzip) does not go up.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(k) = &upstream.config.api_key {
        headers.insert(header::AUTHORIZATION, k.clone());
    }
    headers.insert(headers::X_FORWARDED_FOR, info.forwarded_for.clone());
    headers.insert(
        headers::X_FORWARDED_PROTO,
        HeaderValue::from_static(if info.https { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_bytes(info.key_id.as_bytes()) {
        headers.insert(headers::X_KEYGATE_KEY_ID, v);
    }
    headers.insert(headers::X_REQUEST_ID, info.request_id.clone());
    // A body the gateway read (and may have rewritten) goes up with its own exact length.
    if let Some(n) = body.exact_len() {
        if n > 0 || headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> UpstreamConfig {
        let toml = format!("[[upstream]]\nname = \"u\"\nurl = \"{url}\"\nmodels = [\"*\"]\n");
        crate::config::Config::parse(&toml, None)
            .unwrap()
            .upstreams
            .remove(0)
    }

    #[test]
    fn host_header_omits_only_the_default_port() {
        let host = |url| host_header(&upstream(url));
        assert_eq!(host("http://127.0.0.1:8000"), "127.0.0.1:8000");
        assert_eq!(host("http://vllm.internal:80"), "vllm.internal");
        assert_eq!(host("https://gpu.example.com:443/v1"), "gpu.example.com");
        assert_eq!(host("https://gpu.example.com:8443"), "gpu.example.com:8443");
        assert_eq!(host("http://vllm.internal"), "vllm.internal");
    }
}
