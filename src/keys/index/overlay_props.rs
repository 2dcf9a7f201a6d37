//! A property test of the overlay: any sequence of changes — applied one by one, a reload at a
//! time, or compacted on the way — answers every lookup as a rebuild from the resulting file
//! does.

use super::overlay_tests::{answer, build, h, limits, rec, rotated, text};
use super::*;
use crate::keys::record::KeyRecord;
use proptest::prelude::*;
use std::path::Path;

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Add,
    Rotate {
        key: usize,
        grace: bool,
    },
    Revoke(usize),
    Disable(usize),
    Enable(usize),
    Rename(usize),
    Remove(usize),
    Compact,
    /// Apply what changed so far through a reload of the file.
    Reload,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Add),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(key, grace)| Step::Rotate { key, grace }),
        1 => any::<usize>().prop_map(Step::Revoke),
        1 => any::<usize>().prop_map(Step::Disable),
        1 => any::<usize>().prop_map(Step::Enable),
        1 => any::<usize>().prop_map(Step::Rename),
        2 => any::<usize>().prop_map(Step::Remove),
        1 => Just(Step::Compact),
        1 => Just(Step::Reload),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Applied one by one (or a reload at a time, or compacted on the way), any history of
    /// changes answers every lookup and every id as a rebuild from its final file does.
    #[test]
    fn random_changes_answer_as_a_rebuild_does(
        steps in proptest::collection::vec((step(), any::<bool>()), 1..40)
    ) {
        let path = Path::new("keys.json");
        let mut file: Vec<KeyRecord> = (0..12).map(|i| rec(i, u64::from(i))).collect();
        let mut idx = build(&file);
        let mut next_id = 12u32;
        let mut next_secret = 1000u64;
        let mut pending = Vec::new(); // changes made to the file, not yet to `idx`
        let now = Timestamp::now();
        for (s, at_once) in steps {
            let pick = |i: usize| (!file.is_empty()).then(|| i % file.len());
            let change = match s {
                Step::Add => {
                    file.push(rec(next_id, next_secret));
                    next_id += 1;
                    next_secret += 1;
                    file.last().cloned().map(KeyChange::Put)
                }
                Step::Rotate { key, grace } => pick(key).map(|i| {
                    let until = grace.then(|| now.plus(std::time::Duration::from_secs(600)));
                    file[i] = rotated(file[i].clone(), next_secret, until);
                    next_secret += 1;
                    KeyChange::Put(file[i].clone())
                }),
                Step::Revoke(k) => pick(k).map(|i| { file[i].revoked_at = Some(now); KeyChange::Put(file[i].clone()) }),
                Step::Disable(k) => pick(k).map(|i| { file[i].disabled_at = Some(now); KeyChange::Put(file[i].clone()) }),
                Step::Enable(k) => pick(k).map(|i| { file[i].disabled_at = None; KeyChange::Put(file[i].clone()) }),
                Step::Rename(k) => pick(k).map(|i| { file[i].name.push('x'); KeyChange::Put(file[i].clone()) }),
                Step::Remove(k) => pick(k).map(|i| KeyChange::Remove(KeyId::new(&file.remove(i).id).unwrap())),
                Step::Compact => { idx = Arc::new(idx.compact()); None }
                Step::Reload => {
                    let (next, _) = KeyIndex::reload(path, &text(&file), &limits(), Some(&idx)).unwrap();
                    idx = Arc::new(next);
                    pending.clear();
                    None
                }
            };
            if let Some(c) = change {
                // Some changes go in at once, the rest with the next reload.
                if at_once && pending.is_empty() {
                    idx = Arc::new(idx.apply(vec![c]).unwrap());
                } else {
                    pending.push(c);
                }
            }
        }
        let (reloaded, _) = KeyIndex::reload(path, &text(&file), &limits(), Some(&idx)).unwrap();
        let idx = Arc::new(reloaded);
        let rebuilt = build(&file);
        for n in (0..12).chain(1000..next_secret) {
            prop_assert_eq!(answer(&idx, &h(n)), answer(&rebuilt, &h(n)), "secret {}", n);
        }
        for i in 0..next_id {
            let id = format!("key_{i:016}");
            prop_assert_eq!(idx.by_id(&id).map(|k| k.name.to_string()), rebuilt.by_id(&id).map(|k| k.name.to_string()));
        }
        prop_assert_eq!(idx.len(), rebuilt.len());
        let mut ids: Vec<KeyId> = idx.entries().map(|e| e.id).collect();
        ids.sort();
        let mut want: Vec<KeyId> = rebuilt.entries().map(|e| e.id).collect();
        want.sort();
        prop_assert_eq!(ids, want);
        let compacted = Arc::new(idx.compact());
        for n in (0..12).chain(1000..next_secret) {
            prop_assert_eq!(answer(&compacted, &h(n)), answer(&rebuilt, &h(n)), "compacted, secret {}", n);
        }
    }
}
