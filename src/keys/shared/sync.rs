//! `KeySync`: what a replica in redis mode shares between its follower (`ops::key_sync`),
//! its management API (a write answers once this replica applied it) and its metrics and
//! readiness (how stale the snapshot is, whether the store went backwards).

use super::RedisStore;
use crate::keys::snapshot::{Position, Snapshot};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub struct KeySync {
    pub store: Arc<RedisStore>,
    pub snapshot: Snapshot,
    /// The store position whose changes are in force here.
    applied: Mutex<Position>,
    advanced: Condvar,
    /// Whether the follower is connected to the store: `keygate_key_store_connected`.
    pub connected: AtomicBool,
    /// Unix seconds of the last time the follower knew it had everything the store had.
    pub last_contact: AtomicU64,
    /// The store is behind this replica (restarted empty, restored from an old backup):
    /// `keygate_key_store_diverged`; writes refuse until `keygate keys push`.
    pub diverged: AtomicBool,
    /// Why the store cannot be reached, while it cannot.
    pub last_error: Mutex<Option<String>>,
    /// Changes from the store put in force: `keygate_key_store_changes_applied_total`.
    pub changes_applied: AtomicU64,
    /// Full resyncs: `keygate_key_store_resyncs_total`.
    pub resyncs: AtomicU64,
    /// This replica has no key set of its own yet: it started with no snapshot, and has not
    /// since read the whole of a store that was not diverged. Until then all it knows came
    /// from a store that may have lost changes, so while the store is diverged it knows an
    /// incomplete key set. Once it has (and journalled what it read), a later loss of the
    /// store is one it holds more than, like any replica with a snapshot.
    pub without_snapshot: AtomicBool,
    /// Why this replica's snapshot cannot take the changes in force (it is set aside until it
    /// can: `keys::snapshot`), while it cannot: `keygate_key_snapshot_healthy` 0.
    snapshot_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for KeySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySync")
            .field("store", &self.store)
            .finish()
    }
}

impl KeySync {
    pub fn new(store: RedisStore, snapshot: Snapshot) -> KeySync {
        let without_snapshot = !matches!(snapshot.position(), Ok(Some(_)));
        KeySync {
            without_snapshot: AtomicBool::new(without_snapshot),
            store: Arc::new(store),
            snapshot,
            applied: Mutex::new(Position::default()),
            advanced: Condvar::new(),
            connected: AtomicBool::new(false),
            last_contact: AtomicU64::new(0),
            diverged: AtomicBool::new(false),
            last_error: Mutex::new(None),
            changes_applied: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            snapshot_error: Mutex::new(None),
        }
    }

    pub fn applied(&self) -> Position {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that the changes up to `p` are in force, waking writers waiting for them.
    pub fn set_applied(&self, p: Position) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = p;
        self.advanced.notify_all();
    }

    /// Waits until the change with store version `version` is in force here (read your
    /// writes), at most `timeout`. Whether it is.
    pub fn wait_applied(&self, version: u64, timeout: Duration) -> bool {
        let guard = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .advanced
            .wait_timeout_while(guard, timeout, |p| p.version < version)
            .unwrap_or_else(|e| e.into_inner());
        guard.version >= version
    }

    /// Seconds since this replica last knew it had every change of the store; 0 before it
    /// ever has (a replica started on its snapshot while Redis is down has no such time: the
    /// log and `keygate_key_store_connected` say it is not following).
    pub fn stale_seconds(&self) -> u64 {
        let last = self.last_contact.load(Ordering::Relaxed);
        if last == 0 {
            return 0;
        }
        crate::time::Timestamp::now().0.saturating_sub(last)
    }

    /// Whether this replica's keys are known incomplete: the store lost changes (diverged)
    /// and this replica has no snapshot of its own to make up for them.
    pub fn incomplete(&self) -> bool {
        self.without_snapshot.load(Ordering::Relaxed) && self.diverged.load(Ordering::Relaxed)
    }

    pub fn error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn snapshot_error(&self) -> Option<String> {
        self.snapshot_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_snapshot_error(&self, e: Option<String>) {
        *self
            .snapshot_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = e;
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}
