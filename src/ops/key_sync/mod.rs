//! Redis key-store mode: the follower that keeps this replica's key index and snapshot in
//! step with the shared store (`keys::shared`), on a thread of its own.
//!
//! Connected, it reads the store's epoch and version: the same epoch and a change log that
//! reaches back to its position → it applies the changes after it (`XRANGE`), then blocks
//! for more (`XREAD BLOCK`, 1 s, after which it looks at the epoch again: a Redis flushed
//! under it is seen within a second). Otherwise (first contact and every reconnection, a new
//! epoch, the version went backwards, the log trimmed past it) it resyncs in full: every record (`HSCAN`)
//! merged into what it holds (`snapshot::wins`: a higher `rev` wins, a revoked key stays
//! revoked, a key the store lacks is kept). When the store lacks what this replica has, the
//! store is behind: it is marked `diverged` (writes refuse until `keygate keys push`), said
//! loudly in the log, and counted. Every change is journaled (fsynced) before it is put in
//! force, so a revoke seen survives a crash. Redis down: the index keeps serving.
//!
//! A journal the disk refuses (full, read-only) is a local failure, not the store's: the
//! changes are put in force all the same (a revoke must not wait for disk space), the
//! snapshot is set aside so that a restart cannot serve keys from before them, and it is put
//! back with them once the disk takes them (`journal`). The connection stays up.

mod journal;
mod local;

use crate::gateway::Gateway;
use crate::keys::entry::KeyId;
use crate::keys::error::StoreError;
use crate::keys::record::KeyRecord;
use crate::keys::shared::read::StorePosition;
use crate::keys::shared::sync::KeySync;
use crate::keys::snapshot::{wins, Position, Seen};
use journal::Unjournaled;
use local::held;
pub use local::load_snapshot;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Changes read per round.
const BATCH: usize = 1000;
/// Above this many records a resync rewrites the snapshot and reloads rather than applying.
const REBUILD_ABOVE: usize = 10_000;
/// A session shorter than this does not reset the reconnection backoff: a failure right
/// after each connect must not become a full resync ten times a second.
const SETTLED: Duration = Duration::from_secs(10);

/// Starts the follower and the snapshot writer. `seen` is what the index holds (the
/// snapshot as loaded).
pub fn start(gw: &Arc<Gateway>, sync: Arc<KeySync>) {
    let weak = Arc::downgrade(gw);
    let s = Arc::clone(&sync);
    let follower = std::thread::Builder::new()
        .name("keygate-key-sync".into())
        .spawn(move || follow(weak, s));
    if let Err(e) = follower {
        tracing::error!(error = %e, "key store follower not started: this replica will not see key changes");
    }
    let weak = Arc::downgrade(gw);
    let every = gw.config().keys.snapshot_interval;
    let writer = std::thread::Builder::new()
        .name("keygate-snapshot".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if weak.strong_count() == 0 {
                return;
            }
            if let Err(e) = sync.snapshot.fold() {
                tracing::error!(error = %e, "key snapshot not rewritten (the journal keeps every change)");
            }
        });
    if let Err(e) = writer {
        tracing::error!(error = %e, "key snapshot writer not started");
    }
}

struct Follower {
    gw: Weak<Gateway>,
    sync: Arc<KeySync>,
    held: HashMap<KeyId, Seen>,
    /// Whether a full resync has run in this process (the first contact always does one).
    resynced: bool,
    /// Changes in force that the snapshot (set aside) lacks, while the disk refuses them.
    unjournaled: Option<Unjournaled>,
}

fn follow(gw: Weak<Gateway>, sync: Arc<KeySync>) {
    match sync.snapshot.discard_aside() {
        Ok(true) => {
            tracing::warn!(snapshot = %sync.snapshot.path().display(), "removed a key snapshot an earlier run set aside (its disk refused changes): the store has them")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "a key snapshot an earlier run set aside cannot be removed")
        }
    }
    if let Ok(Some(p)) = sync.snapshot.position() {
        sync.set_applied(p);
    }
    let mut f = Follower {
        held: held(&sync),
        gw,
        sync,
        resynced: false,
        unjournaled: None,
    };
    let mut backoff = Duration::from_millis(100);
    // Down until the first contact works: a store unreachable from the start was never
    // "lost", and waiting for a reconnection that never had a connection would only delay
    // the error.
    let mut down_since: Option<Instant> = Some(Instant::now());
    let mut last_said = Instant::now();
    let mut told: Option<String> = None;
    while f.gw.strong_count() > 0 {
        let err = match f.sync.store.connect(Duration::from_secs(3)) {
            Ok(mut con) => {
                let connected = Instant::now();
                // A new connection starts with a full resync: while this replica was cut
                // off, Redis may have been restored from a backup and written to again, its
                // version numbers reused for other changes (a revoke among them) that the
                // position alone would take for ones already applied.
                f.resynced = false;
                let e = f.session(&mut con, &mut down_since);
                f.sync.connected.store(false, Ordering::Relaxed);
                if connected.elapsed() >= SETTLED {
                    backoff = Duration::from_millis(100);
                }
                e
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        f.sync.set_error(Some(msg.clone()));
        // A file of this replica's (its snapshot), not the store: said as such, so that no
        // one goes looking for a Redis problem.
        let local = matches!(
            err,
            StoreError::Read { .. }
                | StoreError::Write { .. }
                | StoreError::Syntax { .. }
                | StoreError::Invalid { .. }
        );
        let was_down = local || down_since.is_some();
        if !local {
            down_since.get_or_insert_with(Instant::now);
        }
        if !was_down {
            // The first failure after a working session: a Redis restart or a dropped
            // connection, which the reconnection right after usually mends. An error only
            // if it does not (once per reason, and every minute while it lasts).
            told = None;
            tracing::warn!(error = %msg, "key store connection lost; reconnecting");
        } else if told.as_deref() != Some(msg.as_str())
            || last_said.elapsed() >= Duration::from_secs(60)
        {
            told = Some(msg.clone());
            last_said = Instant::now();
            if local {
                tracing::error!(error = %msg, "key store follower stopped on an error of this replica, not of Redis; starting over");
            } else {
                tracing::error!(
                    error = %msg,
                    stale_seconds = f.sync.stale_seconds(),
                    down_seconds = down_since.map_or(0, |s| s.elapsed().as_secs()),
                    "key store unreachable: serving the key snapshot, key changes are not seen and writes fail until it answers"
                );
            }
        }
        // The disk may take a snapshot set aside back while Redis is down, when a restart
        // would need it most.
        journal::restore(&mut f.unjournaled, &f.sync);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl Follower {
    /// Follows the store on one connection until it fails.
    fn session(
        &mut self,
        con: &mut redis::Connection,
        down_since: &mut Option<Instant>,
    ) -> StoreError {
        loop {
            let Some(gw) = self.gw.upgrade() else {
                return StoreError::Unavailable("the gateway stopped".into());
            };
            let step = self.step(&gw, con);
            drop(gw);
            match step {
                Ok(caught_up) => {
                    if down_since.take().is_some() || !self.sync.connected.load(Ordering::Relaxed) {
                        if self.sync.error().is_some() {
                            tracing::info!("key store reachable again: following its changes");
                        }
                        self.sync.set_error(None);
                    }
                    self.sync.connected.store(true, Ordering::Relaxed);
                    if caught_up {
                        self.sync
                            .last_contact
                            .store(crate::time::Timestamp::now().0, Ordering::Relaxed);
                        let after = self.sync.applied().version;
                        if let Err(e) = self.sync.store.wait(con, after, 1000) {
                            return e;
                        }
                    }
                }
                Err(e) => return e,
            }
        }
    }

    /// One round: applies what is new. Whether this replica has caught up.
    fn step(&mut self, gw: &Gateway, con: &mut redis::Connection) -> Result<bool, StoreError> {
        journal::restore(&mut self.unjournaled, &self.sync);
        let pos = self.sync.store.position(con)?;
        self.sync
            .diverged
            .store(pos.diverged.is_some(), Ordering::Relaxed);
        let local = self.sync.applied();
        let same_epoch = pos.epoch.as_deref().unwrap_or("") == local.epoch;
        let reaches = pos.version == local.version
            || (pos.version > local.version && pos.oldest.is_some_and(|o| o <= local.version + 1));
        if !(self.resynced && same_epoch && reaches) {
            self.resync(gw, con, &pos)?;
            return Ok(true);
        }
        if pos.version == local.version {
            return Ok(true);
        }
        let changes = self.sync.store.changes(con, local.version, BATCH)?;
        let Some(last) = changes.last().map(|c| c.0) else {
            return Ok(true);
        };
        let mut ids: Vec<String> = changes.into_iter().map(|c| c.1).collect();
        ids.sort();
        ids.dedup();
        let records = self.sync.store.records(con, &ids)?;
        let position = Position {
            epoch: local.epoch,
            version: last,
        };
        self.put_in_force(gw, records, position)?;
        Ok(last >= pos.version)
    }

    /// Journals the records that win over what is held (and that this version can use at
    /// all: `local::usable`), then applies them to the index.
    fn put_in_force(
        &mut self,
        gw: &Gateway,
        records: Vec<KeyRecord>,
        position: Position,
    ) -> Result<(), StoreError> {
        let winners: Vec<KeyRecord> = local::usable(&self.sync, records)
            .into_iter()
            .filter(|r| KeyId::new(&r.id).is_some_and(|id| wins(self.held.get(&id).copied(), r)))
            .collect();
        // Durable before in force: a revoke seen here is never forgotten.
        let durable = journal::append(&mut self.unjournaled, &self.sync, &winners, &position);
        let n = winners.len();
        let rebuild = durable && (n > REBUILD_ABOVE || gw.live().keys.is_none());
        for r in &winners {
            if let Some(id) = KeyId::new(&r.id) {
                self.held.insert(id, Seen::of(r));
            }
        }
        // Rebuilt from the snapshot when it is on disk; otherwise (none yet, or a disk that
        // refuses the rewrite, or a file that does not load) applied in memory, an empty
        // index made when there is none: `held` already has them, so no later resync would.
        let rebuilt = rebuild
            && match self.sync.snapshot.fold() {
                Ok(_) if !self.sync.snapshot.path().exists() => false,
                Ok(_) => match gw.reload_keys() {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "key snapshot rewritten but not loaded: the changes are applied in memory");
                        false
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "key snapshot not rewritten (the journal keeps every change): the changes are applied in memory");
                    false
                }
            };
        if !rebuilt && (n > 0 || gw.live().keys.is_none()) {
            local::apply(gw, winners);
        }
        self.sync
            .changes_applied
            .fetch_add(n as u64, Ordering::Relaxed);
        self.sync.set_applied(position);
        Ok(())
    }

    /// Reads every record of the store and merges it in; marks the store diverged when it
    /// lacks what this replica holds.
    fn resync(
        &mut self,
        gw: &Gateway,
        con: &mut redis::Connection,
        pos: &StorePosition,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut store: HashMap<KeyId, Seen> = HashMap::with_capacity(self.held.len());
        let mut records = Vec::new();
        let unreadable = self.sync.store.scan(con, &mut |r| {
            if let Some(id) = KeyId::new(&r.id) {
                store.insert(id, Seen::of(&r));
                records.push(r);
            }
        })?;
        // Behind: the store lacks a key, or a revoke, or a later revision this replica holds.
        // A store that has the key revoked is not behind on it, whatever revision this
        // replica holds unrevoked (revocation is final; e.g. `keys push` revoking again a key
        // a restored backup had unrevoked with a higher `rev`): counting it would mark the
        // store diverged again after every push. A record this version cannot read is not
        // missing: the store has it (what this replica holds for it stays in force).
        let behind: Vec<&KeyId> = self
            .held
            .iter()
            .filter(|(id, _)| !unreadable.iter().any(|u| u == id.as_str()))
            .filter(|(id, h)| {
                store.get(id).is_none_or(|s| match (h.revoked, s.revoked) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => s.rev < h.rev,
                })
            })
            .map(|(id, _)| id)
            .collect();
        if !behind.is_empty() {
            let why = format!(
                "the store lacks {} key change(s) replica snapshots hold (restarted empty or from an old backup); run `keygate keys push`",
                behind.len()
            );
            tracing::error!(
                missing_or_older = behind.len(),
                store_version = pos.version,
                applied_version = self.sync.applied().version,
                "KEY STORE WENT BACKWARDS: keeping this replica's snapshot (no key dropped, no revoke undone); writes are refused until `keygate keys push` restores the store"
            );
            self.sync
                .store
                .set_diverged(con, pos.epoch.as_deref(), &why)?;
            self.sync.diverged.store(true, Ordering::Relaxed);
        }
        let position = Position {
            epoch: pos.epoch.clone().unwrap_or_default(),
            version: pos.version,
        };
        let intact = pos.diverged.is_none() && behind.is_empty();
        let n = records.len();
        self.put_in_force(gw, records, position)?;
        if intact {
            // The whole of an intact store is in force here (and in the journal): this
            // replica's own key set from now on.
            self.sync.without_snapshot.store(false, Ordering::Relaxed);
        }
        self.resynced = true;
        self.sync.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            keys = n,
            version = pos.version,
            ms = started.elapsed().as_millis() as u64,
            "key store resynced in full"
        );
        Ok(())
    }
}
