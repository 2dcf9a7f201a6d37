//! The gateway: what lives as long as the process serves — the limiters that are not per key,
//! the Redis backend, the usage store and its flusher, the metrics, the log writer, the request
//! ids — and `Live`, everything a request reads that can change at runtime (configuration, key
//! index with its limiters, upstream pools), one value behind one `ArcSwap`: a request loads it
//! once and sees a consistent whole.
//!
//! Reloads build the next `Live` off the request path and swap it in; one that fails leaves
//! the current value serving and is logged and counted. A key change is applied to the index
//! in force rather than rebuilding it, and the index's overlay is compacted on a thread of
//! its own. It is one cohesive thing, longer than most files: the reloadable state and every
//! way it changes — a key reload, changes applied, a compaction, a config reload — under one
//! lock.

use crate::config::{Config, StoreMode};
use crate::error::NotReady;
use crate::keys::error::StoreError;
use crate::keys::index::reload::Reloaded;
use crate::keys::index::{ApplyError, KeyChange, KeyIndex};
use crate::keys::shared::sync::KeySync;
use crate::keys::shared::RedisStore;
use crate::keys::snapshot::Snapshot;
use crate::keys::store::KeyStore;
use crate::limit::failed_auth::FailedAuthGuard;
use crate::limit::inflight::Capacity;
use crate::limit::redis::RedisBackend;
use crate::ops::logging::Logging;
use crate::ops::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::server::request_id::RequestIds;
use crate::usage::Usage;
use crate::watch::Fingerprint;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// One consistent view of everything reloadable.
pub struct Live {
    pub config: Arc<Config>,
    /// `None` until a key file has loaded: the gateway answers 503 `not_ready`.
    pub keys: Option<Arc<KeyIndex>>,
    pub upstreams: Arc<[Arc<Upstream>]>,
}

impl Live {
    /// The upstream for a model: the first whose patterns match.
    pub fn upstream_for(&self, model: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.serves(model))
    }

    pub fn default_upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstreams.first()
    }
}

#[derive(Debug, Default)]
pub struct ReloadStats {
    pub key_reloads: AtomicU64,
    pub key_reload_failures: AtomicU64,
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// Unix seconds of the last successful key reload.
    pub last_key_reload: AtomicU64,
    /// Whether the last attempt to load the key file succeeded. While it is false the keys
    /// in force may be stale (a revoke not applied): `keygate_key_file_healthy`.
    pub key_file_ok: AtomicBool,
    /// Key indexes built from scratch: `keygate_key_index_rebuilds_total`.
    pub index_rebuilds: AtomicU64,
    /// Keys changed, added or removed by applying only them to the index in force:
    /// `keygate_key_index_changes_applied_total`.
    pub index_changes_applied: AtomicU64,
    /// Overlays folded into a new base: `keygate_key_index_compactions_total`.
    pub index_compactions: AtomicU64,
}

pub struct Gateway {
    live: ArcSwap<Live>,
    /// The shared limit backend in cluster mode (fixed at start: a change needs a restart).
    pub redis: Option<Arc<RedisBackend>>,
    /// Usage over time and quota counts: in memory (saved in the state file), or in Redis in
    /// cluster mode. Filled every second by the flusher this gateway runs (`flush_usage`).
    pub usage: Usage,
    pub failed_auth: FailedAuthGuard,
    pub capacity: Arc<Capacity>,
    pub draining: AtomicBool,
    pub reloads: ReloadStats,
    /// Redis key-store mode (`[keys] store = "redis"`): the store, this replica's snapshot
    /// of it, and how far the follower (`ops::key_sync`) has applied it. Fixed at start.
    pub key_sync: Option<Arc<KeySync>>,
    /// The gateway's metrics (its own recorder; rendered by `ops::metrics::scrape`).
    pub metrics: Metrics,
    /// The log writer, once `logging::init` has run (not in tests that skip it): access
    /// lines go there, and its level follows config reloads.
    pub logging: OnceLock<Logging>,
    /// The gateway's own request ids.
    pub request_ids: RequestIds,
    /// Woken whenever a new `Live` is swapped in (a key reload, a configuration reload), so
    /// the notifier (`ops::notify`) looks at the key set at once: a revoke or a disable is
    /// seen however it was made (the CLI, the API, a file edit). One permit is kept while
    /// nobody waits.
    pub swapped: tokio::sync::Notify,
    /// Serialises reloads so two never build from the same base, and holds the fingerprint
    /// of the key file the index in force was read from (see `reload_keys_if_changed`).
    reload_lock: Mutex<Option<Fingerprint>>,
    /// Set while a compaction of the key index runs (at most one at a time).
    compacting: AtomicBool,
    /// This gateway, for the compaction thread to hold.
    me: Weak<Gateway>,
}

impl Gateway {
    /// A gateway with `config`; the key file is loaded by `reload_keys`.
    pub fn new(config: Config) -> Arc<Gateway> {
        let metrics = Metrics::new(config.metrics.per_key_labels);
        let upstreams = build_upstreams(&config, &[], &metrics);
        let failed_auth = FailedAuthGuard::new(config.limits.failed_auth_per_minute);
        let capacity = Capacity::new(config.server.max_in_flight);
        let redis = config.cluster.clone().map(RedisBackend::start);
        let usage = Usage::new(redis.as_ref());
        let key_sync = match &config.keys.store {
            StoreMode::File => None,
            StoreMode::Redis(cfg) => match RedisStore::new(cfg) {
                Ok(store) => Some(Arc::new(KeySync::new(
                    store,
                    Snapshot::new(&config.keys.file),
                ))),
                Err(e) => {
                    tracing::error!(error = %e, "the key store cannot be used");
                    None
                }
            },
        };
        let gw = Arc::new_cyclic(|me| Gateway {
            redis,
            key_sync,
            usage,
            live: ArcSwap::from_pointee(Live {
                config: Arc::new(config),
                keys: None,
                upstreams,
            }),
            failed_auth,
            capacity,
            draining: AtomicBool::new(false),
            reloads: ReloadStats::default(),
            metrics,
            logging: OnceLock::new(),
            request_ids: RequestIds::default(),
            swapped: tokio::sync::Notify::new(),
            reload_lock: Mutex::new(None),
            compacting: AtomicBool::new(false),
            me: me.clone(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(flush_usage_every_second(Arc::downgrade(&gw)));
        }
        gw
    }

    /// Writes the usage every key has counted since the last flush to the usage store, and
    /// reads back the quota counts of keys with quotas. Runs every second, off the request
    /// path; call it to flush now (at shutdown, in tests).
    pub async fn flush_usage(&self) {
        let live = self.live();
        if let Some(index) = &live.keys {
            self.usage.flush(index, live.config.usage.retention).await;
        }
    }

    /// The current state. Hold the `Arc` for the whole request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.live.load().config)
    }

    pub fn store(&self) -> KeyStore {
        KeyStore::new(self.live.load().config.keys.file.clone())
    }

    /// Ready: keys loaded, not draining, and, with `[keys] unready_on_load_error`, the key
    /// file's last load succeeded.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why `/readyz` fails now, if it does: every health-checked upstream must have passed
    /// its last check (see `health`).
    pub fn not_ready(&self) -> Option<NotReady> {
        if self.draining.load(Ordering::Acquire) {
            return Some(NotReady::Draining);
        }
        let live = self.live.load();
        if live.keys.is_none() {
            if let Some(sync) = &self.key_sync {
                let why = sync.error().unwrap_or_else(|| "connecting".into());
                return Some(NotReady::KeyStore(why.into()));
            }
            return Some(NotReady::NoKeys);
        }
        if live.config.keys.unready_on_load_error
            && !self.reloads.key_file_ok.load(Ordering::Acquire)
        {
            return Some(NotReady::KeyFile);
        }
        live.upstreams
            .iter()
            .find(|u| !u.is_healthy())
            .map(|u| NotReady::Upstream(Arc::clone(&u.name)))
    }

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
        let result = store
            .read_text()
            .and_then(|text| text.ok_or_else(|| store.not_found()))
            .and_then(|text| {
                KeyIndex::reload(store.path(), &text, &cur.config.limits, cur.keys.as_deref())
            });
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

/// The usage flusher: every second while the gateway lives.
async fn flush_usage_every_second(gw: Weak<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gw) = gw.upgrade() else { return };
        gw.flush_usage().await;
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
    let text = store.read_text()?.ok_or_else(|| store.not_found())?;
    KeyIndex::load(store.path(), &text, limits, previous)
}

/// Builds upstreams, reusing connection pools of unchanged ones.
fn build_upstreams(
    config: &Config,
    prev: &[Arc<Upstream>],
    metrics: &Metrics,
) -> Arc<[Arc<Upstream>]> {
    config
        .upstreams
        .iter()
        .map(|u| {
            let reused = prev.iter().find(|p| p.same_pool(u));
            let series = metrics.upstream(&u.name, u.health.is_some());
            Arc::new(match reused {
                Some(p) => p.with_config(u.clone(), series),
                None => Upstream::new(u.clone(), series),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn restart_only_settings_are_reported_and_keep_their_running_value() {
        let gw = Gateway::new(Config::parse("", None).unwrap());
        let next = Config::parse(
            "[keys]\npoll_interval = \"9s\"\n[log]\nformat = \"json\"\n[limits]\nfailed_auth_per_minute = 3\nrequests_per_minute = 7\n",
            None,
        )
        .unwrap();
        let restart = gw.apply_config(next);
        assert_eq!(
            restart,
            [
                "keys.poll_interval changed",
                "log.format changed",
                "limits.failed_auth_per_minute changed"
            ]
        );
        let now = gw.config();
        assert_eq!(now.keys.poll_interval, std::time::Duration::from_secs(1));
        assert_eq!(now.log.format, crate::config::LogFormat::Text);
        assert_eq!(now.limits.failed_auth_per_minute, 30);
        assert_eq!(
            now.limits.requests_per_minute, 7,
            "what applies live applies"
        );
    }
}
