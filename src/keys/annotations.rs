//! What people attach to a key beyond its permissions: a description, metadata labels and
//! quotas, with the one check of each (named as the API names the field).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value given for one field of a new key is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct FieldError {
    /// As the API names it: `name`, `scopes`, `limits.requests_per_minute`, …
    pub field: &'static str,
    /// A predicate on the field, e.g. "must be at least 1".
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> FieldError {
        FieldError {
            field,
            problem: problem.into(),
        }
    }
}

/// A key's daily and monthly allowances, in UTC calendar days and months. Unset: no quota.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct KeyQuotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_month: Option<u64>,
}

impl KeyQuotas {
    pub fn is_empty(&self) -> bool {
        *self == KeyQuotas::default()
    }

    /// Each quota with its field name, as the API names it.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("quotas.tokens_per_day", self.tokens_per_day),
            ("quotas.tokens_per_month", self.tokens_per_month),
            ("quotas.requests_per_day", self.requests_per_day),
            ("quotas.requests_per_month", self.requests_per_month),
        ]
    }
}

/// At most this many metadata labels per key.
pub const MAX_LABELS: usize = 32;
/// A description's length limit, in characters.
pub const MAX_DESCRIPTION: usize = 1024;
/// A label value's length limit, in characters.
pub const MAX_LABEL_VALUE: usize = 256;

/// A metadata label name: 1–63 of `a-z 0-9 _ . -`, starting with a letter or digit (so it
/// reads the same in a URL filter, a CSV header and a Prometheus label).
pub fn is_label_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// The check of a text field: `crate::text::check` or `crate::text::check_stored`.
type TextRule = fn(&str, &str) -> Result<(), crate::text::ControlCharacter>;

/// Checks a description and labels given by a person, naming the field as the API does:
/// no control characters or invisible formatting (`crate::text::check`).
pub fn check_annotations(
    description: Option<&str>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    annotations(description, metadata, crate::text::check)
}

/// As [`check_annotations`] for a description and labels already stored (read from the key
/// file, or kept by an edit of other fields): held to the narrower rule they were written
/// under (`crate::text::check_stored`: controls and bidirectional controls), so that a file
/// written before the invisible characters were refused still loads and its keys can still
/// be edited.
pub fn check_stored_annotations(
    description: Option<&str>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    annotations(description, metadata, crate::text::check_stored)
}

fn annotations(
    description: Option<&str>,
    metadata: &BTreeMap<String, String>,
    text: TextRule,
) -> Result<(), FieldError> {
    if let Some(d) = description {
        text("description", d).map_err(|e| FieldError::new("description", e.problem()))?;
        if d.chars().count() > MAX_DESCRIPTION {
            return Err(FieldError::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
    }
    if metadata.len() > MAX_LABELS {
        return Err(FieldError::new(
            "metadata",
            format!("may hold at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in metadata {
        if !is_label_name(k) {
            return Err(FieldError::new(
                "metadata",
                format!(
                    "has a label name `{}` that is not 1–63 of a-z, 0-9, `_`, `.`, `-` starting with a letter or digit",
                    crate::text::escape(k)
                ),
            ));
        }
        text("metadata", v)
            .map_err(|e| FieldError::new("metadata", format!("label `{k}` {}", e.problem())))?;
        if v.chars().count() > MAX_LABEL_VALUE {
            return Err(FieldError::new(
                "metadata",
                format!("label `{k}` must be at most {MAX_LABEL_VALUE} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks quotas: each set one is at least 1.
pub fn check_quotas(q: &KeyQuotas) -> Result<(), FieldError> {
    for (field, v) in q.fields() {
        if v == Some(0) {
            return Err(FieldError::new(
                field,
                "must be at least 1 (omit it for no quota)",
            ));
        }
    }
    Ok(())
}
