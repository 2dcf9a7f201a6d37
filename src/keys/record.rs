//! One key as the file stores it, what a new key is made of, and the one check of a record.
//!
//! `validate_record` is the only record validator: the key-file reader (`keys::file`) runs it
//! on every record it reads, whoever reads (serve, check, the CLI, a write). `NewKey::validate`
//! checks a key before it exists, naming each field as the API does.

use crate::keys::models;
use crate::keys::scope::Scopes;
use crate::keys::token::{self, KeyHash};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::keys::annotations::{
    check_annotations, check_quotas, check_stored_annotations, FieldError, KeyQuotas,
};

/// `Hash` gives the index a digest of each record (`keys::index`), so a reload can tell the
/// records that changed from those that did not: every field takes part.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Hash)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub last4: String,
    pub scopes: Vec<String>,
    /// Glob patterns; empty means every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "KeyLimits::is_empty")]
    pub limits: KeyLimits,
    /// Secrets replaced by rotation, each valid until its grace period ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<RetiredSecret>,
    /// Free text for the people who manage keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels such as `team=search`, `env=prod`, `owner=ana@example.com`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Set by disable, removed by enable (revoke, unlike disable, is final).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<Timestamp>,
    /// Daily and monthly allowances (UTC windows); unset: none.
    #[serde(default, skip_serializing_if = "KeyQuotas::is_empty")]
    pub quotas: KeyQuotas,
    /// The last change of any kind to this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    /// The record's revision: 1 when created, one more at every change. Stores and replicas
    /// compare it to tell a newer record from an older one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rev: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Hash)]
#[serde(deny_unknown_fields)]
pub struct RetiredSecret {
    pub sha256: String,
    pub last4: String,
    pub valid_until: Timestamp,
}

/// Per-key overrides of `[limits]`. Unset fields use the gateway's defaults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Disabled,
    Expired,
    Revoked,
}

impl Status {
    /// Revoked before expired before disabled: the most final state wins.
    pub fn of(
        revoked_at: Option<Timestamp>,
        expires_at: Option<Timestamp>,
        disabled_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Status {
        if revoked_at.is_some_and(|t| t <= now) {
            Status::Revoked
        } else if expires_at.is_some_and(|t| t <= now) {
            Status::Expired
        } else if disabled_at.is_some() {
            Status::Disabled
        } else {
            Status::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    /// Revoked before expired before disabled: the most final state wins.
    pub fn status(&self, now: Timestamp) -> Status {
        Status::of(self.revoked_at, self.expires_at, self.disabled_at, now)
    }

    /// Marks a change: the next revision, updated now.
    pub fn touch(&mut self, now: Timestamp) {
        self.rev += 1;
        self.updated_at = Some(now);
    }

    pub fn scopes(&self) -> Scopes {
        // Validated on load; an unparsable list cannot reach here, but fail closed anyway.
        Scopes::parse_list(&self.scopes).unwrap_or(Scopes::EMPTY)
    }
}

/// Checks one record on its own (`KeyFile::validate` adds what needs the whole file: unique
/// ids and secrets). `i` is its position, for the message.
pub fn validate_record(i: usize, k: &KeyRecord) -> Result<(), String> {
    let at = |problem: String| format!("key #{} ({}): {problem}", i + 1, k.id);
    if !token::is_valid_id(&k.id) {
        return Err(at(
            "`id` must be `key_` followed by 16 letters or digits".into()
        ));
    }
    if k.name.trim().is_empty() {
        return Err(at("`name` is empty".into()));
    }
    let secrets = std::iter::once((&k.sha256, &k.last4))
        .chain(k.previous.iter().map(|p| (&p.sha256, &p.last4)));
    for (sha, last4) in secrets {
        if parse_hash(sha).is_none() {
            return Err(at(format!(
                "`sha256` must be 64 hex digits, got {} characters",
                sha.len()
            )));
        }
        if !is_last4(last4) {
            return Err(at("`last4` must be 4 letters or digits".into()));
        }
    }
    Scopes::parse_list(&k.scopes).map_err(|e| at(format!("`scopes`: {e}")))?;
    for m in &k.models {
        models::compile_glob(m).map_err(|e| at(format!("`models`: {e}")))?;
    }
    if k.expires_at.is_some_and(|e| e < k.created_at) {
        return Err(at("`expires_at` is before `created_at`".into()));
    }
    // Stored text is held to the rule it was written under (names and globs are not checked
    // for characters at all: a hand edit is trusted, and escaped on output).
    check_stored_annotations(k.description.as_deref(), &k.metadata)
        .map_err(|e| at(e.to_string()))?;
    check_quotas(&k.quotas).map_err(|e| at(e.to_string()))?;
    let l = &k.limits;
    let zero = [
        ("requests_per_minute", l.requests_per_minute.map(u64::from)),
        ("burst", l.burst.map(u64::from)),
        ("max_in_flight", l.max_in_flight.map(u64::from)),
        ("tokens_per_minute", l.tokens_per_minute),
    ]
    .into_iter()
    .find(|(_, v)| *v == Some(0));
    if let Some((name, _)) = zero {
        return Err(at(format!(
            "`limits.{name}` must be at least 1 (omit a limit to use the default)"
        )));
    }
    Ok(())
}

/// Hex SHA-256 as stored in the file.
pub fn hash_hex(h: &KeyHash) -> String {
    hex::encode(h)
}

/// Decodes a stored hex hash.
pub fn parse_hash(s: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn is_last4(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// What a new key is made of, from the CLI or the API.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub models: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub limits: KeyLimits,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub quotas: KeyQuotas,
}

/// The longest key name, as the console's field allows: a name is for people to read in a
/// table (a 60,000-character one padded every row of `keys list`).
pub const MAX_NAME: usize = 200;

impl NewKey {
    /// Checks every field as the API names it; what the CLI and the API both call before a
    /// key is made, so both refuse the same things with the same words. Returns the scopes.
    pub fn validate(&self, now: Timestamp) -> Result<Scopes, FieldError> {
        let text = |field: &'static str, value: &str| {
            crate::text::check(field, value).map_err(|e| FieldError::new(field, e.problem()))
        };
        text("name", &self.name)?;
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if self.name.trim().chars().count() > MAX_NAME {
            return Err(FieldError::new(
                "name",
                format!("must be at most {MAX_NAME} characters"),
            ));
        }
        let scopes = check_scopes(&self.scopes)?;
        check_models(&self.models)?;
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err(FieldError::new("expires_at", "must be in the future"));
        }
        check_annotations(self.description.as_deref(), &self.metadata)?;
        check_quotas(&self.quotas)?;
        check_limits(&self.limits)?;
        Ok(scopes)
    }
}

/// Checks a scope list as given (names, `inference`, aliases; empty means `inference`).
pub fn check_scopes(scopes: &[String]) -> Result<Scopes, FieldError> {
    Scopes::parse_list(scopes).map_err(|e| FieldError::new("scopes", format!("has an {e}")))
}

/// Checks model globs as given: no control characters, each one compiles.
pub fn check_models(globs: &[String]) -> Result<(), FieldError> {
    for m in globs {
        crate::text::check("models", m).map_err(|e| FieldError::new("models", e.problem()))?;
        models::compile_glob(m)
            .map_err(|e| FieldError::new("models", format!("is invalid: {e}")))?;
    }
    Ok(())
}

/// Checks per-key limits: each set one is at least 1.
pub fn check_limits(l: &KeyLimits) -> Result<(), FieldError> {
    for (field, zero) in [
        (
            "limits.requests_per_minute",
            l.requests_per_minute == Some(0),
        ),
        ("limits.burst", l.burst == Some(0)),
        ("limits.tokens_per_minute", l.tokens_per_minute == Some(0)),
        ("limits.max_in_flight", l.max_in_flight == Some(0)),
    ] {
        if zero {
            return Err(FieldError::new(
                field,
                "must be at least 1 (omit it to use the gateway's default)",
            ));
        }
    }
    Ok(())
}
