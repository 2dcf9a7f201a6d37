//! A key's usage counters: atomics in its runtime state (`KeyState`), so accounting takes no
//! lock on the request path, and the snapshot the API, the CLI and the state file show.
//!
//! Two kinds: lifetime totals (`KeyUsage`'s own fields, what a key's `usage` shows) and, per
//! model, what has not yet been drained into the hourly buckets (`ModelTable`; the flusher in
//! `usage` drains it every second, off the request path).

pub use crate::keys::tokens::Tokens;
use crate::time::Timestamp;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Per-key counters, kept across key-file reloads by key id.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Refused for a quota (429 `insufficient_quota`).
    pub quota_refused: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Of `prompt_tokens + completion_tokens`, how many the gateway estimated (a stream cut
    /// short before the upstream reported its usage) rather than read from the upstream.
    pub estimated_tokens: AtomicU64,
    /// Unix seconds of the last authenticated request, 0 for never.
    pub last_used: AtomicU64,
    /// Per model, what the hourly buckets have not received yet.
    pub pending: ModelTable,
}

/// A point-in-time copy for APIs and the state file.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UsageSnapshot {
    pub requests: u64,
    pub client_errors: u64,
    pub upstream_errors: u64,
    pub rate_limited: u64,
    #[serde(default)]
    pub quota_refused: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the tokens above, how many are the gateway's estimates (see `KeyUsage`).
    #[serde(default)]
    pub estimated_tokens: u64,
    #[serde(default, rename = "last_used_at")]
    pub last_used: Option<Timestamp>,
}

impl UsageSnapshot {
    /// Lifetime totals kept as bucket counts (cluster mode's, in Redis).
    pub fn of(c: &Counts, last_used: Option<Timestamp>) -> UsageSnapshot {
        UsageSnapshot {
            requests: c.requests,
            client_errors: c.client_errors,
            upstream_errors: c.upstream_errors,
            rate_limited: c.rate_limited,
            quota_refused: c.quota_refused,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            estimated_tokens: c.estimated_tokens,
            last_used,
        }
    }
}

impl KeyUsage {
    pub fn touch(&self, now: Timestamp) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now.0, Ordering::Relaxed);
    }

    /// Counts a finished answer by its status class.
    pub fn record_status(&self, status: u16) {
        self.count_status(status, false);
    }

    fn count_status(&self, status: u16, quota_refused: bool) {
        let counter = match Counter::of_status(status, quota_refused) {
            Some(Counter::QuotaRefused) => &self.quota_refused,
            Some(Counter::RateLimited) => &self.rate_limited,
            Some(Counter::ClientErrors) => &self.client_errors,
            Some(Counter::UpstreamErrors) => &self.upstream_errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished request: in the lifetime totals (its `requests` were counted when
    /// it was authenticated, by `touch`) and in its model's pending bucket. Lock-free and, once
    /// the key has used the model, without allocation.
    pub fn settle(&self, s: Settled<'_>) {
        self.count_status(s.status, s.quota_refused);
        if let Some(t) = s.tokens {
            self.add_tokens(t, s.estimated);
        }
        self.pending.with(s.model, |m| {
            m.add(Counter::Requests, 1);
            if let Some(c) = Counter::of_status(s.status, s.quota_refused) {
                m.add(c, 1);
            }
            if let Some(t) = s.tokens {
                m.add(Counter::PromptTokens, t.prompt);
                m.add(Counter::CompletionTokens, t.completion);
                if s.estimated {
                    m.add(Counter::EstimatedTokens, t.total());
                }
            }
        });
    }

    /// Adds a request's tokens; `estimated` when the gateway counted them, not the upstream.
    pub fn add_tokens(&self, t: Tokens, estimated: bool) {
        self.prompt_tokens.fetch_add(t.prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(t.completion, Ordering::Relaxed);
        if estimated {
            self.estimated_tokens
                .fetch_add(t.total(), Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> UsageSnapshot {
        let last = self.last_used.load(Ordering::Relaxed);
        UsageSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            quota_refused: self.quota_refused.load(Ordering::Relaxed),
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
        self.quota_refused
            .fetch_add(s.quota_refused, Ordering::Relaxed);
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

/// One counter of an hourly usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Requests,
    PromptTokens,
    CompletionTokens,
    EstimatedTokens,
    ClientErrors,
    UpstreamErrors,
    RateLimited,
    QuotaRefused,
}

impl Counter {
    /// Every counter, in the order of `Counts::to_array`.
    pub const ALL: [Counter; 8] = [
        Counter::Requests,
        Counter::PromptTokens,
        Counter::CompletionTokens,
        Counter::EstimatedTokens,
        Counter::ClientErrors,
        Counter::UpstreamErrors,
        Counter::RateLimited,
        Counter::QuotaRefused,
    ];

    /// As the API, the state file and Redis name it.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Requests => "requests",
            Counter::PromptTokens => "prompt_tokens",
            Counter::CompletionTokens => "completion_tokens",
            Counter::EstimatedTokens => "estimated_tokens",
            Counter::ClientErrors => "client_errors",
            Counter::UpstreamErrors => "upstream_errors",
            Counter::RateLimited => "rate_limited",
            Counter::QuotaRefused => "quota_refused",
        }
    }

    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Which counter a finished answer's status counts in, besides `requests`:
    /// `quota_refused` for a quota refusal, else by status class.
    pub fn of_status(status: u16, quota_refused: bool) -> Option<Counter> {
        match status {
            429 if quota_refused => Some(Counter::QuotaRefused),
            429 => Some(Counter::RateLimited),
            400..=499 => Some(Counter::ClientErrors),
            500..=599 => Some(Counter::UpstreamErrors),
            _ => None,
        }
    }
}

/// The counters of one usage bucket (an hour of one key and one model, or any sum of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated_tokens: u64,
    pub client_errors: u64,
    pub upstream_errors: u64,
    pub rate_limited: u64,
    pub quota_refused: u64,
}

impl Counts {
    pub fn to_array(&self) -> [u64; 8] {
        [
            self.requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.estimated_tokens,
            self.client_errors,
            self.upstream_errors,
            self.rate_limited,
            self.quota_refused,
        ]
    }

    pub fn from_array(a: [u64; 8]) -> Counts {
        let [requests, prompt_tokens, completion_tokens, estimated_tokens, client_errors, upstream_errors, rate_limited, quota_refused] =
            a;
        Counts {
            requests,
            prompt_tokens,
            completion_tokens,
            estimated_tokens,
            client_errors,
            upstream_errors,
            rate_limited,
            quota_refused,
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.to_array()[c as usize]
    }

    pub fn add(&mut self, other: &Counts) {
        let mut a = self.to_array();
        for (x, y) in a.iter_mut().zip(other.to_array()) {
            *x = x.saturating_add(y);
        }
        *self = Counts::from_array(a);
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// Tokens as a quota counts them: prompt and completion, estimates included.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A key's usage of one model since the flusher last drained it (`usage::Usage::flush`).
#[derive(Debug)]
pub struct ModelUsage {
    /// The model, `""` for a request that named none.
    pub model: Arc<str>,
    counts: [AtomicU64; 8],
}

impl ModelUsage {
    fn new(model: Arc<str>) -> ModelUsage {
        ModelUsage {
            model,
            counts: Default::default(),
        }
    }

    fn add(&self, c: Counter, n: u64) {
        if n > 0 {
            self.counts[c as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// What has been counted and not drained yet.
    pub fn pending(&self) -> Counts {
        Counts::from_array(std::array::from_fn(|i| {
            self.counts[i].load(Ordering::Relaxed)
        }))
    }

    /// Takes `drained` (read by `pending` earlier) off, once it is stored: what was counted
    /// since stays.
    pub fn drained(&self, drained: &Counts) {
        for (c, n) in self.counts.iter().zip(drained.to_array()) {
            if n > 0 {
                c.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }
}

/// At most this many models per key get their own bucket; the rest share `OTHER_MODEL`, so a
/// client inventing model names cannot grow memory or the store without bound.
pub const MAX_MODELS: usize = 32;
/// Longer model names share `OTHER_MODEL` too.
pub const MAX_MODEL_LEN: usize = 256;
/// The bucket of models past `MAX_MODELS` (or longer than `MAX_MODEL_LEN`).
pub const OTHER_MODEL: &str = "(other)";

/// A key's per-model usage not yet drained: a short list that is read without a lock (one
/// `ArcSwap` load and a scan of a few names) and copied when a model is first seen, so a
/// request takes no lock and allocates nothing once its key has used its model before.
#[derive(Debug, Default)]
pub struct ModelTable {
    models: ArcSwap<Vec<Arc<ModelUsage>>>,
    /// Serialises additions (rare: once per model per key).
    grow: Mutex<()>,
}

impl ModelTable {
    /// Counts into `model`'s entry, creating it on first use.
    fn with(&self, model: &str, f: impl FnOnce(&ModelUsage)) {
        let model = if model.len() > MAX_MODEL_LEN {
            OTHER_MODEL
        } else {
            model
        };
        if let Some(m) = self.models.load().iter().find(|m| &*m.model == model) {
            return f(m);
        }
        let _one = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.models.load_full();
        if let Some(m) = now.iter().find(|m| &*m.model == model) {
            return f(m);
        }
        let name = if now.len() >= MAX_MODELS {
            OTHER_MODEL
        } else {
            model
        };
        if let Some(m) = now.iter().find(|m| &*m.model == name) {
            return f(m);
        }
        let m = Arc::new(ModelUsage::new(Arc::from(name)));
        let mut next = Vec::with_capacity(now.len() + 1);
        next.extend(now.iter().cloned());
        next.push(Arc::clone(&m));
        self.models.store(Arc::new(next));
        f(&m)
    }

    /// Every model this key has used since start (drained or not).
    pub fn models(&self) -> Arc<Vec<Arc<ModelUsage>>> {
        self.models.load_full()
    }
}

/// One finished request, as its key's usage counts it.
#[derive(Debug, Clone, Copy)]
pub struct Settled<'a> {
    /// The model the request named, or its answer did; `""` for none.
    pub model: &'a str,
    pub status: u16,
    /// Refused for a quota (429 `insufficient_quota`), not a rate.
    pub quota_refused: bool,
    pub tokens: Option<Tokens>,
    /// The tokens are the gateway's estimate, not the upstream's report.
    pub estimated: bool,
}
