//! Unit tests of changes applied to an index (the overlay), of reloads that apply only what
//! changed, and of compaction (the property test is in `overlay_props.rs`).

use super::reload::Reloaded;
use super::*;
use crate::keys::file::{KeyFile, FILE_VERSION};
use crate::keys::record::{hash_hex, KeyRecord, RetiredSecret};
use std::path::Path;

pub(super) fn limits() -> LimitDefaults {
    crate::config::Config::parse("", None).unwrap().limits
}

/// The secret numbered `n`: distinct numbers, distinct hashes.
pub(super) fn h(n: u64) -> KeyHash {
    use sha2::Digest;
    sha2::Sha256::digest(n.to_be_bytes()).into()
}

pub(super) fn id(i: u32) -> KeyId {
    KeyId::new(&format!("key_{i:016}")).unwrap()
}

pub(super) fn rec(i: u32, secret: u64) -> KeyRecord {
    KeyRecord {
        id: id(i).to_string(),
        name: format!("k{i}"),
        sha256: hash_hex(&h(secret)),
        last4: "abcd".into(),
        scopes: vec![],
        created_at: Timestamp(1_700_000_000 + u64::from(i)),
        rev: 1,
        ..KeyRecord::default()
    }
}

pub(super) fn text(records: &[KeyRecord]) -> String {
    serde_json::to_string(&KeyFile {
        version: FILE_VERSION,
        keys: records.to_vec(),
    })
    .unwrap()
}

pub(super) fn build(records: &[KeyRecord]) -> Arc<KeyIndex> {
    Arc::new(KeyIndex::load(Path::new("keys.json"), &text(records), &limits(), None).unwrap())
}

pub(super) fn apply(idx: &KeyIndex, changes: Vec<KeyChange>) -> Arc<KeyIndex> {
    Arc::new(idx.apply(changes).unwrap())
}

/// What a lookup of `hash` says: the key's id and name, which secret, revoked, disabled.
type Answer = Option<(String, String, Secret, bool, bool)>;

pub(super) fn answer(idx: &Arc<KeyIndex>, hash: &KeyHash) -> Answer {
    let (k, s) = idx.lookup(hash)?;
    Some((
        k.id.to_string(),
        k.name.to_string(),
        s,
        k.revoked_at.is_some(),
        k.disabled_at.is_some(),
    ))
}

pub(super) fn rotated(
    mut r: KeyRecord,
    new_secret: u64,
    grace_until: Option<Timestamp>,
) -> KeyRecord {
    if let Some(valid_until) = grace_until {
        r.previous.push(RetiredSecret {
            sha256: r.sha256.clone(),
            last4: r.last4.clone(),
            valid_until,
        });
    }
    r.sha256 = hash_hex(&h(new_secret));
    r.rotated_at = Some(Timestamp::now());
    r.rev += 1;
    r
}

#[test]
fn a_rotation_stops_the_old_secret_at_once_or_keeps_it_for_its_grace() {
    let keys: Vec<KeyRecord> = (0..100).map(|i| rec(i, u64::from(i))).collect();
    let base = build(&keys);
    // Without grace: the old secret, still in the base's arrays, finds nothing.
    let idx = apply(
        &base,
        vec![KeyChange::Put(rotated(keys[7].clone(), 1007, None))],
    );
    assert_eq!(
        answer(&idx, &h(7)),
        None,
        "the old secret must not authenticate"
    );
    let (k, s) = idx.lookup(&h(1007)).unwrap();
    assert_eq!((k.id, s), (id(7), Secret::Current));
    assert_eq!(
        answer(&idx, &h(8)),
        answer(&base, &h(8)),
        "others unchanged"
    );
    assert_eq!(
        answer(&base, &h(7)).unwrap().2,
        Secret::Current,
        "base untouched"
    );
    // With grace: the old secret is a retired one until its end.
    let until = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    let idx = apply(
        &base,
        vec![KeyChange::Put(rotated(keys[7].clone(), 1007, Some(until)))],
    );
    let (k, s) = idx.lookup(&h(7)).unwrap();
    assert_eq!((k.id, s), (id(7), Secret::Retired { valid_until: until }));
    assert_eq!(idx.lookup(&h(1007)).unwrap().1, Secret::Current);
    // Rotated again, without grace: neither earlier secret works.
    let twice = rotated(rotated(keys[7].clone(), 1007, Some(until)), 2007, None);
    let idx = apply(&idx, vec![KeyChange::Put(twice)]);
    assert_eq!(
        idx.lookup(&h(7)).unwrap().1,
        Secret::Retired { valid_until: until }
    );
    assert_eq!(answer(&idx, &h(1007)), None);
    assert_eq!(idx.lookup(&h(2007)).unwrap().0.id, id(7));
    assert_eq!(idx.len(), 100);
}

#[tokio::test]
async fn revoke_disable_and_enable_apply_at_once_and_end_running_requests() {
    let keys: Vec<KeyRecord> = (0..50).map(|i| rec(i, u64::from(i))).collect();
    let base = build(&keys);
    let (a, b) = (
        base.by_id("key_0000000000000003").unwrap(),
        base.by_id("key_0000000000000004").unwrap(),
    );
    let (sa, sb) = (Arc::clone(a.state()), Arc::clone(b.state()));
    let waiting = tokio::spawn({
        let sa = Arc::clone(&sa);
        async move { sa.revocation.revoked().await }
    });
    tokio::task::yield_now().await;
    let now = Timestamp::now();
    let mut revoked = keys[3].clone();
    revoked.revoked_at = Some(now);
    let mut disabled = keys[4].clone();
    disabled.disabled_at = Some(now);
    let idx = apply(
        &base,
        vec![KeyChange::Put(revoked), KeyChange::Put(disabled)],
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("a request waiting on the revoked key was not woken")
        .unwrap();
    assert_eq!(sa.revocation.ended(), Some(Ended::Revoked));
    assert_eq!(sb.revocation.ended(), Some(Ended::Disabled));
    assert!(answer(&idx, &h(3)).unwrap().3, "found, and revoked");
    assert!(answer(&idx, &h(4)).unwrap().4, "found, and disabled");
    let again = idx.by_id("key_0000000000000004").unwrap();
    assert!(
        Arc::ptr_eq(again.state(), &sb),
        "one state per key across indexes"
    );
    // Enabled again: new requests run.
    let idx = apply(&idx, vec![KeyChange::Put(keys[4].clone())]);
    assert_eq!(sb.revocation.ended(), None);
    assert!(!answer(&idx, &h(4)).unwrap().4);
    assert_eq!(
        idx.entry("key_0000000000000004").unwrap().status(now),
        crate::keys::record::Status::Active
    );
}

#[test]
fn added_and_removed_keys_are_found_and_gone() {
    let keys: Vec<KeyRecord> = (0..20).map(|i| rec(i, u64::from(i))).collect();
    let base = build(&keys);
    let used = base.by_id("key_0000000000000005").unwrap();
    let state = Arc::clone(used.state());
    let idx = apply(
        &base,
        vec![KeyChange::Put(rec(100, 100)), KeyChange::Remove(id(5))],
    );
    assert_eq!(idx.len(), 20);
    assert_eq!(idx.lookup(&h(100)).unwrap().0.id, id(100));
    assert!(idx.by_id("key_0000000000000100").is_some());
    assert_eq!(answer(&idx, &h(5)), None);
    assert!(idx.by_id("key_0000000000000005").is_none());
    assert!(
        state.revocation.is_revoked(),
        "a removed key's requests end"
    );
    assert!(
        idx.state_of("key_0000000000000005").is_none(),
        "and its state goes"
    );
    let mut ids: Vec<KeyId> = idx.entries().map(|e| e.id).collect();
    ids.sort();
    let mut want: Vec<KeyId> = (0..20).filter(|i| *i != 5).chain([100]).map(id).collect();
    want.sort();
    assert_eq!(ids, want, "every key once");
    // A key held by a running request stays as it was found.
    assert_eq!(used.id, id(5));
    // Removed again, or never there: refused, the index unchanged.
    assert_eq!(
        idx.apply(vec![KeyChange::Remove(id(5))]).unwrap_err(),
        ApplyError::UnknownKey(id(5))
    );
    assert_eq!(
        idx.apply(vec![KeyChange::Remove(id(77))]).unwrap_err(),
        ApplyError::UnknownKey(id(77))
    );
    // Added then removed: gone.
    let idx = apply(&idx, vec![KeyChange::Remove(id(100))]);
    assert_eq!((idx.len(), answer(&idx, &h(100))), (19, None));
}

#[test]
fn no_secret_or_id_can_be_claimed_twice() {
    let until = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    let keys: Vec<KeyRecord> = (0..10).map(|i| rec(i, u64::from(i))).collect();
    let base = build(&keys);
    let idx = apply(
        &base,
        vec![KeyChange::Put(rotated(keys[1].clone(), 1001, Some(until)))],
    );
    let refused = |changes: Vec<KeyChange>| idx.apply(changes).unwrap_err();
    // Another key's current secret, in the base or in the overlay; a secret in its grace.
    assert_eq!(
        refused(vec![KeyChange::Put(rec(50, 2))]),
        ApplyError::DuplicateSecret(id(50))
    );
    assert_eq!(
        refused(vec![KeyChange::Put(rec(50, 1001))]),
        ApplyError::DuplicateSecret(id(50))
    );
    assert_eq!(
        refused(vec![KeyChange::Put(rec(50, 1))]),
        ApplyError::DuplicateSecret(id(50))
    );
    // Two new keys with one secret; one id twice in a set of changes.
    assert_eq!(
        refused(vec![
            KeyChange::Put(rec(50, 500)),
            KeyChange::Put(rec(51, 500))
        ]),
        ApplyError::DuplicateSecret(id(51))
    );
    assert_eq!(
        refused(vec![
            KeyChange::Put(rec(50, 500)),
            KeyChange::Remove(id(50))
        ]),
        ApplyError::DuplicateId(id(50))
    );
    let mut bad = rec(50, 500);
    bad.name = " ".into();
    assert!(matches!(
        refused(vec![KeyChange::Put(bad)]),
        ApplyError::Invalid(_)
    ));
    assert_eq!(answer(&idx, &h(500)), None, "nothing applied");
    // A secret may move between keys changed together, as between two versions of a file.
    let moved = apply(
        &idx,
        vec![KeyChange::Remove(id(2)), KeyChange::Put(rec(50, 2))],
    );
    assert_eq!(moved.lookup(&h(2)).unwrap().0.id, id(50));
    // An id removed and put again is a new key: the old secret is not its, its state is new.
    let old_state = Arc::clone(base.by_id("key_0000000000000003").unwrap().state());
    let removed = apply(&base, vec![KeyChange::Remove(id(3))]);
    let back = apply(&removed, vec![KeyChange::Put(rec(3, 303))]);
    assert_eq!(answer(&back, &h(3)), None);
    let k = back.lookup(&h(303)).unwrap().0;
    assert!(!Arc::ptr_eq(k.state(), &old_state));
    assert!(old_state.revocation.is_revoked());
}

#[test]
fn a_reload_applies_only_the_records_that_changed() {
    let path = Path::new("keys.json");
    let mut keys: Vec<KeyRecord> = (0..1000).map(|i| rec(i, u64::from(i))).collect();
    let (first, how) = KeyIndex::reload(path, &text(&keys), &limits(), None).unwrap();
    assert_eq!(how, Reloaded::Rebuilt);
    let (same, how) = KeyIndex::reload(path, &text(&keys), &limits(), Some(&first)).unwrap();
    assert_eq!(how, Reloaded::Unchanged);
    assert!(Arc::ptr_eq(&same.base, &first.base));
    keys[500].revoked_at = Some(Timestamp::now());
    keys.remove(10);
    keys.push(rec(2000, 2000));
    let (next, how) = KeyIndex::reload(path, &text(&keys), &limits(), Some(&same)).unwrap();
    assert_eq!(how, Reloaded::Applied { changes: 3 });
    assert!(
        Arc::ptr_eq(&next.base, &first.base),
        "the base is shared, not rebuilt"
    );
    let next = Arc::new(next);
    assert!(answer(&next, &h(500)).unwrap().3);
    assert_eq!(answer(&next, &h(10)), None);
    assert_eq!(next.lookup(&h(2000)).unwrap().0.id, id(2000));
    // Many changes: a rebuild, as cheap then.
    for k in keys.iter_mut().take(400) {
        k.name.push('!');
    }
    let (_, how) = KeyIndex::reload(path, &text(&keys), &limits(), Some(&next)).unwrap();
    assert_eq!(how, Reloaded::Rebuilt);
    // A file only a whole load can judge is judged by one, with its message.
    let mut twice = keys.clone();
    twice.push(twice[3].clone());
    let err = KeyIndex::reload(path, &text(&twice), &limits(), Some(&next)).unwrap_err();
    assert!(
        err.to_string().contains("key #1001 (key_0000000000000003)"),
        "{err}"
    );
    let mut shared = keys.clone();
    shared[5].sha256 = shared[6].sha256.clone();
    let err = KeyIndex::reload(path, &text(&shared), &limits(), Some(&next)).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
}

#[test]
fn compaction_keeps_every_answer_and_takes_later_changes_along() {
    let keys: Vec<KeyRecord> = (0..300).map(|i| rec(i, u64::from(i))).collect();
    let base = build(&keys);
    let until = Timestamp::now().plus(std::time::Duration::from_secs(60));
    let changed = apply(
        &base,
        vec![
            KeyChange::Put(rotated(keys[1].clone(), 1001, Some(until))),
            KeyChange::Put(rotated(keys[2].clone(), 1002, None)),
            KeyChange::Remove(id(3)),
            KeyChange::Put(rec(400, 400)),
        ],
    );
    let compacted = Arc::new(changed.compact());
    assert_eq!(compacted.overlay_len(), 0);
    for n in (0..300).chain([1001, 1002, 400, 9999]) {
        assert_eq!(
            answer(&compacted, &h(n)),
            answer(&changed, &h(n)),
            "secret {n}"
        );
    }
    assert_eq!(compacted.len(), changed.len());
    let order = |i: &KeyIndex| i.entries().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(order(&compacted), order(&changed), "same keys, same order");
    // Changes applied while the compaction ran are carried over.
    let later = apply(
        &changed,
        vec![
            KeyChange::Remove(id(400)),
            KeyChange::Put(rec(401, 401)),
            KeyChange::Put(rec(402, 402)),
        ],
    );
    let later = apply(&later, vec![KeyChange::Remove(id(402))]);
    let rebased = Arc::new(compacted.rebase(&changed, &later).unwrap());
    for n in (0..300).chain([1001, 1002, 400, 401, 402]) {
        assert_eq!(answer(&rebased, &h(n)), answer(&later, &h(n)), "secret {n}");
    }
    assert_eq!(rebased.len(), later.len());
    // Not a descendant (rebuilt meanwhile): of no use.
    assert!(compacted.rebase(&changed, &build(&keys)).is_none());
}
