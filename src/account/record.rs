//! The record of one request: everything known about it when its answer is done, filled in
//! by the stages as they run and settled once, on drop (see `account`).

use crate::account::relayed::CHARS_PER_TOKEN;
use crate::gateway::Gateway;
use crate::keys::index::KeyRef;
use crate::keys::usage::Tokens;
use crate::limit::inflight::CapacityGuard;
use crate::limit::{Slot, TokenCharge};
use crate::ops::metrics::{UpstreamError, UpstreamSeries};
use crate::time::Timestamp;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Everything known about one request when its answer is done: settled once, on drop, so a
/// request that ends by error, by completion or by the client leaving is counted once.
pub struct RequestRecord {
    pub request_id: http::HeaderValue,
    /// The client's address: the peer's, or behind a trusted proxy the forwarded one.
    pub client: std::net::IpAddr,
    pub key: Option<KeyRef>,
    pub method: http::Method,
    pub route: &'static str,
    pub model: Option<String>,
    /// The model the upstream's answer names (`answer_model::find`): usage is counted under
    /// it when the request's own model was not read (`model` is `None`).
    pub answer_model: Option<String>,
    pub status: u16,
    pub error_code: Option<&'static str>,
    /// When the request began: the head was read. The request's rate cell is taken at
    /// this moment too (`limit::check_rate`).
    pub started: std::time::Instant,
    /// When its answer ended, if the body that ended it said so (else the record reads the
    /// clock when it is dropped).
    pub ended: Option<std::time::Instant>,
    /// Time from sending upstream to its response head.
    pub upstream_latency: Option<std::time::Duration>,
    /// Time the gateway itself spent before the response head left.
    pub added: Added,
    pub upstream: Option<std::sync::Arc<str>>,
    /// The tokens the request used, and who counted them.
    pub tokens: Option<TokenUsage>,
    /// Completion tokens estimated from the text an event stream relayed (`ContentCounter`);
    /// `None` when the answer was not an event stream.
    pub relayed_tokens: Option<u64>,
    /// False when the stream broke or the client left before the end.
    pub complete: bool,
    /// Response body bytes handed to the client's connection (the client may not have read
    /// the last of them if it left).
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Counts a request body streamed upstream as it goes (read into `bytes_received` at the
    /// end); `None` when the gateway read the body itself.
    pub received: Option<std::sync::Arc<AtomicU64>>,
    /// The gateway-wide and the per-key in-flight slots, given back when this drops.
    pub capacity: Option<CapacityGuard>,
    pub slot: Option<Slot>,
    /// Tokens reserved before forwarding, settled against the real usage.
    pub token_charge: Option<TokenCharge>,
    /// The request's token estimate (its completion budget and prompt), for a key that
    /// counts tokens: what a token quota is charged for an answer that reports no usage.
    pub estimated_tokens: Option<u64>,
    /// What the request holds of its key's token quotas while it runs (its estimate, for a
    /// key with one): given back when it ends.
    pub quota_held: u64,
    /// Where the metrics and the access line go (absent in unit tests).
    pub gateway: Option<Arc<Gateway>>,
    /// `/healthz`, `/readyz`, a console file: no access line unless `[log] probes`.
    pub probe: bool,
    /// The request's path and query (only the path is logged).
    pub path: Option<http::uri::PathAndQuery>,
    pub version: http::Version,
    pub user_agent: Option<http::HeaderValue>,
    /// The upstream's metric handles, when the request was forwarded.
    pub upstream_series: Option<Arc<UpstreamSeries>>,
    /// How the upstream's response stream failed, if it did.
    pub stream_error: Option<UpstreamError>,
}

/// The time the gateway itself added to a request (`keygate_added_latency_seconds`,
/// `added_us`): never a wait on the upstream or on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// All of the request's time: nothing was forwarded, nobody was waited on.
    All,
    /// Measured around the upstream: before it was sent, and after its head came (a request
    /// that ended waiting for the head, timed out or left, added the time before).
    Measured(std::time::Duration),
    /// The request ended waiting on its client (a body that did not come, a client that
    /// left before it was forwarded): how much was the gateway's is not known.
    Unknown,
}

impl Added {
    /// The time, given the request's whole `total`; `None` when unknown.
    pub fn of(self, total: std::time::Duration) -> Option<std::time::Duration> {
        match self {
            Added::All => Some(total),
            Added::Measured(d) => Some(d),
            Added::Unknown => None,
        }
    }
}

/// A request's token usage, and who counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUsage {
    /// The upstream's own `usage`.
    Reported(Tokens),
    /// The gateway's estimate, for a request that ended before the upstream reported its
    /// usage (see `RequestRecord::estimate`).
    Estimated(Tokens),
}

impl TokenUsage {
    pub fn tokens(self) -> Tokens {
        match self {
            TokenUsage::Reported(t) | TokenUsage::Estimated(t) => t,
        }
    }

    pub fn is_estimated(self) -> bool {
        matches!(self, TokenUsage::Estimated(_))
    }
}

/// The status of a request whose client left before its answer's head (nginx's "client
/// closed request"). A client that leaves during the body keeps the status it was sent,
/// with `complete = false`, as nginx logs it.
pub const CLIENT_CLOSED: u16 = 499;

impl RequestRecord {
    /// The record of a request that has just arrived on `gw` from `client`, with the request
    /// facts the access line logs.
    pub fn begin(
        gw: &Arc<Gateway>,
        req: &http::request::Parts,
        request_id: http::HeaderValue,
        client: std::net::IpAddr,
    ) -> Box<RequestRecord> {
        let mut record = Box::new(RequestRecord::new(request_id, req.method.clone(), client));
        record.gateway = Some(Arc::clone(gw));
        record.path = req.uri.path_and_query().cloned();
        record.version = req.version;
        record.user_agent = req.headers.get(http::header::USER_AGENT).cloned();
        record
    }

    /// Counts the request against its key (usage, last used), and keeps the key for the
    /// access line and the settlement.
    pub fn count_use(&mut self, key: &KeyRef, now: Timestamp) {
        self.key = Some(key.clone());
        key.state().usage.touch(now);
    }

    /// A request not answered yet: should it be dropped as it is, its client left.
    pub fn new(
        request_id: http::HeaderValue,
        method: http::Method,
        client: std::net::IpAddr,
    ) -> RequestRecord {
        RequestRecord {
            request_id,
            client,
            key: None,
            method,
            route: "-",
            model: None,
            answer_model: None,
            status: CLIENT_CLOSED,
            error_code: None,
            started: std::time::Instant::now(),
            ended: None,
            upstream_latency: None,
            added: Added::All,
            upstream: None,
            tokens: None,
            relayed_tokens: None,
            complete: false,
            bytes_sent: 0,
            bytes_received: 0,
            received: None,
            capacity: None,
            slot: None,
            token_charge: None,
            estimated_tokens: None,
            quota_held: 0,
            gateway: None,
            probe: false,
            path: None,
            version: http::Version::HTTP_11,
            user_agent: None,
            upstream_series: None,
            stream_error: None,
        }
    }

    /// What a request that ended without the upstream's usage is known to have used, so
    /// that leaving early is never free: an event stream cut short (client gone, upstream
    /// broken, key revoked) used its prompt and the text it relayed; a request whose client
    /// left after it was forwarded, before the head, used its prompt. The prompt is
    /// estimated as the reservation does: one token per 4 bytes of request body.
    pub(crate) fn estimate(&self) -> Option<Tokens> {
        let prompt = self.bytes_received / CHARS_PER_TOKEN;
        let t = match self.relayed_tokens {
            Some(relayed) if (200..300).contains(&self.status) && !self.complete => Tokens {
                prompt,
                completion: relayed,
            },
            _ if self.status == CLIENT_CLOSED
                && self.upstream.is_some()
                && self.upstream_latency.is_none() =>
            {
                Tokens {
                    prompt,
                    completion: 0,
                }
            }
            _ => return None,
        };
        (t.total() > 0).then_some(t)
    }

    /// What a successful answer that reported no usage is charged: the reservation's
    /// estimate (`estimated_tokens`), its prompt part one token per 4 bytes of request body
    /// as the reservation counted it, the rest its completion budget.
    pub(crate) fn reserved_estimate(&self) -> Option<Tokens> {
        let reserved = self
            .estimated_tokens
            .filter(|_| (200..300).contains(&self.status))?;
        let prompt = (self.bytes_received / CHARS_PER_TOKEN).min(reserved);
        Some(Tokens {
            prompt,
            completion: reserved - prompt,
        })
    }
}
