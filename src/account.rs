//! Stage 6 of a request: what each key used, read from the upstream's own `usage` as the
//! response streams past.
//!
//! Counters are atomics owned by the key's runtime state, so accounting takes no lock on the
//! request path. Token counts come from a scanner that watches the bytes for
//! `"prompt_tokens":N` and `"completion_tokens":N` without buffering the response: inside a
//! JSON string a quote is always escaped, so those byte sequences can only be real fields,
//! whether in a plain JSON answer or in the last SSE chunk of a stream.

use crate::time::Timestamp;
use memchr::memmem;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// Per-key counters, kept across key-file reloads by key id.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Unix seconds of the last authenticated request, 0 for never.
    pub last_used: AtomicU64,
}

/// A point-in-time copy for APIs and the state file.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UsageSnapshot {
    pub requests: u64,
    pub client_errors: u64,
    pub upstream_errors: u64,
    pub rate_limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default, rename = "last_used_at")]
    pub last_used: Option<Timestamp>,
}

impl KeyUsage {
    pub fn touch(&self, now: Timestamp) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now.0, Ordering::Relaxed);
    }

    /// Counts a finished answer by its status class.
    pub fn record_status(&self, status: u16) {
        let counter = match status {
            429 => &self.rate_limited,
            400..=499 => &self.client_errors,
            500..=599 => &self.upstream_errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_tokens(&self, t: Tokens) {
        self.prompt_tokens.fetch_add(t.prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(t.completion, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> UsageSnapshot {
        let last = self.last_used.load(Ordering::Relaxed);
        UsageSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            last_used: (last > 0).then_some(Timestamp(last)),
        }
    }

    /// Restores counters saved by an earlier run (added, so nothing counted since is lost).
    pub fn restore(&self, s: &UsageSnapshot) {
        self.requests.fetch_add(s.requests, Ordering::Relaxed);
        self.client_errors
            .fetch_add(s.client_errors, Ordering::Relaxed);
        self.upstream_errors
            .fetch_add(s.upstream_errors, Ordering::Relaxed);
        self.rate_limited
            .fetch_add(s.rate_limited, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(s.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(s.completion_tokens, Ordering::Relaxed);
        if let Some(t) = s.last_used {
            self.last_used.fetch_max(t.0, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

static PROMPT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"prompt_tokens\""));
static COMPLETION: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"completion_tokens\""));

/// How many bytes of one chunk are carried into the next, so a field split across two
/// chunks is still seen: the longest name, a colon, spaces and a 20-digit number.
const CARRY: usize = 48;

/// Finds the last `usage` token counts in a byte stream fed chunk by chunk.
#[derive(Debug, Default)]
pub struct UsageScanner {
    carry: Vec<u8>,
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl UsageScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.carry.is_empty() {
            self.scan(chunk);
        } else {
            // Only the seam needs joining: the carried tail plus the head of this chunk.
            let mut seam = std::mem::take(&mut self.carry);
            seam.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            self.scan(&seam);
            self.scan(chunk);
        }
        let tail = chunk.len().saturating_sub(CARRY);
        self.carry.clear();
        self.carry.extend_from_slice(&chunk[tail..]);
    }

    /// Takes the last complete counts in `hay`.
    fn scan(&mut self, hay: &[u8]) {
        if let Some(v) = last_number(&PROMPT, hay) {
            self.prompt = Some(v);
        }
        if let Some(v) = last_number(&COMPLETION, hay) {
            self.completion = Some(v);
        }
    }

    /// The counts seen, if the stream carried any.
    pub fn tokens(&self) -> Option<Tokens> {
        if self.prompt.is_none() && self.completion.is_none() {
            return None;
        }
        Some(Tokens {
            prompt: self.prompt.unwrap_or(0),
            completion: self.completion.unwrap_or(0),
        })
    }
}

/// The number after the last complete `"name": N` in `hay`.
fn last_number(finder: &memmem::Finder<'_>, hay: &[u8]) -> Option<u64> {
    let mut found = None;
    for pos in finder.find_iter(hay) {
        let rest = &hay[pos + finder.needle().len()..];
        let rest = trim_ws(rest);
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = trim_ws(rest);
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // A number that runs to the end of the chunk may continue in the next one.
        if digits == 0 || digits == rest.len() || digits > 19 {
            continue;
        }
        found = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
    }
    found
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Everything known about one request when its answer is done: settled once, on drop, so a
/// request that ends by error, by completion or by the client leaving is counted once.
pub struct Finish {
    pub request_id: http::HeaderValue,
    pub key: Option<crate::index::KeyRef>,
    pub method: http::Method,
    pub route: &'static str,
    pub model: Option<String>,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub started: std::time::Instant,
    /// Time from sending upstream to its response head.
    pub upstream_latency: Option<std::time::Duration>,
    /// Time the gateway itself spent before the response head left (all of it when nothing
    /// was forwarded).
    pub added_latency: Option<std::time::Duration>,
    pub upstream: Option<std::sync::Arc<str>>,
    pub tokens: Option<Tokens>,
    /// False when the stream broke or the client left before the end.
    pub complete: bool,
    /// The gateway-wide and the per-key in-flight slots, given back when this drops.
    pub capacity: Option<crate::limit::CapacityGuard>,
    pub slot: Option<crate::limit::Slot>,
    /// Tokens reserved before forwarding, settled against the real usage.
    pub token_charge: Option<crate::limit::TokenCharge>,
    /// Where the metrics and the access line go (absent in unit tests).
    pub gateway: Option<std::sync::Arc<crate::state::Gateway>>,
    /// `/healthz`, `/readyz`, a console file: no access line unless `[log] probes`.
    pub probe: bool,
    /// The peer's address.
    pub client_addr: Option<std::net::IpAddr>,
    /// The request's path and query (only the path is logged).
    pub path: Option<http::uri::PathAndQuery>,
    pub version: http::Version,
    pub user_agent: Option<http::HeaderValue>,
    /// Response body bytes handed to the client.
    pub bytes_sent: u64,
    /// Request body bytes read from the client, when the gateway read the body itself.
    pub bytes_received: u64,
    /// Request body bytes streamed upstream, counted as they pass.
    pub received_counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// The upstream's metric handles, when the request was forwarded.
    pub upstream_series: Option<std::sync::Arc<crate::metrics::UpstreamSeries>>,
    /// How the upstream's response stream failed, if it did.
    pub stream_error: Option<crate::metrics::UpstreamError>,
}

impl Finish {
    pub fn new(request_id: http::HeaderValue, method: http::Method) -> Finish {
        Finish {
            request_id,
            key: None,
            method,
            route: "-",
            model: None,
            status: 0,
            error_code: None,
            started: std::time::Instant::now(),
            upstream_latency: None,
            added_latency: None,
            upstream: None,
            tokens: None,
            complete: true,
            capacity: None,
            slot: None,
            token_charge: None,
            gateway: None,
            probe: false,
            client_addr: None,
            path: None,
            version: http::Version::HTTP_11,
            user_agent: None,
            bytes_sent: 0,
            bytes_received: 0,
            received_counter: None,
            upstream_series: None,
            stream_error: None,
        }
    }

    /// Request body bytes received, whichever way the body went.
    pub fn received(&self) -> u64 {
        self.received_counter
            .as_ref()
            .map_or(self.bytes_received, |c| c.load(Ordering::Relaxed))
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(charge) = self.token_charge.take() {
            let used = self.tokens.map(|t| t.prompt + t.completion);
            charge.settle(used, (200..300).contains(&self.status) && self.complete);
        }
        if let Some(k) = &self.key {
            let usage = &k.state().usage;
            usage.record_status(self.status);
            if let Some(t) = self.tokens {
                usage.add_tokens(t);
            }
        }
        let total = self.started.elapsed();
        let added = self.added_latency.unwrap_or(total);
        let Some(gw) = self.gateway.take() else {
            return;
        };
        gw.metrics.record_request(self, total, added);
        if let Some(log) = gw.logging.get() {
            let config = gw.config();
            if !self.probe || config.log.probes {
                log.access(self, total, added, &config.keys.prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_usage() {
        let mut s = UsageScanner::default();
        s.feed(br#"{"choices":[{"text":"\"prompt_tokens\": 99"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#);
        assert_eq!(
            s.tokens(),
            Some(Tokens {
                prompt: 12,
                completion: 7
            })
        );
    }

    #[test]
    fn split_across_chunks_at_every_point() {
        let body = br#"data: {"choices":[],"usage":{"prompt_tokens":123,"completion_tokens":4567}}

data: [DONE]

"#;
        for cut in 1..body.len() {
            let mut s = UsageScanner::default();
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(
                s.tokens(),
                Some(Tokens {
                    prompt: 123,
                    completion: 4567
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn no_usage() {
        let mut s = UsageScanner::default();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        assert_eq!(s.tokens(), None);
    }
}
