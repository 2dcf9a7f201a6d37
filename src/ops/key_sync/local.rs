//! This replica's side of the follower: its snapshot put in force at start (`load_snapshot`)
//! and what it holds (`held`), the records from the store it can use at all (`usable`), and
//! putting records in force in its index (`apply`).
//!
//! Reading the snapshot needs no write: a fold that cannot rewrite the file (a full or
//! read-only disk) must not make a readable snapshot, and the revokes in its journal, count
//! for nothing: the replica would serve nothing while Redis is down, and follow a store that
//! lost a revoke from scratch, un-revoking the key.

use crate::gateway::Gateway;
use crate::keys::entry::KeyId;
use crate::keys::index::KeyChange;
use crate::keys::record::{self, KeyRecord};
use crate::keys::shared::sync::KeySync;
use crate::keys::snapshot::Seen;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Puts the snapshot in force at start: the file with its journal folded in, loaded as a key
/// file (`load_file`). When the fold cannot write, the file and journal are read as they
/// are, merged in memory, and applied to the index.
pub fn load_snapshot(gw: &Gateway, sync: &KeySync, load_file: impl FnOnce()) {
    let err = match sync.snapshot.fold() {
        Ok(_) if sync.snapshot.path().exists() => return load_file(),
        Ok(_) => {
            tracing::warn!("no key snapshot on disk yet: not ready until the key store answers");
            return;
        }
        Err(e) => e,
    };
    match sync.snapshot.read_records() {
        Ok(all) if !all.is_empty() => {
            tracing::error!(error = %err, keys = all.len(), "key snapshot cannot be rewritten: serving it as read, its journal merged in memory");
            apply(gw, all);
        }
        Ok(_) => {
            tracing::warn!("no key snapshot on disk yet: not ready until the key store answers")
        }
        Err(e) => tracing::error!(error = %e, rewrite = %err, "key snapshot not loaded"),
    }
}

/// What the index holds, id → (rev, revoked), read from the snapshot (as it is, the journal
/// merged in memory, when it cannot be rewritten: `Snapshot::records`).
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
