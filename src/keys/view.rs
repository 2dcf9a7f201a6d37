//! A key's public view — the JSON the management API, the key list and the CLI's `--json`
//! show — built in one place, whether the key comes from a record (a write's answer, the CLI
//! reading the file) or from the gateway's index (the key list, `GET /v1/api-keys/{id}`).
//! It never holds more of a secret than its last four characters.

use crate::keys::entry::KeyEntry;
use crate::keys::record::{KeyLimits, KeyQuotas, KeyRecord, Status};
use crate::keys::scope::Scopes;
use crate::keys::token;
use crate::keys::usage::UsageSnapshot;
use crate::time::Timestamp;

/// What a key's view is made of, borrowed from a record or an index entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub last4: &'a str,
    /// Shown by their canonical names (`Scopes::names`), however the file spells them.
    pub scopes: Scopes,
    pub models: Vec<&'a str>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub rotated_at: Option<Timestamp>,
    pub disabled_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub limits: KeyLimits,
    pub quotas: KeyQuotas,
    pub description: Option<&'a str>,
    /// Sorted by name.
    pub metadata: Vec<(&'a str, &'a str)>,
    /// Rotated-out secrets: last four characters and end of grace.
    pub retired: Vec<(&'a str, Timestamp)>,
}

impl<'a> KeyView<'a> {
    pub fn of_record(rec: &'a KeyRecord) -> KeyView<'a> {
        KeyView {
            id: &rec.id,
            name: &rec.name,
            last4: &rec.last4,
            scopes: rec.scopes(),
            models: rec.models.iter().map(String::as_str).collect(),
            created_at: rec.created_at,
            expires_at: rec.expires_at,
            revoked_at: rec.revoked_at,
            rotated_at: rec.rotated_at,
            disabled_at: rec.disabled_at,
            updated_at: rec.updated_at,
            limits: rec.limits,
            quotas: rec.quotas,
            description: rec.description.as_deref(),
            metadata: rec
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            retired: rec
                .previous
                .iter()
                .map(|p| (p.last4.as_str(), p.valid_until))
                .collect(),
        }
    }

    pub fn of_entry(e: &'a KeyEntry) -> KeyView<'a> {
        let extra = e.extra.as_deref();
        KeyView {
            id: e.id.as_str(),
            name: e.name.as_str(),
            last4: e.last4(),
            scopes: e.scopes,
            models: extra.map_or_else(Vec::new, |x| x.models().collect()),
            created_at: e.created_at,
            expires_at: e.expires_at,
            revoked_at: e.revoked_at,
            rotated_at: extra.and_then(|x| x.rotated_at()),
            disabled_at: e.disabled_at,
            updated_at: extra.and_then(|x| x.updated_at()),
            limits: e.own_limits(),
            quotas: e.quotas.as_deref().copied().unwrap_or_default(),
            description: extra.and_then(|x| x.description()),
            metadata: extra.map_or_else(Vec::new, |x| x.labels().collect()),
            retired: extra.map_or_else(Vec::new, |x| x.retired().collect()),
        }
    }

    pub fn status(&self, now: Timestamp) -> Status {
        Status::of(self.revoked_at, self.expires_at, self.disabled_at, now)
    }

    /// The JSON view. `usage` gives `last_used_at`.
    pub fn json(
        &self,
        prefix: &str,
        now: Timestamp,
        usage: Option<&UsageSnapshot>,
    ) -> serde_json::Value {
        let metadata: serde_json::Map<String, serde_json::Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let mut v = serde_json::json!({
            "object": "api_key",
            "id": self.id,
            "name": self.name,
            "masked_key": token::mask(prefix, self.last4),
            "scopes": self.scopes.names(),
            "models": self.models,
            "status": self.status(now).as_str(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
            "limits": self.limits,
            "quotas": self.quotas,
            "description": self.description,
            "metadata": metadata,
            "disabled_at": self.disabled_at,
            "updated_at": self.updated_at.unwrap_or(self.created_at),
            "last_used_at": usage.and_then(|u| u.last_used),
        });
        // A revoked or disabled key's old secrets are refused with it: none is valid.
        let usable = self.revoked_at.is_none() && self.disabled_at.is_none();
        let grace: Vec<_> = self
            .retired
            .iter()
            .filter(|(_, valid_until)| usable && *valid_until > now)
            .map(|(last4, valid_until)| {
                serde_json::json!({"masked_key": token::mask(prefix, last4), "valid_until": valid_until})
            })
            .collect();
        if !grace.is_empty() {
            v["previous_keys_valid"] = serde_json::Value::Array(grace);
        }
        v
    }
}

impl KeyRecord {
    /// The public view of a key, shared by the CLI's `--json` and the management API (built by
    /// `KeyView`, as the key list builds it from the index). Never holds more of the
    /// secret than its last four characters.
    pub fn view(
        &self,
        prefix: &str,
        now: Timestamp,
        usage: Option<&UsageSnapshot>,
    ) -> serde_json::Value {
        KeyView::of_record(self).json(prefix, now, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::entry::entry;
    use crate::keys::record::{KeyLimits, RetiredSecret};
    use std::collections::BTreeMap;

    /// The same key seen through its record and through its index entry: one view.
    #[test]
    fn a_record_and_its_entry_have_the_same_view() {
        let limits = crate::config::Config::parse("", None).unwrap().limits;
        let now = Timestamp(1_800_000_000);
        let plain = KeyRecord {
            id: "key_0123456789abcdef".into(),
            name: "a-name-longer-than-twenty-three-bytes".into(),
            sha256: "00".repeat(32),
            last4: "Wxyz".into(),
            scopes: vec!["chat".into(), "models".into()],
            created_at: Timestamp(1_700_000_000),
            ..KeyRecord::default()
        };
        let full = KeyRecord {
            models: vec!["llama-*".into(), "qwen?".into()],
            expires_at: Some(Timestamp(1_900_000_000)),
            rotated_at: Some(Timestamp(1_750_000_000)),
            disabled_at: Some(Timestamp(1_760_000_000)),
            updated_at: Some(Timestamp(1_760_000_000)),
            limits: KeyLimits {
                requests_per_minute: Some(7),
                tokens_per_minute: Some(9),
                ..KeyLimits::default()
            },
            quotas: KeyQuotas {
                tokens_per_day: Some(100),
                ..KeyQuotas::default()
            },
            description: Some("for the search team".into()),
            metadata: BTreeMap::from([
                ("team".into(), "search".into()),
                ("env".into(), "prod".into()),
            ]),
            previous: vec![
                RetiredSecret {
                    sha256: "11".repeat(32),
                    last4: "Old1".into(),
                    valid_until: Timestamp(1_850_000_000),
                },
                RetiredSecret {
                    sha256: "22".repeat(32),
                    last4: "Old2".into(),
                    valid_until: Timestamp(1_700_000_001),
                },
            ],
            rev: 4,
            ..plain.clone()
        };
        let revoked = KeyRecord {
            revoked_at: Some(Timestamp(1_790_000_000)),
            scopes: vec![],
            ..plain.clone()
        };
        let usage = UsageSnapshot {
            last_used: Some(Timestamp(1_799_000_000)),
            ..UsageSnapshot::default()
        };
        for rec in [&plain, &full, &revoked] {
            let e = entry(rec, &limits);
            assert_eq!(KeyView::of_entry(&e), KeyView::of_record(rec));
            for u in [None, Some(&usage)] {
                assert_eq!(
                    KeyView::of_entry(&e).json("sk_kg", now, u),
                    rec.view("sk_kg", now, u)
                );
            }
        }
        let v = full.view("sk_kg", now, Some(&usage));
        assert_eq!(v["status"], "disabled");
        assert_eq!(
            v["limits"],
            serde_json::json!({"requests_per_minute": 7, "tokens_per_minute": 9})
        );
        assert_eq!(
            v["metadata"],
            serde_json::json!({"env": "prod", "team": "search"})
        );
        // Disabled: its rotated-out secret, still in its grace, is refused with it.
        assert!(v.get("previous_keys_valid").is_none(), "{v}");
        let enabled = KeyRecord {
            disabled_at: None,
            ..full.clone()
        };
        let e = enabled.view("sk_kg", now, None);
        assert_eq!(e["previous_keys_valid"].as_array().unwrap().len(), 1, "{e}");
        assert_eq!(v["last_used_at"], "2027-01-03T18:13:20Z");
        assert!(plain
            .view("sk_kg", now, None)
            .get("previous_keys_valid")
            .is_none());
        assert_eq!(revoked.view("sk_kg", now, None)["status"], "revoked");
        // The entry stays compact: a name of 24 bytes, inline or not.
        assert_eq!(std::mem::size_of::<crate::keys::entry::KeyName>(), 24);
    }
}
