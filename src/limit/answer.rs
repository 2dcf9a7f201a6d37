//! The one place that writes what an answer says about limits: `x-ratelimit-*` for the key's
//! request rate and tokens once it is authenticated, on every answer (a refusal included), and
//! `retry-after` / `retry-after-ms` on every refusal that says when to retry (the 429s, and the
//! 503s that are over in a moment). OpenAI's names and forms, so clients' retry logic works.
//!
//! The header is read here too, from an answer the gateway itself got: a webhook receiver's
//! (`read_retry_after`, for `ops::notify`).
//!
//! A quota refusal (429 `insufficient_quota`) is the exception: its reset can be hours away,
//! so it carries `x-should-retry: false` (the OpenAI SDKs then do not retry) and the time
//! to its reset in `x-ratelimit-reset-quota`, but no `retry-after`, which would have clients
//! that honour it sleep until the next day or month.

use crate::limit::rate::RateInfo;
use crate::limit::tokens::TokenInfo;
use crate::time::OpenAiDuration;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use std::time::Duration;

// Parsed once: a `&str` name is parsed and hashed again on every use.
pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
pub const RESET_QUOTA: HeaderName = HeaderName::from_static("x-ratelimit-reset-quota");
/// The OpenAI SDKs' own retry switch: `false` stops their automatic retries.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// What the answer to one request reports about its limits, filled in as the limit stage
/// runs: nothing before the caller is authenticated.
#[derive(Debug, Default)]
pub struct LimitHeaders {
    pub rate: Option<RateInfo>,
    pub tokens: Option<TokenInfo>,
    /// A quota refusal: how long until the quota resets.
    pub quota: Option<Duration>,
}

impl LimitHeaders {
    /// Writes every limit header of an answer: `retry_after` is the refusal's hint, if the
    /// answer is one that has it (`GatewayError::retry_after`).
    pub fn write(&self, h: &mut HeaderMap, retry_after: Option<Duration>) {
        if let Some(d) = retry_after {
            // Round up: a client that waits the whole seconds must not be refused again.
            let secs = d.as_millis().div_ceil(1000).max(1);
            h.insert(RETRY_AFTER, number(secs as u64));
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            h.insert(RETRY_AFTER_MS, number(ms));
        }
        if let Some(r) = &self.rate {
            h.insert(LIMIT_REQUESTS, number(u64::from(r.limit)));
            h.insert(REMAINING_REQUESTS, number(u64::from(r.remaining)));
            if let Some(v) = reset_value(r.reset) {
                h.insert(RESET_REQUESTS, v);
            }
        }
        if let Some(reset) = self.quota {
            h.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
            if let Some(v) = reset_value(reset) {
                h.insert(RESET_QUOTA, v);
            }
        }
        if let Some(t) = &self.tokens {
            h.insert(LIMIT_TOKENS, number(t.limit));
            h.insert(REMAINING_TOKENS, number(t.remaining));
            if let Some(v) = reset_value(t.reset) {
                h.insert(RESET_TOKENS, v);
            }
        }
    }
}

/// The wait a `retry-after` in an answer the gateway got asks for: whole seconds or an HTTP
/// date (a date in the past is no wait). `None` without one that can be read.
pub fn read_retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A number as a header value in one allocation of its exact size (`HeaderValue::from(u64)`
/// makes two: a buffer of the widest number's size, then its shrunk copy).
pub fn number(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or_else(|_| HeaderValue::from(n))
}

/// A reset time in OpenAI's form (`20ms`, `1.5s`, `6m0s`), formatted on the stack.
fn reset_value(d: Duration) -> Option<HeaderValue> {
    HeaderValue::from_bytes(OpenAiDuration(d).text().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::rate::Verdict;

    #[test]
    fn every_limit_header_from_one_place() {
        let limits = LimitHeaders {
            rate: Some(RateInfo {
                limit: 2,
                remaining: 0,
                reset: Duration::from_millis(1_050),
                verdict: Verdict::Allowed,
            }),
            tokens: None,
            quota: None,
        };
        let mut h = HeaderMap::new();
        limits.write(&mut h, Some(Duration::from_millis(1_001)));
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "1.05s");
        assert_eq!(h["retry-after"], "2", "rounded up");
        assert_eq!(h["retry-after-ms"], "1001");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
        let mut h = HeaderMap::new();
        LimitHeaders::default().write(&mut h, None);
        assert!(h.is_empty(), "nothing known, nothing written");
        let quota = LimitHeaders {
            quota: Some(Duration::from_secs(3 * 3600 + 5)),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        quota.write(&mut h, None);
        assert_eq!(h["x-should-retry"], "false");
        assert_eq!(h["x-ratelimit-reset-quota"], "3h0m5s");
        assert!(!h.contains_key("retry-after"));
    }

    #[test]
    fn a_retry_after_is_read_in_seconds_or_as_a_date() {
        let mut h = HeaderMap::new();
        assert_eq!(read_retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(read_retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::try_from(httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = read_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(read_retry_after(&h), Some(Duration::ZERO), "in the past");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(read_retry_after(&h), None);
    }
}
