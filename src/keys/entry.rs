//! One key as the request path sees it: its id and name stored inline (a million keys are a
//! few large arrays, not a million small allocations), and its static facts worked out once,
//! when the index is built.

use crate::config::LimitDefaults;
use crate::keys::models;
use crate::keys::record::{KeyQuotas, KeyRecord};
use crate::keys::scope::Scopes;
use crate::keys::state::{Ended, KeyState};
use crate::limit::rate::Quota;
use crate::time::Timestamp;
use std::sync::{Arc, OnceLock};

/// A key id (`key_` + 16 letters or digits, checked when the file is validated), stored
/// inline so a million of them need no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 20]);

impl KeyId {
    pub fn new(id: &str) -> Option<KeyId> {
        let b: [u8; 20] = id.as_bytes().try_into().ok()?;
        b.is_ascii().then_some(KeyId(b))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("key_invalid")
    }
}

impl std::ops::Deref for KeyId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's name: up to 23 bytes inline, longer ones on the heap. Most names fit, so an
/// index of a million keys is a few large arrays, not a million small allocations.
#[derive(Clone)]
pub enum KeyName {
    Inline { len: u8, bytes: [u8; 23] },
    Heap(Box<str>),
}

impl KeyName {
    pub fn new(name: &str) -> KeyName {
        let mut bytes = [0u8; 23];
        match bytes.get_mut(..name.len()) {
            Some(dst) => {
                dst.copy_from_slice(name.as_bytes());
                KeyName::Inline {
                    len: name.len() as u8,
                    bytes,
                }
            }
            None => KeyName::Heap(name.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` at a char boundary (the whole string).
            KeyName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or("?")
            }
            KeyName::Heap(s) => s,
        }
    }
}

impl std::ops::Deref for KeyName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One key as the request path needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: KeyId,
    pub scopes: Scopes,
    pub name: KeyName,
    pub models: Option<Box<globset::GlobSet>>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// Disabled keys are refused (401 `disabled_api_key`) until enabled again.
    pub disabled_at: Option<Timestamp>,
    /// Daily and monthly allowances; `None` for the many keys with none (8 bytes a key).
    pub quotas: Option<Box<KeyQuotas>>,
    pub max_in_flight: u32,
    pub rate: Quota,
    /// Tokens per minute, 0 when neither the key nor `[limits]` sets one.
    tokens_per_minute: u64,
    pub(crate) state: OnceLock<Arc<KeyState>>,
}

impl KeyEntry {
    /// Why the key's running requests must end now: revoked (at or before `now`) or
    /// disabled. `None` for a key that may run.
    pub fn ended(&self, now: Timestamp) -> Option<Ended> {
        if self.revoked_at.is_some_and(|t| t <= now) {
            Some(Ended::Revoked)
        } else if self.disabled_at.is_some() {
            Some(Ended::Disabled)
        } else {
            None
        }
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(model))
    }

    /// Tokens per minute, when the key or `[limits]` sets one.
    pub fn tokens_per_minute(&self) -> Option<u64> {
        (self.tokens_per_minute > 0).then_some(self.tokens_per_minute)
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

pub(crate) fn entry(rec: &KeyRecord, limits: &LimitDefaults) -> KeyEntry {
    let per_minute = rec
        .limits
        .requests_per_minute
        .unwrap_or(limits.requests_per_minute);
    let burst = rec
        .limits
        .burst
        .or(rec.limits.requests_per_minute)
        .unwrap_or(limits.burst);
    KeyEntry {
        id: KeyId::new(&rec.id).unwrap_or(KeyId([b'?'; 20])),
        scopes: rec.scopes(),
        name: KeyName::new(&rec.name),
        // Validated on load; a pattern that fails to compile here allows nothing.
        models: models::compile_allowlist(&rec.models)
            .unwrap_or_else(|_| Some(globset::GlobSet::empty()))
            .map(Box::new),
        expires_at: rec.expires_at,
        revoked_at: rec.revoked_at,
        disabled_at: rec.disabled_at,
        quotas: (!rec.quotas.is_empty()).then(|| Box::new(rec.quotas)),
        max_in_flight: rec.limits.max_in_flight.unwrap_or(limits.max_in_flight),
        rate: Quota::new(per_minute, burst),
        tokens_per_minute: rec
            .limits
            .tokens_per_minute
            .or(limits.tokens_per_minute)
            .unwrap_or(0),
        state: OnceLock::new(),
    }
}
