//! What is notified: the four events, how each is found in the key set (`detect`, a function
//! of the index and the time only, so tests move the time instead of waiting days), and the
//! facts a notification carries — never a secret or a hash: the masked key is the prefix and
//! the last four characters, as every listing shows it.
//!
//! Each event has an id that says what it is about, so it is sent once: the ledger (and in
//! cluster mode a claim in Redis) remembers it.
//!
//! - `key.expiring/<key>/<days>/<expires_at>`: the smallest of `expiry_days` the key is
//!   within; a new expiry (extended) is a new event.
//! - `key.revoked/<key>/<revoked_at>` and `key.disabled/<key>/<disabled_at>`: a key disabled
//!   again after an enable is a new event. Only changes made within the last day (`LOOKBACK`)
//!   are notified, so notifications switched on, or a ledger lost, do not announce every key
//!   revoked long ago; a change made while the gateway was down (within that day) is.
//! - `key.quota_exhausted/<key>/<quota>/<window>`: once per quota and UTC day or month.

use crate::keys::entry::{KeyEntry, KeyId};
use crate::keys::index::KeyIndex;
use crate::keys::record::KeyRecord;
use crate::limit::quota;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How far back a revoke or a disable is still news.
pub const LOOKBACK: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "key.expiring")]
    Expiring,
    #[serde(rename = "key.revoked")]
    Revoked,
    #[serde(rename = "key.disabled")]
    Disabled,
    #[serde(rename = "key.quota_exhausted")]
    QuotaExhausted,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Expiring => "key.expiring",
            Kind::Revoked => "key.revoked",
            Kind::Disabled => "key.disabled",
            Kind::QuotaExhausted => "key.quota_exhausted",
        }
    }
}

/// A used-up quota, as a notification tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaFacts {
    /// `tokens_per_day`, `requests_per_month`, …
    pub name: String,
    pub limit: u64,
    pub used: u64,
    /// `2026-11-30` or `2026-11`: the UTC day or month.
    pub window: String,
    pub resets_at: Timestamp,
}

/// An event found in the key set, before the key's record is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub kind: Kind,
    pub key: KeyId,
    /// When it happened: the revoke's or disable's time, else when it was found.
    pub at: Timestamp,
    /// Past this it cannot be found again: the ledger forgets it then.
    pub until: Timestamp,
    pub days_left: Option<u64>,
    pub quota: Option<QuotaFacts>,
}

/// The key, as a notification shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFacts {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_key: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Option<Timestamp>,
    /// `active`, `disabled`, `expired` or `revoked`, when found.
    pub status: String,
}

impl KeyFacts {
    pub fn of_record(rec: &KeyRecord, prefix: &str, now: Timestamp) -> KeyFacts {
        KeyFacts {
            id: rec.id.clone(),
            name: rec.name.clone(),
            masked_key: Some(crate::keys::token::mask(prefix, &rec.last4)),
            description: rec.description.clone(),
            metadata: rec.metadata.clone(),
            expires_at: rec.expires_at,
            status: rec.status(now).as_str().to_string(),
        }
    }

    /// What the index alone tells (the record could not be read: the file changed since).
    pub fn of_entry(e: &KeyEntry, now: Timestamp) -> KeyFacts {
        let status = if e.revoked_at.is_some_and(|t| t <= now) {
            "revoked"
        } else if e.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else if e.disabled_at.is_some() {
            "disabled"
        } else {
            "active"
        };
        KeyFacts {
            id: e.id.to_string(),
            name: e.name.to_string(),
            masked_key: None,
            description: None,
            metadata: BTreeMap::new(),
            expires_at: e.expires_at,
            status: status.into(),
        }
    }
}

/// One notification: what the ledger keeps and the payload is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub event: Kind,
    /// When it happened: the revoke's or the disable's time, else when the gateway found it
    /// (a threshold crossed, a quota used up).
    pub at: Timestamp,
    pub key: KeyFacts,
    /// For `key.expiring`: the threshold crossed (the key expires within this many days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaFacts>,
}

impl Event {
    pub fn new(found: Found, key: KeyFacts) -> Event {
        Event {
            id: found.id,
            event: found.kind,
            at: found.at,
            key,
            days_left: found.days_left,
            quota: found.quota,
        }
    }
}

/// Every event the key set shows at `now`, sent or not (the ledger tells). `expiry_days`
/// ascending. One pass over the index: a comparison or two per key, a quota look only for
/// keys with quotas that have been used.
pub fn detect(index: &KeyIndex, now: Timestamp, expiry_days: &[u64]) -> Vec<Found> {
    let mut out = Vec::new();
    for e in index.entries() {
        let found = |kind: Kind, what: String, at: Timestamp, until: Timestamp| Found {
            id: format!("{}/{}/{what}", kind.name(), e.id),
            kind,
            key: e.id,
            at,
            until,
            days_left: None,
            quota: None,
        };
        if let Some(t) = e.revoked_at.filter(|t| *t <= now) {
            if now.0 <= t.0.saturating_add(LOOKBACK) {
                out.push(found(Kind::Revoked, t.0.to_string(), t, lookback_end(t)));
            }
            // Revoked is final: nothing else about the key is news.
            continue;
        }
        if let Some(t) = e.disabled_at {
            // A `disabled_at` ahead of this clock (another replica's) counts as now.
            if now.0 <= t.0.saturating_add(LOOKBACK) {
                out.push(found(Kind::Disabled, t.0.to_string(), t, lookback_end(t)));
            }
        }
        if let Some(exp) = e.expires_at.filter(|exp| *exp > now) {
            let left = now.until(exp);
            if let Some(days) = expiry_days.iter().copied().find(|d| left <= d * 86_400) {
                out.push(Found {
                    days_left: Some(days),
                    ..found(Kind::Expiring, format!("{days}/{}", exp.0), now, exp)
                });
            }
        }
        if let Some(q) = &e.quotas {
            let Some(state) = index.state_of(&e.id) else {
                continue;
            };
            for u in quota::used_up(q, &state.quota, now) {
                let window = u.window.label();
                out.push(Found {
                    quota: Some(QuotaFacts {
                        name: u.kind.name().into(),
                        limit: u.limit,
                        used: u.used,
                        window: window.clone(),
                        resets_at: u.window.end(),
                    }),
                    ..found(
                        Kind::QuotaExhausted,
                        format!("{}/{window}", u.kind.name()),
                        now,
                        u.window.end(),
                    )
                });
            }
        }
    }
    out
}

/// When a revoke or disable at `t` stops being news, with an hour's margin.
fn lookback_end(t: Timestamp) -> Timestamp {
    Timestamp(t.0.saturating_add(LOOKBACK + 3_600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::file::KeyFile;
    use crate::keys::record::KeyQuotas;
    use std::path::Path;

    const DAY: u64 = 86_400;

    fn record(id: &str, now: Timestamp) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: format!("name-{id}"),
            sha256: format!("{:0>64}", &id[4..]),
            last4: "abcd".into(),
            scopes: vec!["chat".into()],
            created_at: Timestamp(now.0 - 30 * DAY),
            ..Default::default()
        }
    }

    fn index(recs: Vec<KeyRecord>) -> std::sync::Arc<KeyIndex> {
        let text = serde_json::to_string(&KeyFile {
            version: 1,
            keys: recs,
        })
        .unwrap();
        let limits = crate::config::Config::parse("", None).unwrap().limits;
        std::sync::Arc::new(KeyIndex::load(Path::new("k"), &text, &limits, None).unwrap())
    }

    fn kinds(found: &[Found]) -> Vec<(String, Kind, Option<u64>)> {
        let mut v: Vec<_> = found
            .iter()
            .map(|f| (f.key.to_string(), f.kind, f.days_left))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn each_key_is_found_at_the_smallest_threshold_it_is_within() {
        let now = Timestamp(1_800_000_000);
        let mut recs = Vec::new();
        for (i, left) in [6 * DAY, 2 * DAY, DAY / 2, 30 * DAY, 7 * DAY]
            .iter()
            .enumerate()
        {
            let mut r = record(&format!("key_{:016}", i + 1), now);
            r.expires_at = Some(Timestamp(now.0 + left));
            recs.push(r);
        }
        let mut expired = record("key_0000000000000009", now);
        expired.expires_at = Some(Timestamp(now.0 - 1));
        recs.push(expired);
        let idx = index(recs);
        let found = detect(&idx, now, &[1, 3, 7]);
        assert_eq!(
            kinds(&found),
            [
                ("key_0000000000000001".into(), Kind::Expiring, Some(7)),
                ("key_0000000000000002".into(), Kind::Expiring, Some(3)),
                ("key_0000000000000003".into(), Kind::Expiring, Some(1)),
                ("key_0000000000000005".into(), Kind::Expiring, Some(7)),
            ]
        );
        let exp = Timestamp(now.0 + 2 * DAY);
        let two = found.iter().find(|f| f.days_left == Some(3)).unwrap();
        assert_eq!(
            two.id,
            format!("key.expiring/key_0000000000000002/3/{}", exp.0)
        );
        assert_eq!(two.until, exp);
        // Four days on, the 6-day key is within 3 days: a new event.
        let later = detect(&idx, Timestamp(now.0 + 4 * DAY), &[1, 3, 7]);
        assert!(later
            .iter()
            .any(|f| f.key.as_str() == "key_0000000000000001" && f.days_left == Some(3)));
        // Other thresholds, from [notify] expiry_days.
        let found = detect(&idx, now, &[14]);
        assert_eq!(found.len(), 4, "all but the 30-day and the expired key");
        assert!(detect(&idx, now, &[]).is_empty());
    }

    #[test]
    fn revokes_and_disables_are_news_for_a_day_and_revoked_keys_say_nothing_else() {
        let now = Timestamp(1_800_000_000);
        let mut fresh = record("key_000000000000000a", now);
        fresh.revoked_at = Some(Timestamp(now.0 - 60));
        fresh.expires_at = Some(Timestamp(now.0 + DAY));
        let mut old = record("key_000000000000000b", now);
        old.revoked_at = Some(Timestamp(now.0 - 2 * DAY));
        let mut scheduled = record("key_000000000000000c", now);
        scheduled.revoked_at = Some(Timestamp(now.0 + 60));
        let mut disabled = record("key_000000000000000d", now);
        disabled.disabled_at = Some(Timestamp(now.0 - 3_600));
        let mut disabled_long_ago = record("key_000000000000000e", now);
        disabled_long_ago.disabled_at = Some(Timestamp(now.0 - 3 * DAY));
        let idx = index(vec![fresh, old, scheduled, disabled, disabled_long_ago]);
        let found = detect(&idx, now, &[1, 3, 7]);
        assert_eq!(
            kinds(&found),
            [
                ("key_000000000000000a".into(), Kind::Revoked, None),
                ("key_000000000000000d".into(), Kind::Disabled, None),
            ]
        );
        assert_eq!(
            found[0].id,
            format!("key.revoked/key_000000000000000a/{}", now.0 - 60)
        );
        // A scheduled revoke is news once it is in force.
        let found = detect(&idx, Timestamp(now.0 + 61), &[1, 3, 7]);
        assert!(found
            .iter()
            .any(|f| f.kind == Kind::Revoked && f.key.as_str() == "key_000000000000000c"));
    }

    #[test]
    fn a_used_up_quota_is_found_once_a_key_has_used_it() {
        let now = Timestamp(1_800_000_000);
        let mut r = record("key_000000000000000f", now);
        r.quotas = KeyQuotas {
            requests_per_day: Some(1),
            ..Default::default()
        };
        let idx = index(vec![r]);
        assert!(detect(&idx, now, &[]).is_empty(), "never used: no state");
        let state = idx.state_for("key_000000000000000f").unwrap();
        let q = idx.entries().next().unwrap().quotas.as_deref().copied();
        assert!(quota::check(q.as_ref(), &state.quota, now).is_ok());
        let found = detect(&idx, now, &[]);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(f.kind, Kind::QuotaExhausted);
        let quota = f.quota.as_ref().unwrap();
        assert_eq!((quota.limit, quota.used), (1, 1));
        assert_eq!(quota.window, "2027-01-15");
        assert_eq!(
            f.id,
            "key.quota_exhausted/key_000000000000000f/requests_per_day/2027-01-15"
        );
        assert_eq!(f.until, quota.resets_at);
    }
}
