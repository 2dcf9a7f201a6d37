//! Unit tests of `keys::ops`: each operation's rules and what it reports as changed.

use super::*;
use crate::keys::patch::{LimitsPatch, QuotasPatch};
use serde_json::json;

const NOW: Timestamp = Timestamp(1_800_000_000);

fn key() -> KeyRecord {
    let new = NewKey {
        name: "app".into(),
        description: Some("first".into()),
        metadata: [("team".to_string(), "search".to_string())].into(),
        expires_at: Some(Timestamp(NOW.0 + 86_400)),
        limits: crate::keys::record::KeyLimits {
            requests_per_minute: Some(100),
            ..Default::default()
        },
        ..NewKey::default()
    };
    create(new, "sk_kg", NOW).unwrap().record
}

fn change(field: &str, old: Value, new: Value) -> Change {
    Change {
        field: field.into(),
        old,
        new,
    }
}

#[test]
fn create_reports_every_field_set_and_no_hash() {
    let done = create(
        NewKey {
            name: "app".into(),
            ..NewKey::default()
        },
        "sk_kg",
        NOW,
    )
    .unwrap();
    assert_eq!(done.record.rev, 1);
    let fields: Vec<&str> = done.changes.iter().map(|c| c.field.as_str()).collect();
    assert!(
        fields.contains(&"name") && fields.contains(&"scopes"),
        "{fields:?}"
    );
    assert!(!fields
        .iter()
        .any(|f| f.contains("sha256") || f.contains("previous")));
    assert!(done.changes.iter().all(|c| c.old.is_null()));
}

#[test]
fn update_sets_removes_and_keeps() {
    let rec = key();
    let patch = KeyPatch {
        description: Edit::Remove,
        metadata: LabelsEdit::Merge {
            set: [("env".to_string(), "prod".to_string())].into(),
            unset: vec!["team".into()],
        },
        expires_at: Edit::Remove,
        limits: LimitsPatch {
            requests_per_minute: Edit::Remove,
            burst: Edit::Set(7),
            ..LimitsPatch::default()
        },
        quotas: QuotasPatch {
            tokens_per_day: Edit::Set(1000),
            ..QuotasPatch::default()
        },
        ..KeyPatch::default()
    };
    let done = update(&rec, patch, Timestamp(NOW.0 + 5)).unwrap();
    let next = &done.record;
    assert!(done.changed);
    assert_eq!((next.rev, next.updated_at), (2, Some(Timestamp(NOW.0 + 5))));
    assert_eq!(next.description, None);
    assert_eq!(next.expires_at, None);
    assert_eq!(next.limits.requests_per_minute, None);
    assert_eq!(next.limits.burst, Some(7));
    assert_eq!(next.quotas.tokens_per_day, Some(1000));
    assert_eq!(next.name, rec.name);
    assert_eq!(next.sha256, rec.sha256);
    assert_eq!(
        done.changes,
        vec![
            change("description", json!("first"), Value::Null),
            change("expires_at", json!(rec.expires_at), Value::Null),
            change("limits.burst", Value::Null, json!(7)),
            change("limits.requests_per_minute", json!(100), Value::Null),
            change("metadata.env", Value::Null, json!("prod")),
            change("metadata.team", json!("search"), Value::Null),
            change("quotas.tokens_per_day", Value::Null, json!(1000)),
        ]
    );
}

#[test]
fn an_update_that_changes_nothing_keeps_the_revision() {
    let rec = key();
    let patch = KeyPatch {
        description: Edit::Set("first".into()),
        ..KeyPatch::default()
    };
    let done = update(&rec, patch, NOW).unwrap();
    assert!(!done.changed);
    assert!(done.changes.is_empty());
    assert_eq!(done.record, rec);
}

#[test]
fn scopes_are_stored_by_their_canonical_names_and_null_is_inference() {
    let rec = key();
    let set = KeyPatch {
        scopes: Edit::Set(vec!["analytics:read".into(), "chat".into()]),
        ..KeyPatch::default()
    };
    let done = update(&rec, set, NOW).unwrap();
    assert_eq!(done.record.scopes, ["chat", "usage"]);
    let back = KeyPatch {
        scopes: Edit::Remove,
        ..KeyPatch::default()
    };
    let done = update(&done.record, back, NOW).unwrap();
    assert_eq!(
        done.record.scopes,
        crate::keys::scope::Scopes::inference().names()
    );
}

#[test]
fn labels_past_the_limit_are_refused_after_the_merge() {
    let rec = key();
    let set = (0..32)
        .map(|i| (format!("l{i}"), "v".to_string()))
        .collect();
    let patch = KeyPatch {
        metadata: LabelsEdit::Merge {
            set,
            unset: Vec::new(),
        },
        ..KeyPatch::default()
    };
    match update(&rec, patch, NOW) {
        Err(StoreError::Field(f)) => assert_eq!(f.field, "metadata"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn revoked_keys_cannot_be_edited_rotated_disabled_or_enabled() {
    let rec = revoke(&key(), NOW).record;
    let refused = [
        update(&rec, KeyPatch::default(), NOW).err(),
        rotate(&rec, Duration::ZERO, "sk_kg", NOW).err(),
        disable(&rec, NOW).err(),
        enable(&rec, NOW).err(),
    ];
    for (e, doing) in refused
        .into_iter()
        .zip(["edited", "rotated", "disabled", "enabled"])
    {
        match e {
            Some(StoreError::Revoked { id, doing: d }) => {
                assert_eq!((id, d), (rec.id.clone(), doing))
            }
            other => panic!("{doing}: {other:?}"),
        }
    }
    let again = revoke(&rec, Timestamp(NOW.0 + 9));
    assert!(!again.changed, "revoking twice keeps the first time");
    assert_eq!(again.record.revoked_at, Some(NOW));
}

#[test]
fn disable_and_enable_are_reversible_and_idempotent() {
    let rec = key();
    let off = disable(&rec, NOW).unwrap();
    assert_eq!(off.record.disabled_at, Some(NOW));
    assert_eq!(
        off.changes,
        vec![change("disabled_at", Value::Null, json!(NOW))]
    );
    assert!(!disable(&off.record, Timestamp(NOW.0 + 1)).unwrap().changed);
    let on = enable(&off.record, NOW).unwrap();
    assert_eq!(on.record.disabled_at, None);
    assert_eq!(on.record.rev, 3);
    assert!(!enable(&on.record, NOW).unwrap().changed);
}

#[test]
fn rotation_keeps_the_expiry_and_reports_the_new_last4_only() {
    let rec = key();
    let done = rotate(&rec, Duration::from_secs(60), "sk_kg", NOW).unwrap();
    assert_eq!(done.record.expires_at, rec.expires_at);
    assert_eq!(done.record.previous.len(), 1);
    assert!(done.token.is_some());
    assert!(done.changed);
    for c in &done.changes {
        assert!(["last4", "rotated_at"].contains(&c.field.as_str()), "{c:?}");
    }
}

#[test]
fn a_rotation_caps_every_earlier_retired_secret_at_its_grace_end() {
    // S1 retired with a day's grace, then S2 retired with none: S1 must stop too (an
    // operator who rotates with no grace because a secret leaked expects every earlier
    // secret dead), and a later rotation never extends a retired secret.
    let s1 = key();
    let day = rotate(&s1, Duration::from_secs(86_400), "sk_kg", NOW).unwrap();
    let later = Timestamp(NOW.0 + 60);
    let now = rotate(&day.record, Duration::ZERO, "sk_kg", later).unwrap();
    let until: Vec<(&str, Timestamp)> = now
        .record
        .previous
        .iter()
        .map(|p| (p.sha256.as_str(), p.valid_until))
        .collect();
    assert_eq!(
        until,
        vec![
            (s1.sha256.as_str(), later),
            (day.record.sha256.as_str(), later)
        ]
    );
    // A longer grace than an earlier secret has left leaves that one as it was.
    let week = rotate(&now.record, Duration::from_secs(7 * 86_400), "sk_kg", later).unwrap();
    assert!(week
        .record
        .previous
        .iter()
        .take(2)
        .all(|p| p.valid_until == later));
    assert_eq!(
        week.record.previous[2].valid_until,
        Timestamp(later.0 + 7 * 86_400)
    );
}
