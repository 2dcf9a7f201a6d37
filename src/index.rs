//! The in-memory key index: SHA-256 → key, built off the request path from a validated key
//! file and published whole (see `state::Live`), so a request sees the old index or the new
//! one, never a mix.
//!
//! Each key's runtime parts (rate limiter, in-flight counter, usage counters) are carried from
//! the previous index by key id, so a reload neither resets limits nor loses usage.

use crate::account::KeyUsage;
use crate::config::LimitDefaults;
use crate::key::KeyHash;
use crate::limit::{InFlight, RateLimit, TokenBucket};
use crate::scope::Scopes;
use crate::store::{self, KeyFile, KeyRecord};
use crate::time::Timestamp;
use ahash::AHashMap;
use std::sync::Arc;

/// One key as the request path needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub scopes: Scopes,
    pub models: Option<globset::GlobSet>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub max_in_flight: u32,
    pub rate: Arc<RateLimit>,
    /// Tokens per minute, when the key or `[limits]` sets one.
    pub tokens: Option<Arc<TokenBucket>>,
    pub in_flight: Arc<InFlight>,
    pub usage: Arc<KeyUsage>,
}

impl KeyEntry {
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(model))
    }
}

/// Which of a key's secrets a hash is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    Current,
    /// Replaced by a rotation; works until the end of its grace period.
    Retired {
        valid_until: Timestamp,
    },
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: AHashMap<KeyHash, (Arc<KeyEntry>, Secret)>,
    by_id: AHashMap<Arc<str>, Arc<KeyEntry>>,
}

impl KeyIndex {
    /// Builds the index; `previous` lends its runtime state to keys that are still there.
    pub fn build(file: &KeyFile, limits: &LimitDefaults, previous: Option<&KeyIndex>) -> KeyIndex {
        let mut by_hash = AHashMap::with_capacity(file.keys.len());
        let mut by_id = AHashMap::with_capacity(file.keys.len());
        for rec in &file.keys {
            let old = previous.and_then(|p| p.by_id.get(rec.id.as_str()));
            let entry = Arc::new(entry(rec, limits, old.map(|e| &**e)));
            if let Some(h) = store::parse_hash(&rec.sha256) {
                by_hash.insert(h, (Arc::clone(&entry), Secret::Current));
            }
            for p in &rec.previous {
                if let Some(h) = store::parse_hash(&p.sha256) {
                    by_hash.insert(
                        h,
                        (
                            Arc::clone(&entry),
                            Secret::Retired {
                                valid_until: p.valid_until,
                            },
                        ),
                    );
                }
            }
            by_id.insert(Arc::clone(&entry.id), entry);
        }
        KeyIndex { by_hash, by_id }
    }

    pub fn lookup(&self, hash: &KeyHash) -> Option<&(Arc<KeyEntry>, Secret)> {
        self.by_hash.get(hash)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.by_id.values()
    }
}

fn entry(rec: &KeyRecord, limits: &LimitDefaults, old: Option<&KeyEntry>) -> KeyEntry {
    let per_minute = rec
        .limits
        .requests_per_minute
        .unwrap_or(limits.requests_per_minute);
    let burst = rec
        .limits
        .burst
        .or(rec.limits.requests_per_minute)
        .unwrap_or(limits.burst);
    let rate = match old {
        Some(o) if o.rate.per_minute == per_minute && o.rate.burst == burst => Arc::clone(&o.rate),
        _ => Arc::new(RateLimit::new(per_minute, burst)),
    };
    let tpm = rec.limits.tokens_per_minute.or(limits.tokens_per_minute);
    let tokens = tpm.map(|per_minute| match old.and_then(|o| o.tokens.as_ref()) {
        Some(t) if t.per_minute == per_minute => Arc::clone(t),
        _ => Arc::new(TokenBucket::new(per_minute)),
    });
    KeyEntry {
        id: Arc::from(rec.id.as_str()),
        name: Arc::from(rec.name.as_str()),
        scopes: rec.scopes(),
        // Validated on load; a pattern that fails to compile here allows nothing.
        models: crate::authorize::compile_allowlist(&rec.models)
            .unwrap_or_else(|_| Some(globset::GlobSet::empty())),
        expires_at: rec.expires_at,
        revoked_at: rec.revoked_at,
        max_in_flight: rec.limits.max_in_flight.unwrap_or(limits.max_in_flight),
        rate,
        tokens,
        in_flight: old.map_or_else(Default::default, |o| Arc::clone(&o.in_flight)),
        usage: old.map_or_else(Default::default, |o| Arc::clone(&o.usage)),
    }
}
