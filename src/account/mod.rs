//! Stage 6 of a request: what it used and how it went, settled once when its answer ends.
//!
//! The request's `RequestRecord` (`record`) travels with its answer's body and is dropped when the
//! client has the last byte, or has gone away: then the key's token reservation is settled,
//! its usage counted (atomics in the key's runtime state, no lock on the request path: the
//! lifetime totals, the pending hourly bucket of its model, its quota's tokens), the
//! metrics recorded and the access line written (`access_log`). Token counts come from the
//! upstream's own `usage`, read as the answer streams past (`scanner`).

pub mod access_log;
pub mod answer_model;
mod record;
pub mod relayed;
pub mod scanner;

pub use record::{Added, RequestRecord, TokenUsage, CLIENT_CLOSED};

/// The error code of a request the gateway cut because its drain ran out at shutdown.
pub const DRAIN_TIMEOUT: &str = "drain_timeout";

use crate::auth::secrets::looks_like_key;
use crate::error::INSUFFICIENT_QUOTA;
use crate::keys::usage::{Settled, Tokens};
use crate::limit::Used;
use crate::ops::metrics::RequestSample;
use std::sync::atomic::Ordering;

impl RequestRecord {
    /// The model usage is counted under: the request's, when the gateway read it, else the
    /// one the upstream's answer names, else none (`""`). An answer's model shaped like a key
    /// was dropped at settlement (`Drop`), before anything reads this.
    fn usage_model(&self) -> &str {
        self.model
            .as_deref()
            .or(self.answer_model.as_deref())
            .unwrap_or("")
    }
}

/// The settlement, once: when the answer's body ends, or the client leaves.
impl Drop for RequestRecord {
    fn drop(&mut self) {
        if let Some(c) = &self.received {
            self.bytes_received = c.load(Ordering::Relaxed);
        }
        if self.tokens.is_none() {
            self.tokens = self.estimate().map(TokenUsage::Estimated);
        }
        if let Some(charge) = self.token_charge.take() {
            let used = match self.tokens {
                Some(TokenUsage::Estimated(t)) => Used::Estimated(t.total()),
                Some(TokenUsage::Reported(t)) => Used::Reported(t.total()),
                None if (200..300).contains(&self.status) => Used::Reservation,
                None => Used::Nothing,
            };
            charge.settle(used);
        }
        // A successful answer that reported no usage (an upstream that ignores
        // `include_usage`) is charged its estimate, as the minute's reservation stands:
        // finishing a stream is never cheaper than leaving it. The key's usage, the metrics
        // and the access line show that estimate, as the quota counts it.
        if self.tokens.is_none() {
            self.tokens = self.reserved_estimate().map(TokenUsage::Estimated);
        }
        let gw = self.gateway.take();
        // Cut by the end of the drain, not left by its client: said so in the log and counted.
        if !self.complete
            && self.error_code.is_none()
            && self.stream_error.is_none()
            && gw
                .as_ref()
                .is_some_and(|g| g.drain_over.load(Ordering::Relaxed))
        {
            self.error_code = Some(DRAIN_TIMEOUT);
        }
        // Read once, for the usage model and the access line.
        let config = gw.as_ref().map(|gw| gw.config());
        // An upstream that echoes a key of ours as its model name must not get it counted or
        // logged; with no configuration to say what a key looks like, the answer's model is
        // not used at all.
        if let Some(m) = &self.answer_model {
            if config
                .as_ref()
                .is_none_or(|c| looks_like_key(m.as_bytes(), &c.keys.prefix))
            {
                self.answer_model = None;
            }
        }
        if let Some(k) = &self.key {
            let state = k.state();
            let tokens = self.tokens.map(TokenUsage::tokens);
            state.usage.settle(Settled {
                model: self.usage_model(),
                status: self.status,
                quota_refused: self.error_code == Some(INSUFFICIENT_QUOTA),
                tokens,
                estimated: self.tokens.is_some_and(TokenUsage::is_estimated),
            });
            state.quota.release(self.quota_held);
            // A token quota counts what was used, estimates included.
            if let Some(t) = tokens.map(Tokens::total) {
                state.quota.add_tokens(t);
            }
        }
        let ended = self.ended.unwrap_or_else(std::time::Instant::now);
        let total = ended.saturating_duration_since(self.started);
        let added = self.added.of(total);
        let (Some(gw), Some(config)) = (gw, config) else {
            return;
        };
        gw.metrics.record_request(&RequestSample {
            route: self.route,
            status: self.status,
            // A stream the upstream broke after its 200 head is counted with why, as the
            // access line says it (a revoke's cut is already the request's error code).
            code: self.error_code.or(self.stream_error.map(|e| e.code())),
            key_id: self.key.as_ref().map(|k| &k.id),
            total,
            added,
            upstream: self
                .upstream_series
                .as_deref()
                .map(|s| (s, self.upstream_latency)),
            stream_error: self.stream_error,
            tokens: self.tokens.map(TokenUsage::tokens),
        });
        if let Some(log) = gw.logging.get() {
            if !self.probe || config.log.probes {
                access_log::write(log, self, total, added, &config.keys.prefix);
            }
        }
    }
}
