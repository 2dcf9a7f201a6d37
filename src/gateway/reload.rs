//! How `Live` changes: a key-file reload (applying only the records that changed), changes
//! applied to the index in force (the shared key store's path), the overlay compacted on a
//! thread of its own, a configuration reload. Each swaps a new `Live` in under the gateway's
//! reload lock; one that fails leaves the current value serving.

use super::upstreams::build_upstreams;
use super::{Gateway, Live};
use crate::config::Config;
use crate::keys::error::StoreError;
use crate::keys::index::reload::Reloaded;
use crate::keys::index::{ApplyError, KeyChange, KeyIndex};
use crate::keys::source::Source;
use crate::keys::store::KeyStore;
use crate::watch::Fingerprint;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Gateway {
    /// Re-reads the key file and swaps in a new index. Blocking I/O: call it from a blocking
    /// thread. On error the current index keeps serving.
    pub fn reload_keys(&self) -> Result<usize, StoreError> {
        let mut loaded = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_keys_locked(&mut loaded)
    }

    /// `reload_keys`, unless the index in force was read from the file as it is now (same
    /// fingerprint) and that load succeeded: what the key-file watcher calls, so a change
    /// this gateway has applied itself (a management write) is not applied twice.
    pub fn reload_keys_if_changed(&self) -> Result<usize, StoreError> {
        let mut loaded = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.live.load();
        if let (Some(index), Some(seen)) = (cur.keys.as_ref(), *loaded) {
            if self.reloads.key_file_ok.load(Ordering::Acquire)
                && Fingerprint::of(&cur.config.keys.file) == Some(seen)
            {
                return Ok(index.len());
            }
        }
        self.reload_keys_locked(&mut loaded)
    }

    fn reload_keys_locked(&self, loaded: &mut Option<Fingerprint>) -> Result<usize, StoreError> {
        let cur = self.live.load_full();
        // Taken before the read: a change during it makes the next look differ.
        let fingerprint = Fingerprint::of(&cur.config.keys.file);
        let store = KeyStore::new(cur.config.keys.file.clone());
        let result = KeyIndex::reload_from(
            Source::File(&store),
            &cur.config.limits,
            cur.keys.as_deref(),
        );
        match result {
            Ok((index, how)) => {
                let n = index.len();
                self.publish(&cur, index, how);
                self.reloads.key_reloads.fetch_add(1, Ordering::Relaxed);
                self.reloads
                    .last_key_reload
                    .store(crate::time::Timestamp::now().0, Ordering::Relaxed);
                self.reloads.key_file_ok.store(true, Ordering::Release);
                *loaded = fingerprint;
                self.swapped.notify_one();
                Ok(n)
            }
            Err(e) => {
                self.reloads
                    .key_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.reloads.key_file_ok.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Swaps in `index`, made from `cur`'s as `how` says, and starts a compaction if its
    /// overlay has grown enough. Call with `reload_lock` held.
    fn publish(&self, cur: &Live, index: KeyIndex, how: Reloaded) {
        match how {
            Reloaded::Rebuilt => {
                self.reloads.index_rebuilds.fetch_add(1, Ordering::Relaxed);
            }
            Reloaded::Applied { changes } => {
                self.reloads
                    .index_changes_applied
                    .fetch_add(changes as u64, Ordering::Relaxed);
            }
            Reloaded::Unchanged => return,
        }
        let compact = index.wants_compaction();
        self.live.store(Arc::new(Live {
            config: Arc::clone(&cur.config),
            keys: Some(Arc::new(index)),
            upstreams: Arc::clone(&cur.upstreams),
        }));
        if compact {
            self.start_compaction();
        }
    }

    /// Applies `changes` to the key index in force at once — O(changes × log n), whatever
    /// the number of keys; what a shared key store calls for each change it learns of. All
    /// or nothing: on `Err` the index in force is unchanged. Returns the number of keys.
    pub fn apply_key_changes(&self, changes: Vec<KeyChange>) -> Result<usize, ApplyError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.live.load_full();
        let n = changes.len();
        let empty;
        let index = match cur.keys.as_deref() {
            Some(index) => index,
            None => {
                empty = KeyIndex::empty(&cur.config.limits);
                &empty
            }
        };
        let next = index.apply(changes)?;
        let len = next.len();
        self.publish(&cur, next, Reloaded::Applied { changes: n });
        self.swapped.notify_one();
        Ok(len)
    }

    /// Folds the overlay of the index in force into a new base on a thread of its own; the
    /// changes applied meanwhile are applied to the result before it is swapped in.
    fn start_compaction(&self) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return; // one runs; it looks again when it is done
        }
        let Some(gw) = self.me.upgrade() else {
            self.compacting.store(false, Ordering::Release);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("keygate-compact".into())
            .spawn(move || gw.compact());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "key index compaction not started");
            self.compacting.store(false, Ordering::Release);
        }
    }

    fn compact(&self) {
        let from = self.live.load().keys.clone();
        let started = std::time::Instant::now();
        if let Some(from) = from {
            let compacted = from.compact();
            let took = started.elapsed();
            let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
            let cur = self.live.load_full();
            let rebased = cur
                .keys
                .as_ref()
                .and_then(|now| compacted.rebase(&from, now));
            if let Some(index) = rebased {
                tracing::info!(
                    keys = index.len(),
                    folded = from.overlay_len(),
                    since = index.overlay_len(),
                    ms = took.as_millis() as u64,
                    "key index compacted"
                );
                self.live.store(Arc::new(Live {
                    config: Arc::clone(&cur.config),
                    keys: Some(Arc::new(index)),
                    upstreams: Arc::clone(&cur.upstreams),
                }));
                self.reloads
                    .index_compactions
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.compacting.store(false, Ordering::Release);
        // Changes applied meanwhile may have filled the overlay again.
        if self
            .live
            .load()
            .keys
            .as_ref()
            .is_some_and(|k| k.wants_compaction())
        {
            self.start_compaction();
        }
    }

    /// Applies a new configuration: limits, routes, upstreams, `[server]` settings (for new
    /// connections and requests) and the log level take effect at once. The returned list
    /// names the changes that need a restart; each such setting keeps its running value, so
    /// the state stays truthful: `server.listen`, `server.tls`, `metrics.listen`, `keys.file`,
    /// `keys.reload`, `keys.poll_interval`, `log.format`, `limits.failed_auth_per_minute` and
    /// `[cluster]`.
    pub fn apply_config(&self, next: Config) -> Vec<String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.live.load_full();
        let was = &cur.config;
        let mut next = next;
        let mut restart = Vec::new();
        if next.server.listen != was.server.listen {
            restart.push(format!(
                "server.listen changed to {} (still listening on {})",
                next.server.listen, was.server.listen
            ));
            next.server.listen = was.server.listen;
        }
        // Each of these keeps its running value (and is reported) when it changes.
        macro_rules! restart_only {
            ($($field:ident).+) => {
                if next.$($field).+ != was.$($field).+ {
                    let name = stringify!($($field).+).replace(' ', "");
                    restart.push(format!("{name} changed"));
                    next.$($field).+ = was.$($field).+.clone();
                }
            };
        }
        restart_only!(server.tls);
        restart_only!(metrics.listen);
        restart_only!(keys.file);
        restart_only!(keys.reload);
        restart_only!(keys.poll_interval);
        restart_only!(keys.store);
        restart_only!(keys.snapshot_interval);
        restart_only!(log.format);
        restart_only!(limits.failed_auth_per_minute);
        restart_only!(cluster);
        let upstreams = build_upstreams(&next, &cur.upstreams, &self.metrics);
        self.metrics.set_per_key_labels(next.metrics.per_key_labels);
        let keys = cur.keys.as_ref().map(|idx| {
            if next.limits == was.limits {
                Arc::clone(idx)
            } else {
                // Limits changed: rebuild so every key's effective quota is recomputed (in
                // redis mode from the snapshot with its journal folded in).
                if let Some(sync) = &self.key_sync {
                    if let Err(e) = sync.snapshot.fold() {
                        tracing::error!(error = %e, "key snapshot not rewritten");
                        return Arc::clone(idx);
                    }
                }
                match load_index(&was.keys.file, &next.limits, Some(idx)) {
                    Ok(rebuilt) => {
                        self.reloads.index_rebuilds.fetch_add(1, Ordering::Relaxed);
                        Arc::new(rebuilt)
                    }
                    Err(_) => Arc::clone(idx),
                }
            }
        });
        self.capacity.set_cap(next.server.max_in_flight);
        self.live.store(Arc::new(Live {
            config: Arc::new(next),
            keys,
            upstreams,
        }));
        self.reloads.config_reloads.fetch_add(1, Ordering::Relaxed);
        self.swapped.notify_one();
        restart
    }

    /// Counts a configuration reload that failed (the caller logs it, once per new error).
    pub fn config_reload_failed(&self) {
        self.reloads
            .config_reload_failures
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the key file, which must exist, and indexes it in one streaming pass: no parsed
/// `KeyFile` of a million records is ever built.
fn load_index(
    file: &std::path::Path,
    limits: &crate::config::LimitDefaults,
    previous: Option<&KeyIndex>,
) -> Result<KeyIndex, StoreError> {
    let store = KeyStore::new(file.to_path_buf());
    KeyIndex::load_from(Source::File(&store), limits, previous)
}
