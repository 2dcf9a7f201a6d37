//! `PATCH /v1/api-keys/{id}`: its body, read strictly, as a `KeyPatch`.
//!
//! An absent field keeps its value, `null` removes it (description, expiry, a limit, a
//! quota; `limits: null` / `quotas: null` all of them; `scopes: null` and `models: null` go
//! back to `inference` and every model), a value sets it; `metadata` replaces the whole map.
//! The name is fixed at creation: a body that names it is refused, with that said.

use crate::error::GatewayError;
use crate::keys::patch::{Edit, KeyPatch, LabelsEdit, LimitsPatch, QuotasPatch};
use crate::time::Timestamp;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    /// Only so that it can be refused by name (an unknown field would say less).
    #[serde(default)]
    name: Edit<IgnoredAny>,
    #[serde(default)]
    description: Edit<String>,
    #[serde(default)]
    metadata: Edit<BTreeMap<String, String>>,
    #[serde(default)]
    scopes: Edit<Vec<String>>,
    #[serde(default)]
    models: Edit<Vec<String>>,
    #[serde(default)]
    expires_at: Edit<Timestamp>,
    expires_in_days: Option<u32>,
    #[serde(default)]
    limits: Edit<LimitsPatch>,
    #[serde(default)]
    quotas: Edit<QuotasPatch>,
}

impl PatchBody {
    /// The edit this body asks for, or the refusal of a field that cannot be edited so.
    pub(super) fn into_patch(self, now: Timestamp) -> Result<KeyPatch, GatewayError> {
        if !self.name.is_keep() {
            return Err(GatewayError::InvalidParam {
                param: "name".into(),
                message: "`name` is fixed when a key is created and cannot be changed; create a new key for a new name.".into(),
            });
        }
        let expires_at = match (self.expires_in_days, self.expires_at) {
            (Some(_), at) if !at.is_keep() => {
                return Err(GatewayError::InvalidParam {
                    param: "expires_at".into(),
                    message: "Give `expires_in_days` or `expires_at`, not both.".into(),
                })
            }
            (Some(days), _) => Edit::Set(days_from_now(now, days)?),
            (None, at) => at,
        };
        Ok(KeyPatch {
            description: self.description,
            metadata: match self.metadata {
                Edit::Keep => LabelsEdit::Keep,
                Edit::Remove => LabelsEdit::Replace(BTreeMap::new()),
                Edit::Set(m) => LabelsEdit::Replace(m),
            },
            scopes: self.scopes,
            models: self.models,
            expires_at,
            limits: match self.limits {
                Edit::Keep => LimitsPatch::default(),
                Edit::Remove => LimitsPatch::remove_all(),
                Edit::Set(l) => l,
            },
            quotas: match self.quotas {
                Edit::Keep => QuotasPatch::default(),
                Edit::Remove => QuotasPatch::remove_all(),
                Edit::Set(q) => q,
            },
        })
    }
}

/// `expires_in_days` (create and edit) as a time: at least 1, before the year 10000.
pub(super) fn days_from_now(now: Timestamp, days: u32) -> Result<Timestamp, GatewayError> {
    let param = |message: &str| GatewayError::InvalidParam {
        param: "expires_in_days".into(),
        message: message.into(),
    };
    if days == 0 {
        return Err(param("`expires_in_days` must be at least 1."));
    }
    now.checked_plus(Duration::from_secs(u64::from(days) * 86_400))
        .ok_or_else(|| param("`expires_in_days` is too large."))
}
