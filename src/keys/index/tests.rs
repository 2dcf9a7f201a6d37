//! Unit tests of the key index (a file of their own: the index itself is long enough).

use super::base::{ct_position, ct_same, records_at_most};
use super::reload::Reloaded;
use super::*;
use crate::keys::entry::KeyName;
use crate::keys::file::KeyFile;
use crate::keys::record::{NewKey, RetiredSecret};

/// The index of `file` as the gateway builds it: through the key-file reader.
fn build(file: &KeyFile, previous: Option<&KeyIndex>) -> KeyIndex {
    let text = serde_json::to_string(file).unwrap();
    KeyIndex::load(
        std::path::Path::new("keys.json"),
        &text,
        &limits(),
        previous,
    )
    .unwrap()
}

fn limits() -> LimitDefaults {
    crate::config::Config::parse("", None).unwrap().limits
}

#[test]
fn finds_every_key_and_nothing_else() {
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    let mut tokens = Vec::new();
    for i in 0..300 {
        let (rec, token) = file
            .create(
                NewKey {
                    name: format!("k{i}"),
                    ..Default::default()
                },
                "sk_kg",
                now,
            )
            .unwrap();
        tokens.push((rec.id.clone(), token));
    }
    let idx = Arc::new(build(&file, None));
    assert_eq!(idx.len(), 300);
    for (id, token) in &tokens {
        let t = crate::keys::token::Token::parse(&token.plaintext, "sk_kg").unwrap();
        let (k, secret) = idx.lookup(&t.hash()).expect("indexed");
        assert_eq!(k.id.as_str(), id);
        assert_eq!(secret, Secret::Current);
        assert_eq!(idx.by_id(id).unwrap().id.as_str(), id);
    }
    assert!(idx.lookup(&[0u8; 32]).is_none());
    for name in [
        "",
        "k",
        "exactly-23-bytes-long-x",
        "twenty-four-bytes-long-x",
        "ünïcödé-ünïcödé-ü",
    ] {
        assert_eq!(KeyName::new(name).as_str(), name);
    }
    assert!(idx.lookup(&[0xff; 32]).is_none());
    assert!(idx.by_id("key_0000000000000000").is_none());
}

#[test]
fn constant_time_final_match() {
    let mut sorted: Vec<(KeyHash, ())> = (0u8..40).map(|i| ([i.wrapping_mul(7); 32], ())).collect();
    sorted.sort_unstable();
    for (i, (h, _)) in sorted.iter().enumerate() {
        assert_eq!(ct_position(&sorted, h), Some(i));
        // One bit off in the last byte, or past either end: no match.
        let mut near = *h;
        near[31] ^= 1;
        assert_eq!(ct_position(&sorted, &near), None);
    }
    assert_eq!(ct_position(&sorted, &[0xff; 32]), None);
    assert_eq!(ct_position::<()>(&[], &[0; 32]), None);
}

proptest::proptest! {
    /// The search orders by the leading 8 bytes as one number and then by the rest, and the
    /// final match compares whole words: it must agree with the bytes' own order and
    /// equality everywhere, ties on the leading bytes and single-byte differences included.
    #[test]
    fn search_agrees_with_byte_order(
        seeds in proptest::collection::vec((0u8..4, 0usize..32, proptest::num::u8::ANY), 0..60),
        probe in (0u8..4, 0usize..32, proptest::num::u8::ANY),
    ) {
        // Few distinct leading bytes and one differing byte: many shared prefixes.
        let hash = |(lead, at, byte): (u8, usize, u8)| {
            let mut h = [lead; 32];
            h[at] = byte;
            h
        };
        let mut sorted: Vec<(KeyHash, u32)> =
            seeds.into_iter().enumerate().map(|(i, s)| (hash(s), i as u32)).collect();
        sorted.sort_unstable_by_key(|e| e.0);
        sorted.dedup_by_key(|e| e.0);
        for (i, (h, _)) in sorted.iter().enumerate() {
            proptest::prop_assert_eq!(ct_position(&sorted, h), Some(i));
        }
        let probe = hash(probe);
        let expected = sorted.binary_search_by(|e| e.0.cmp(&probe)).ok();
        proptest::prop_assert_eq!(ct_position(&sorted, &probe), expected);
        for (h, _) in &sorted {
            proptest::prop_assert_eq!(bool::from(ct_same(h, &probe)), *h == probe);
        }
    }
}

#[test]
fn retired_secrets_are_found_until_replaced() {
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    let mut old = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let new = NewKey {
            name: format!("r{i}"),
            ..Default::default()
        };
        let (rec, tok) = file.create(new, "sk_kg", now).unwrap();
        old.push(tok);
        ids.push(rec.id);
    }
    let mut new = Vec::new();
    for id in &ids {
        let (_, tok) = file.rotate(id, 3600, "sk_kg", now).unwrap();
        new.push(tok);
    }
    let idx = Arc::new(build(&file, None));
    for ((id, old), new) in ids.iter().zip(&old).zip(&new) {
        let (k, s) = idx.lookup(&old.hash).expect("retired secret");
        assert_eq!(
            (k.id.as_str(), matches!(s, Secret::Retired { .. })),
            (id.as_str(), true)
        );
        let (k, s) = idx.lookup(&new.hash).expect("current secret");
        assert_eq!((k.id.as_str(), s), (id.as_str(), Secret::Current));
        let mut near = old.hash;
        near[31] ^= 0x80;
        assert!(idx.lookup(&near).is_none());
    }
}

#[test]
fn state_is_created_on_use_and_survives_a_rebuild() {
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    let new = |name: &str| NewKey {
        name: name.into(),
        ..Default::default()
    };
    let (a, _) = file.create(new("a"), "sk_kg", now).unwrap();
    let (b, _) = file.create(new("b"), "sk_kg", now).unwrap();
    let idx = Arc::new(build(&file, None));
    assert!(idx.used().is_empty(), "nothing allocated before use");
    let ka = idx.by_id(&a.id).unwrap();
    ka.state().usage.record_status(200);
    let next = Arc::new(build(&file, Some(&idx)));
    let again = next.by_id(&a.id).unwrap();
    assert!(Arc::ptr_eq(ka.state(), again.state()), "one state per key");
    file.revoke(&b.id, now).unwrap();
    let mut smaller = file.clone();
    smaller.keys.retain(|k| k.id != a.id);
    let last = build(&smaller, Some(&next));
    assert!(last.state_of(&a.id).is_none(), "a removed key's state goes");
}

#[tokio::test]
async fn a_rebuild_ends_the_requests_of_keys_revoked_or_removed() {
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    let new = |name: &str| NewKey {
        name: name.into(),
        ..Default::default()
    };
    let (a, _) = file.create(new("a"), "sk_kg", now).unwrap();
    let (b, _) = file.create(new("b"), "sk_kg", now).unwrap();
    let idx = Arc::new(build(&file, None));
    let (sa, sb) = (
        Arc::clone(idx.by_id(&a.id).unwrap().state()),
        Arc::clone(idx.by_id(&b.id).unwrap().state()),
    );
    let waiting = tokio::spawn({
        let sa = Arc::clone(&sa);
        async move { sa.revocation.revoked().await }
    });
    tokio::task::yield_now().await;
    file.revoke(&a.id, now).unwrap();
    let idx = Arc::new(build(&file, Some(&idx)));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("a request waiting on the revoked key was not woken")
        .unwrap();
    assert!(sa.revocation.is_revoked());
    assert!(!sb.revocation.is_revoked(), "only the revoked key");
    // Revoked by hand-editing `revoked_at` away: the key works again.
    file.keys[0].revoked_at = None;
    let idx = Arc::new(build(&file, Some(&idx)));
    assert!(!sa.revocation.is_revoked());
    // Removed from the file: its running requests end too.
    file.keys.retain(|k| k.id != b.id);
    build(&file, Some(&idx));
    assert!(sb.revocation.is_revoked());
}

#[test]
fn streaming_load_refuses_what_validation_refuses() {
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    for name in ["a", "b"] {
        let new = NewKey {
            name: name.into(),
            ..Default::default()
        };
        file.create(new, "sk_kg", now).unwrap();
    }
    let path = std::path::Path::new("keys.json");
    let load = |f: &KeyFile| {
        let text = serde_json::to_string(f).unwrap();
        KeyIndex::load(path, &text, &limits(), None)
    };
    assert_eq!(load(&file).unwrap().len(), 2);
    let invalid = |r: Result<KeyIndex, StoreError>| match r {
        Err(StoreError::Invalid { problem, .. }) => problem,
        other => panic!("{:?}", other.map(|i| i.len())),
    };
    let mut dup_id = file.clone();
    dup_id.keys[1].id = dup_id.keys[0].id.clone();
    assert!(
        invalid(load(&dup_id)).starts_with("key #2 ("),
        "the later one"
    );
    let mut dup_hash = file.clone();
    dup_hash.keys[1].sha256 = dup_hash.keys[0].sha256.clone();
    assert!(invalid(load(&dup_hash)).contains("appears twice"));
    let mut retired_copy = file.clone();
    retired_copy.keys[1].previous.push(RetiredSecret {
        sha256: file.keys[0].sha256.clone(),
        last4: "abcd".into(),
        valid_until: now,
    });
    assert!(invalid(load(&retired_copy)).contains("appears twice"));
    let mut empty_name = file.clone();
    empty_name.keys[0].name = " ".into();
    assert!(invalid(load(&empty_name)).contains("`name` is empty"));
    let mut version = file.clone();
    version.version = 9;
    assert!(invalid(load(&version)).contains("unsupported version 9"));
    for bad in [
        "{\"version\":1,\"keys\":[",
        "{\"version\":1,\"extra\":0}",
        "{\"keys\":[]}",
        "{\"version\":1,\"keys\":[],\"keys\":[]}",
        "{\"version\":1,\"version\":1,\"keys\":[]}",
    ] {
        assert!(
            matches!(
                KeyIndex::load(path, bad, &limits(), None),
                Err(StoreError::Syntax { .. })
            ),
            "{bad}"
        );
    }
    // The whole-file validator agrees on every case.
    for f in [&dup_id, &dup_hash, &retired_copy, &empty_name, &version] {
        assert!(f.validate().is_err());
    }
}

#[test]
fn a_reload_compares_text_and_misses_no_change() {
    let path = std::path::Path::new("keys.json");
    let mut file = KeyFile::empty();
    for i in 0..20 {
        let new = NewKey {
            name: format!("k{i}"),
            ..Default::default()
        };
        file.create(new, "sk_kg", Timestamp::now()).unwrap();
    }
    let reload =
        |text: &str, prev: &KeyIndex| KeyIndex::reload(path, text, &limits(), Some(prev)).unwrap();
    // A hand-formatted file: its own text is what an unchanged record is compared with.
    let pretty = serde_json::to_string_pretty(&file).unwrap();
    let (first, _) = KeyIndex::reload(path, &pretty, &limits(), None).unwrap();
    let (same, how) = reload(&pretty, &first);
    assert_eq!(how, Reloaded::Unchanged);
    // The same records laid out differently: needless changes, each applied, none missed.
    let written = crate::keys::writer::file_text(&file);
    let (again, how) = reload(&written, &same);
    assert_eq!(how, Reloaded::Applied { changes: 20 });
    assert_eq!(reload(&written, &again).1, Reloaded::Unchanged);
    // A change applied from elsewhere (the API, a shared store), then the file the writer
    // writes with it: the file holds what the index holds.
    let mut changed = file.keys[4].clone();
    changed.name = "renamed".into();
    changed.touch(Timestamp::now());
    let applied = again
        .apply(vec![super::overlay::KeyChange::Put(changed.clone())])
        .unwrap();
    file.keys[4] = changed;
    let written = crate::keys::writer::file_text(&file);
    assert_eq!(reload(&written, &applied).1, Reloaded::Unchanged);
    // One record edited in the file: exactly that change.
    file.keys[7].description = Some("edited by hand".into());
    let edited = crate::keys::writer::file_text(&file);
    let (next, how) = reload(&edited, &applied);
    assert_eq!(how, Reloaded::Applied { changes: 1 });
    let k = next.entry(&file.keys[7].id).unwrap();
    let description = k.extra.as_ref().and_then(|x| x.description());
    assert_eq!(description, Some("edited by hand"));
}

#[test]
fn records_are_never_fewer_bytes_than_the_estimate_assumes() {
    // The smallest record the writer writes: a one-letter name, one scope, nothing optional.
    let mut file = KeyFile::empty();
    let now = Timestamp::now();
    for _ in 0..1000 {
        let new = NewKey {
            name: "a".into(),
            scopes: vec!["chat".into()],
            ..Default::default()
        };
        file.create(new, "sk_kg", now).unwrap();
    }
    let text = crate::keys::writer::file_text(&file);
    assert!(
        records_at_most(text.len()) >= 1000,
        "{} bytes for 1000 records: the index would be sized for {}",
        text.len(),
        records_at_most(text.len())
    );
    // And the guess stays within a small factor of the truth, so the room it leaves unused
    // is bounded too.
    assert!(records_at_most(text.len()) < 2000);
}
