//! A key's usage counters: atomics in its runtime state (`KeyState`), so accounting takes no
//! lock on the request path, and the snapshot the API, the CLI and the state file show.

use crate::time::Timestamp;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-key counters, kept across key-file reloads by key id.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Of `prompt_tokens + completion_tokens`, how many the gateway estimated (a stream cut
    /// short before the upstream reported its usage) rather than read from the upstream.
    pub estimated_tokens: AtomicU64,
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
    /// Of the tokens above, how many are the gateway's estimates (see `KeyUsage`).
    #[serde(default)]
    pub estimated_tokens: u64,
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

    /// Adds a request's tokens; `estimated` when the gateway counted them, not the upstream.
    pub fn add_tokens(&self, t: Tokens, estimated: bool) {
        self.prompt_tokens.fetch_add(t.prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(t.completion, Ordering::Relaxed);
        if estimated {
            self.estimated_tokens
                .fetch_add(t.prompt + t.completion, Ordering::Relaxed);
        }
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
            estimated_tokens: self.estimated_tokens.load(Ordering::Relaxed),
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
        self.estimated_tokens
            .fetch_add(s.estimated_tokens, Ordering::Relaxed);
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
