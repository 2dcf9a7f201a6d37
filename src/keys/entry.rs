//! One key as the request path sees it: its id and name stored inline (a million keys are a
//! few large arrays, not a million small allocations), and its static facts worked out once,
//! when the index is built.

use crate::config::LimitDefaults;
use crate::keys::extra::{self, KeyExtra};
use crate::keys::models;
use crate::keys::record::{KeyLimits, KeyQuotas, KeyRecord, Status};
use crate::keys::scope::Scopes;
use crate::keys::state::{Ended, KeyState};
use crate::limit::rate::Quota;
use crate::time::Timestamp;
use std::num::NonZeroU8;
use std::sync::{Arc, OnceLock};

/// A key id (`key_` + 16 letters or digits, checked when the file is validated), stored
/// inline so a million of them need no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 20]);

impl KeyId {
    /// `id` when it has the shape of one: `key_` and 16 ASCII letters or digits (so its bytes
    /// can be written anywhere, a header or a log line, with nothing to escape).
    pub fn new(id: &str) -> Option<KeyId> {
        let b: [u8; 20] = id.as_bytes().try_into().ok()?;
        let shaped = b.starts_with(b"key_") && b[4..].iter().all(u8::is_ascii_alphanumeric);
        shaped.then_some(KeyId(b))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("key_invalid")
    }

    /// The id's ASCII bytes: what the request path writes (a header, the access line),
    /// without `as_str`'s UTF-8 check at every use.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The 16 characters after `key_` as one integer: ordered as the ids are, compared in
    /// one instruction (sorting a million keys compares them often).
    pub fn sort_key(&self) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.0[4..]);
        u128::from_be_bytes(b)
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
/// index of a million keys is a few large arrays, not a million small allocations. The
/// inline length is stored plus one, so its zero is free to tell the two forms apart and a
/// name is 24 bytes, not 32.
#[derive(Clone)]
pub enum KeyName {
    Inline {
        len_plus_one: NonZeroU8,
        bytes: [u8; 23],
    },
    Heap(Box<str>),
}

impl KeyName {
    pub fn new(name: &str) -> KeyName {
        let mut bytes = [0u8; 23];
        match (
            bytes.get_mut(..name.len()),
            NonZeroU8::new(name.len() as u8 + 1),
        ) {
            (Some(dst), Some(len_plus_one)) => {
                dst.copy_from_slice(name.as_bytes());
                KeyName::Inline {
                    len_plus_one,
                    bytes,
                }
            }
            _ => KeyName::Heap(name.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` at a char boundary (the whole string).
            KeyName::Inline {
                len_plus_one,
                bytes,
            } => std::str::from_utf8(&bytes[..usize::from(len_plus_one.get() - 1)]).unwrap_or("?"),
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

/// One key as the request path needs it, and as the key list shows it: what every key has
/// is inline, what only some keys have (`KeyExtra`: a description, labels, model patterns,
/// edit and rotation times, secrets in their grace period) is one shared allocation, present
/// only when there is something in it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: KeyId,
    pub scopes: Scopes,
    pub name: KeyName,
    /// The model allowlist, compiled; `None` allows every model.
    pub models: Option<Arc<globset::GlobSet>>,
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
    pub created_at: Timestamp,
    /// The last four characters of the current secret (ASCII letters or digits).
    last4: [u8; 4],
    /// Which limits the key sets itself (`OVERRIDES_*`): with the effective values above,
    /// the key's own `limits` again, in one byte.
    overrides: u8,
    pub extra: Option<Arc<KeyExtra>>,
    pub(crate) state: OnceLock<Arc<KeyState>>,
}

const OVERRIDES_RPM: u8 = 1;
const OVERRIDES_BURST: u8 = 2;
const OVERRIDES_TPM: u8 = 4;
const OVERRIDES_IN_FLIGHT: u8 = 8;

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

    /// Whether the key's requests are counted in tokens: a token limit or a token quota.
    /// For those the gateway reads a completion request's body (for its estimate) and asks
    /// a stream for its usage.
    pub fn counts_tokens(&self) -> bool {
        self.tokens_per_minute().is_some()
            || self
                .quotas
                .as_ref()
                .is_some_and(|q| q.tokens_per_day.is_some() || q.tokens_per_month.is_some())
    }

    /// The key's status, as `KeyRecord::status` tells it.
    pub fn status(&self, now: Timestamp) -> Status {
        Status::of(self.revoked_at, self.expires_at, self.disabled_at, now)
    }

    pub fn last4(&self) -> &str {
        std::str::from_utf8(&self.last4).unwrap_or("????")
    }

    /// The limits the key sets itself (those unset use `[limits]`).
    pub fn own_limits(&self) -> KeyLimits {
        let has = |flag: u8| self.overrides & flag != 0;
        KeyLimits {
            requests_per_minute: has(OVERRIDES_RPM).then_some(self.rate.per_minute),
            burst: has(OVERRIDES_BURST).then_some(self.rate.burst),
            tokens_per_minute: has(OVERRIDES_TPM).then_some(self.tokens_per_minute),
            max_in_flight: has(OVERRIDES_IN_FLIGHT).then_some(self.max_in_flight),
        }
    }

    /// The value of label `name`, if the key has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.extra.as_ref()?.label(name)
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
    let l = &rec.limits;
    let per_minute = l.requests_per_minute.unwrap_or(limits.requests_per_minute);
    let burst = l.burst.or(l.requests_per_minute).unwrap_or(limits.burst);
    let overrides = [
        (l.requests_per_minute.is_some(), OVERRIDES_RPM),
        (l.burst.is_some(), OVERRIDES_BURST),
        (l.tokens_per_minute.is_some(), OVERRIDES_TPM),
        (l.max_in_flight.is_some(), OVERRIDES_IN_FLIGHT),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |acc, (_, flag)| acc | flag);
    KeyEntry {
        id: KeyId::new(&rec.id).unwrap_or(KeyId([b'?'; 20])),
        scopes: rec.scopes(),
        name: KeyName::new(&rec.name),
        // Validated on load; a pattern that fails to compile here allows nothing.
        models: models::compile_allowlist(&rec.models)
            .unwrap_or_else(|_| Some(globset::GlobSet::empty()))
            .map(Arc::new),
        expires_at: rec.expires_at,
        revoked_at: rec.revoked_at,
        disabled_at: rec.disabled_at,
        quotas: (!rec.quotas.is_empty()).then(|| Box::new(rec.quotas)),
        max_in_flight: l.max_in_flight.unwrap_or(limits.max_in_flight),
        rate: Quota::new(per_minute, burst),
        tokens_per_minute: l
            .tokens_per_minute
            .or(limits.tokens_per_minute)
            .unwrap_or(0),
        created_at: rec.created_at,
        last4: extra::last4(&rec.last4),
        overrides,
        extra: KeyExtra::new(rec).map(Arc::new),
        state: OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::KeyId;

    /// Only ids of the generated shape are ids: their bytes need no escaping anywhere.
    #[test]
    fn a_key_id_is_key_and_sixteen_letters_or_digits() {
        let id = KeyId::new("key_Ab3dEf6hIj9lMn0p");
        assert_eq!(
            id.map(|i| i.as_bytes().to_vec()),
            Some(b"key_Ab3dEf6hIj9lMn0p".to_vec())
        );
        for bad in [
            "key_Ab3dEf6hIj9lMn0",
            "key_Ab3dEf6hIj9lMn0pq",
            "kez_Ab3dEf6hIj9lMn0p",
            "key_Ab3dEf6hIj9lMn\"p",
            "key_Ab3dEf6hIj9lMn\\p",
            "key_Ab3dEf6hIj9l n0p",
            "key_Ab3dEf6hIj9lMn_p",
        ] {
            assert!(KeyId::new(bad).is_none(), "{bad}");
        }
    }
}
