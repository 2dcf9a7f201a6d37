//! Every change to a key, in one place: create, update, rotate, revoke, disable, enable, as
//! functions from the current record to the next one, with what changed for the audit trail.
//!
//! They are pure (no file, no clock, no store): a store runs one atomically — the key file's
//! streaming writer (`KeyStore::apply`), the in-memory `KeyFile`, later the Redis store — so
//! the rules hold whoever stores keys. The rules: the name is fixed; revoke is final (a
//! revoked key cannot be edited, rotated, disabled or enabled); disable and enable are
//! reversible; rotation keeps everything but the secret, the expiry included. A change that
//! changes nothing leaves the record as it was (same `rev`), so nothing is written.

use crate::keys::error::StoreError;
use crate::keys::patch::{Edit, KeyPatch, LabelsEdit};
use crate::keys::record::{
    self, check_limits, check_quotas, check_scopes, check_stored_annotations, KeyRecord, NewKey,
    RetiredSecret,
};
use crate::keys::token::{self, NewToken};
use crate::time::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Rotated-out secrets are kept this long after they stop working, so that presenting one
/// gets a precise "rotated" error rather than "unknown key".
const KEEP_RETIRED_SECS: u64 = 30 * 86_400;

/// What was done to a key, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Rotated,
    Revoked,
    Disabled,
    Enabled,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Rotated => "rotated",
            Action::Revoked => "revoked",
            Action::Disabled => "disabled",
            Action::Enabled => "enabled",
        }
    }
}

/// One field changed: `field` as the API names it (`description`, `metadata.team`,
/// `limits.burst`), `null` for a field that was or became unset.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// A change asked of a store.
#[derive(Debug, Clone)]
pub enum Op {
    Create(NewKey),
    Update { id: String, patch: KeyPatch },
    Rotate { id: String, grace: Duration },
    Revoke { id: String },
    Disable { id: String },
    Enable { id: String },
}

impl Op {
    /// The key it changes; `None` for a create.
    pub fn target(&self) -> Option<&str> {
        match self {
            Op::Create(_) => None,
            Op::Update { id, .. }
            | Op::Rotate { id, .. }
            | Op::Revoke { id }
            | Op::Disable { id }
            | Op::Enable { id } => Some(id),
        }
    }

    /// What can be checked without the record, so that a store refuses a bad value before
    /// reading any key.
    pub fn check(&self, now: Timestamp) -> Result<(), StoreError> {
        match self {
            Op::Create(new) => new.validate(now).map(|_| ())?,
            Op::Update { patch, .. } => patch.check(now)?,
            Op::Rotate { grace, .. } => {
                grace_end(now, *grace)?;
            }
            Op::Revoke { .. } | Op::Disable { .. } | Op::Enable { .. } => {}
        }
        Ok(())
    }

    /// Runs this operation on `rec`, the record with the target id (not for a create).
    pub fn apply_to(
        &self,
        rec: &KeyRecord,
        prefix: &str,
        now: Timestamp,
    ) -> Result<Done, StoreError> {
        match self {
            Op::Create(_) => Err(StoreError::Rejected(
                "a new key is not made from an existing one".into(),
            )),
            Op::Update { patch, .. } => update(rec, patch.clone(), now),
            Op::Rotate { grace, .. } => rotate(rec, *grace, prefix, now),
            Op::Revoke { .. } => Ok(revoke(rec, now)),
            Op::Disable { .. } => disable(rec, now),
            Op::Enable { .. } => enable(rec, now),
        }
    }
}

/// An operation's result: the key as it now is, and what changed.
#[derive(Debug)]
pub struct Done {
    pub action: Action,
    pub record: KeyRecord,
    /// The plaintext of a created or rotated key, for the caller to show once.
    pub token: Option<NewToken>,
    /// The audited fields that changed, old → new (never a hash).
    pub changes: Vec<Change>,
    /// Whether the record changed at all (a revoke of a revoked key does not).
    pub changed: bool,
}

/// A new key, with a fresh id and secret. The store checks that neither is taken.
pub fn create(new: NewKey, prefix: &str, now: Timestamp) -> Result<Done, StoreError> {
    let scopes = new.validate(now)?;
    let token = token::generate(prefix).map_err(|e| StoreError::Random(e.to_string()))?;
    let id = token::generate_id().map_err(|e| StoreError::Random(e.to_string()))?;
    let record = KeyRecord {
        id,
        name: new.name.trim().to_string(),
        sha256: record::hash_hex(&token.hash),
        last4: token.last4.clone(),
        scopes: scopes.names(),
        models: distinct(new.models),
        created_at: now,
        expires_at: new.expires_at,
        revoked_at: None,
        rotated_at: None,
        limits: new.limits,
        previous: Vec::new(),
        description: new.description.filter(|d| !d.is_empty()),
        metadata: new.metadata,
        disabled_at: None,
        quotas: new.quotas,
        updated_at: None,
        rev: 1,
    };
    Ok(Done {
        action: Action::Created,
        changes: diff(None, &record),
        record,
        token: Some(token),
        changed: true,
    })
}

/// Applies an edit. Refused for a revoked key; an expired or disabled one may be edited (a
/// new expiry brings an expired key back).
pub fn update(rec: &KeyRecord, patch: KeyPatch, now: Timestamp) -> Result<Done, StoreError> {
    not_revoked(rec, "edited")?;
    patch.check(now)?;
    let mut next = rec.clone();
    next.description = patch
        .description
        .apply(next.description.take())
        .filter(|d| !d.is_empty());
    match patch.metadata {
        LabelsEdit::Keep => {}
        LabelsEdit::Replace(m) => next.metadata = m,
        LabelsEdit::Merge { set, unset } => {
            next.metadata.extend(set);
            for k in &unset {
                next.metadata.remove(k);
            }
        }
    }
    match patch.scopes {
        Edit::Keep => {}
        Edit::Remove => next.scopes = crate::keys::scope::Scopes::inference().names(),
        Edit::Set(s) => next.scopes = check_scopes(&s)?.names(),
    }
    match patch.models {
        Edit::Keep => {}
        Edit::Remove => next.models = Vec::new(),
        // `--models ''` and `[""]` mean every model, as on create.
        Edit::Set(m) => {
            next.models = distinct(m.into_iter().filter(|g| !g.trim().is_empty()).collect())
        }
    }
    next.expires_at = patch.expires_at.apply(next.expires_at);
    let (l, q) = (patch.limits, patch.quotas);
    let limits = &mut next.limits;
    limits.requests_per_minute = l.requests_per_minute.apply(limits.requests_per_minute);
    limits.burst = l.burst.apply(limits.burst);
    limits.tokens_per_minute = l.tokens_per_minute.apply(limits.tokens_per_minute);
    limits.max_in_flight = l.max_in_flight.apply(limits.max_in_flight);
    let quotas = &mut next.quotas;
    quotas.tokens_per_day = q.tokens_per_day.apply(quotas.tokens_per_day);
    quotas.tokens_per_month = q.tokens_per_month.apply(quotas.tokens_per_month);
    quotas.requests_per_day = q.requests_per_day.apply(quotas.requests_per_day);
    quotas.requests_per_month = q.requests_per_month.apply(quotas.requests_per_month);
    // The new values were checked by `patch.check`; what the edit kept is held to the rule
    // it was stored under (an edit of the rpm must not fail on an old description).
    check_stored_annotations(next.description.as_deref(), &next.metadata)?;
    check_limits(&next.limits)?;
    check_quotas(&next.quotas)?;
    record::validate_record(0, &next).map_err(StoreError::Rejected)?;
    Ok(finish(rec, next, Action::Updated, None, now))
}

/// Gives the key a new secret; the old one works for `grace` more (zero: it stops now), and
/// so do earlier retired secrets at most: each one's end is capped at the new grace's end,
/// never extended (a rotation with no grace, after a leak, leaves no earlier secret working).
/// Everything else stays, the expiry included.
pub fn rotate(
    rec: &KeyRecord,
    grace: Duration,
    prefix: &str,
    now: Timestamp,
) -> Result<Done, StoreError> {
    not_revoked(rec, "rotated")?;
    let valid_until = grace_end(now, grace)?;
    let token = token::generate(prefix).map_err(|e| StoreError::Random(e.to_string()))?;
    let mut next = rec.clone();
    next.previous
        .retain(|p| p.valid_until.0 + KEEP_RETIRED_SECS > now.0);
    for p in &mut next.previous {
        p.valid_until = p.valid_until.min(valid_until);
    }
    next.previous.push(RetiredSecret {
        sha256: std::mem::replace(&mut next.sha256, record::hash_hex(&token.hash)),
        last4: std::mem::replace(&mut next.last4, token.last4.clone()),
        valid_until,
    });
    next.rotated_at = Some(now);
    Ok(finish(rec, next, Action::Rotated, Some(token), now))
}

/// Revokes the key at once, with every secret it had. Revoking twice keeps the first time.
pub fn revoke(rec: &KeyRecord, now: Timestamp) -> Done {
    let mut next = rec.clone();
    next.revoked_at.get_or_insert(now);
    finish(rec, next, Action::Revoked, None, now)
}

/// Disables the key until it is enabled; disabling twice keeps the first time.
pub fn disable(rec: &KeyRecord, now: Timestamp) -> Result<Done, StoreError> {
    not_revoked(rec, "disabled")?;
    let mut next = rec.clone();
    next.disabled_at.get_or_insert(now);
    Ok(finish(rec, next, Action::Disabled, None, now))
}

/// Enables a disabled key again.
pub fn enable(rec: &KeyRecord, now: Timestamp) -> Result<Done, StoreError> {
    not_revoked(rec, "enabled")?;
    let mut next = rec.clone();
    next.disabled_at = None;
    Ok(finish(rec, next, Action::Enabled, None, now))
}

fn not_revoked(rec: &KeyRecord, doing: &'static str) -> Result<(), StoreError> {
    match rec.revoked_at {
        Some(_) => Err(StoreError::Revoked {
            id: rec.id.clone(),
            doing,
        }),
        None => Ok(()),
    }
}

fn grace_end(now: Timestamp, grace: Duration) -> Result<Timestamp, StoreError> {
    now.checked_plus(grace).ok_or_else(|| {
        StoreError::Rejected("the grace period must end before the year 10000".into())
    })
}

/// The result of changing `old` into `next`: a new revision when anything changed.
fn finish(
    old: &KeyRecord,
    mut next: KeyRecord,
    action: Action,
    token: Option<NewToken>,
    now: Timestamp,
) -> Done {
    let changed = next != *old;
    if changed {
        next.touch(now);
    }
    Done {
        action,
        changes: diff(Some(old), &next),
        record: next,
        token,
        changed,
    }
}

/// Fields the audit trail leaves out: the hashes (never logged), and the bookkeeping every
/// change moves.
const UNAUDITED: [&str; 5] = ["sha256", "previous", "rev", "updated_at", "id"];
/// Objects whose entries are audited one by one (`limits.burst`, `metadata.team`).
const NESTED: [&str; 3] = ["limits", "quotas", "metadata"];

/// The audited fields that differ between `old` (none: a new key) and `new`, by name.
pub fn diff(old: Option<&KeyRecord>, new: &KeyRecord) -> Vec<Change> {
    let (old, new) = (old.map(flatten).unwrap_or_default(), flatten(new));
    let fields: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    fields
        .into_iter()
        .filter_map(|f| {
            let (o, n) = (old.get(f), new.get(f));
            (o != n).then(|| Change {
                field: f.clone(),
                old: o.cloned().unwrap_or(Value::Null),
                new: n.cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// A record as field → value, nested objects one level down, unset fields absent.
fn flatten(rec: &KeyRecord) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(Value::Object(map)) = serde_json::to_value(rec) else {
        return out;
    };
    for (field, value) in map {
        if UNAUDITED.contains(&field.as_str()) {
            continue;
        }
        match value {
            Value::Object(inner) if NESTED.contains(&field.as_str()) => {
                for (k, v) in inner {
                    out.insert(format!("{field}.{k}"), v);
                }
            }
            Value::Null => {}
            v => {
                out.insert(field, v);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;

/// A model list with each glob once, in the order first given: 5,000 copies of one glob
/// are one glob (every request matches against the list).
fn distinct(globs: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(globs.len());
    for g in globs {
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}
