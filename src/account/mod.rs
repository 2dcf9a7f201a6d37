//! Stage 6 of a request: what it used and how it went, settled once when its answer ends.
//!
//! The request's `RequestRecord` (`record`) travels with its answer's body and is dropped when the
//! client has the last byte, or has gone away: then the key's token reservation is settled,
//! its usage counted (atomics in the key's runtime state, no lock on the request path), the
//! metrics recorded and the access line written (`access_log`). Token counts come from the
//! upstream's own `usage`, read as the answer streams past (`scanner`).

pub mod access_log;
mod record;
pub mod scanner;

pub use record::{RequestRecord, TokenUsage, CLIENT_CLOSED};

use crate::limit::Used;
use crate::ops::metrics::RequestSample;
use std::sync::atomic::Ordering;

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
                Some(TokenUsage::Estimated(t)) => Used::Estimated(t.prompt + t.completion),
                Some(TokenUsage::Reported(t)) => Used::Reported(t.prompt + t.completion),
                None if (200..300).contains(&self.status) => Used::Reservation,
                None => Used::Nothing,
            };
            charge.settle(used);
        }
        if let Some(k) = &self.key {
            let usage = &k.state().usage;
            usage.record_status(self.status);
            if let Some(t) = self.tokens {
                usage.add_tokens(t.tokens(), t.is_estimated());
            }
        }
        let total = self.started.elapsed();
        let added = self.added_latency.unwrap_or(total);
        let Some(gw) = self.gateway.take() else {
            return;
        };
        gw.metrics.record_request(&RequestSample {
            route: self.route,
            status: self.status,
            code: self.error_code,
            key_id: self.key.as_ref().map(|k| k.id.as_str()),
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
            let config = gw.config();
            if !self.probe || config.log.probes {
                access_log::write(log, self, total, added, &config.keys.prefix);
            }
        }
    }
}
