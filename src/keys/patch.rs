//! An edit of a key: for each field, keep it, remove it (back to the default) or set it.
//!
//! `Edit` is the named three-way choice the API's `PATCH` body spells as an absent field,
//! `null` and a value; the CLI builds the same `KeyPatch` from its flags. `KeyPatch::check`
//! checks the values given on their own (before a store reads a million records); what needs
//! the record (labels merged, limits combined) is checked by `keys::ops::update`.

use crate::keys::annotations::{check_annotations, FieldError};
use crate::keys::record::{check_models, check_scopes};
use crate::time::Timestamp;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// One field of an edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Edit<T> {
    /// Leave the field as it is (the field is absent from the body).
    #[default]
    Keep,
    /// Remove the field: no description, no expiry, the gateway's default limit, no quota
    /// (`null` in the body).
    Remove,
    /// Set the field to this value.
    Set(T),
}

impl<T> Edit<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Edit::Keep)
    }

    /// The field's new value from its current one.
    pub fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Edit::Keep => current,
            Edit::Remove => None,
            Edit::Set(v) => Some(v),
        }
    }

    pub fn as_set(&self) -> Option<&T> {
        match self {
            Edit::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// `null` is `Remove`, a value is `Set`; an absent field is `Keep` through `#[serde(default)]`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Edit<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Edit::Remove,
            Some(v) => Edit::Set(v),
        })
    }
}

/// What an edit does to the metadata labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LabelsEdit {
    #[default]
    Keep,
    /// The whole map replaced (the API's `metadata`; `null` is an empty map).
    Replace(BTreeMap<String, String>),
    /// Labels set and labels removed, the others kept (the CLI's `--meta` / `--unset-meta`).
    Merge {
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    },
}

/// Per-key limits edited one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default)]
    pub requests_per_minute: Edit<u32>,
    #[serde(default)]
    pub burst: Edit<u32>,
    #[serde(default)]
    pub tokens_per_minute: Edit<u64>,
    #[serde(default)]
    pub max_in_flight: Edit<u32>,
}

impl LimitsPatch {
    /// Every limit back to the gateway's default.
    pub fn remove_all() -> LimitsPatch {
        LimitsPatch {
            requests_per_minute: Edit::Remove,
            burst: Edit::Remove,
            tokens_per_minute: Edit::Remove,
            max_in_flight: Edit::Remove,
        }
    }

    fn zeros(&self) -> [(&'static str, bool); 4] {
        [
            (
                "limits.requests_per_minute",
                self.requests_per_minute == Edit::Set(0),
            ),
            ("limits.burst", self.burst == Edit::Set(0)),
            (
                "limits.tokens_per_minute",
                self.tokens_per_minute == Edit::Set(0),
            ),
            ("limits.max_in_flight", self.max_in_flight == Edit::Set(0)),
        ]
    }
}

/// Quotas edited one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    #[serde(default)]
    pub tokens_per_day: Edit<u64>,
    #[serde(default)]
    pub tokens_per_month: Edit<u64>,
    #[serde(default)]
    pub requests_per_day: Edit<u64>,
    #[serde(default)]
    pub requests_per_month: Edit<u64>,
}

impl QuotasPatch {
    /// No quota left.
    pub fn remove_all() -> QuotasPatch {
        QuotasPatch {
            tokens_per_day: Edit::Remove,
            tokens_per_month: Edit::Remove,
            requests_per_day: Edit::Remove,
            requests_per_month: Edit::Remove,
        }
    }

    fn zeros(&self) -> [(&'static str, bool); 4] {
        [
            ("quotas.tokens_per_day", self.tokens_per_day == Edit::Set(0)),
            (
                "quotas.tokens_per_month",
                self.tokens_per_month == Edit::Set(0),
            ),
            (
                "quotas.requests_per_day",
                self.requests_per_day == Edit::Set(0),
            ),
            (
                "quotas.requests_per_month",
                self.requests_per_month == Edit::Set(0),
            ),
        ]
    }
}

/// An edit of a key. The name is not here: it is fixed at creation. Scopes and models
/// removed go back to their defaults (`inference`, every model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPatch {
    pub description: Edit<String>,
    pub metadata: LabelsEdit,
    pub scopes: Edit<Vec<String>>,
    pub models: Edit<Vec<String>>,
    pub expires_at: Edit<Timestamp>,
    pub limits: LimitsPatch,
    pub quotas: QuotasPatch,
}

impl KeyPatch {
    /// Checks the values given, each named as the API names it: text without control
    /// characters, known scopes, globs that compile, an expiry in the future, limits and
    /// quotas of at least 1.
    pub fn check(&self, now: Timestamp) -> Result<(), FieldError> {
        if let Edit::Set(d) = &self.description {
            check_annotations(Some(d), &BTreeMap::new())?;
        }
        match &self.metadata {
            LabelsEdit::Keep => {}
            LabelsEdit::Replace(m) | LabelsEdit::Merge { set: m, .. } => {
                check_annotations(None, m)?
            }
        }
        if let Edit::Set(s) = &self.scopes {
            check_scopes(s)?;
        }
        if let Edit::Set(m) = &self.models {
            check_models(m)?;
        }
        if self.expires_at.as_set().is_some_and(|e| *e <= now) {
            return Err(FieldError::new("expires_at", "must be in the future"));
        }
        for (field, zero) in self.limits.zeros() {
            if zero {
                return Err(FieldError::new(
                    field,
                    "must be at least 1 (remove it to use the gateway's default)",
                ));
            }
        }
        for (field, zero) in self.quotas.zeros() {
            if zero {
                return Err(FieldError::new(
                    field,
                    "must be at least 1 (remove it for no quota)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        description: Edit<String>,
        #[serde(default)]
        limits: LimitsPatch,
    }

    #[test]
    fn absent_null_and_value_are_three_things() {
        let b: Body = serde_json::from_str("{}").unwrap();
        assert_eq!(b.description, Edit::Keep);
        let b: Body = serde_json::from_str(r#"{"description": null}"#).unwrap();
        assert_eq!(b.description, Edit::Remove);
        let b: Body = serde_json::from_str(r#"{"description": "x"}"#).unwrap();
        assert_eq!(b.description, Edit::Set("x".into()));
        let b: Body =
            serde_json::from_str(r#"{"limits": {"burst": null, "max_in_flight": 2}}"#).unwrap();
        assert_eq!(b.limits.burst, Edit::Remove);
        assert_eq!(b.limits.max_in_flight, Edit::Set(2));
        assert_eq!(b.limits.requests_per_minute, Edit::Keep);
        assert!(serde_json::from_str::<Body>(r#"{"limits": {"rpm": 1}}"#).is_err());
        assert!(serde_json::from_str::<Body>(r#"{"description": 5}"#).is_err());
    }

    #[test]
    fn check_names_the_field() {
        let now = Timestamp(1_000);
        let zero = KeyPatch {
            quotas: QuotasPatch {
                requests_per_month: Edit::Set(0),
                ..QuotasPatch::default()
            },
            ..KeyPatch::default()
        };
        assert_eq!(
            zero.check(now).unwrap_err().field,
            "quotas.requests_per_month"
        );
        let past = KeyPatch {
            expires_at: Edit::Set(Timestamp(999)),
            ..KeyPatch::default()
        };
        assert_eq!(past.check(now).unwrap_err().field, "expires_at");
        let scope = KeyPatch {
            scopes: Edit::Set(vec!["root".into()]),
            ..KeyPatch::default()
        };
        assert_eq!(scope.check(now).unwrap_err().field, "scopes");
        assert!(KeyPatch::default().check(now).is_ok());
    }
}
