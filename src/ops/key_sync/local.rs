//! This replica's side of the follower: what it holds (`held`, read from its snapshot), the
//! records from the store it can use at all (`usable`), and putting records in force in its
//! index (`apply`).

use crate::gateway::Gateway;
use crate::keys::entry::KeyId;
use crate::keys::index::KeyChange;
use crate::keys::record::{self, KeyRecord};
use crate::keys::shared::sync::KeySync;
use crate::keys::snapshot::Seen;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// What the index holds, id → (rev, revoked), read from the snapshot.
pub fn held(sync: &KeySync) -> HashMap<KeyId, Seen> {
    match sync.snapshot.records() {
        Ok(all) => all
            .iter()
            .filter_map(|r| Some((KeyId::new(&r.id)?, Seen::of(r))))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "key snapshot unreadable: following the store from scratch");
            HashMap::new()
        }
    }
}

/// The records this version can put in force: one that is invalid (a scope a newer keygate
/// knows, a hand edit) is left out, logged by id and counted, before it is journaled. In
/// force it would be refused anyway, and in the snapshot it would make the file unreadable:
/// every later fold, and every start from it, would fail. What this replica held for that
/// key stays in force.
pub fn usable(sync: &KeySync, mut records: Vec<KeyRecord>) -> Vec<KeyRecord> {
    records.retain(|r| {
        let valid = record::validate_record(0, r).is_ok();
        if !valid {
            sync.store.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key_id = ?r.id, "a record in the key store is invalid for this version (a value a newer keygate wrote, or a hand edit): left out, and what this replica held for that key stays in force; rewrite it with the version that wrote it, or remove it (redis-cli HDEL)");
        }
        valid
    });
    records
}

/// Puts `records` in force in the index (an empty index made when there is none); one at a
/// time when they do not go together, so that one bad record holds back none of the rest.
pub fn apply(gw: &Gateway, records: Vec<KeyRecord>) {
    let changes: Vec<KeyChange> = records.iter().cloned().map(KeyChange::Put).collect();
    if let Err(e) = gw.apply_key_changes(changes) {
        tracing::warn!(error = %e, "key changes not applied together; applying them one by one");
        for r in records {
            let id = r.id.clone();
            if let Err(e) = gw.apply_key_changes(vec![KeyChange::Put(r)]) {
                tracing::error!(error = %e, key_id = %id, "key change from the store not applied");
            }
        }
    }
}
