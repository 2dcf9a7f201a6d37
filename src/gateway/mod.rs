//! The gateway: what lives as long as the process serves — the limiters that are not per key,
//! the Redis backend, the usage store and its flusher, the metrics, the log writer, the request
//! ids — and `Live`, everything a request reads that can change at runtime (configuration, key
//! index with its limiters, upstream pools), one value behind one `ArcSwap`: a request loads it
//! once and sees a consistent whole.
//!
//! Reloads build the next `Live` off the request path and swap it in; one that fails leaves
//! the current value serving and is logged and counted (`reload.rs`: every way `Live`
//! changes — a key reload, changes applied, a compaction, a config reload — under one lock).

use crate::config::{Config, StoreMode};
use crate::error::NotReady;
use crate::keys::index::KeyIndex;
use crate::keys::shared::sync::KeySync;
use crate::keys::shared::RedisStore;
use crate::keys::snapshot::Snapshot;
use crate::keys::store::KeyStore;
use crate::limit::failed_auth::FailedAuthGuard;
use crate::limit::inflight::Capacity;
use crate::limit::rate::RateClock;
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
use upstreams::build_upstreams;

mod reload;
mod upstreams;

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
    /// The listener's certificate reloaded (a change of its files put in force), and a
    /// reload refused: `keygate_tls_reloads_total`.
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// Unix seconds at which the listener's certificate expires; 0 without TLS:
    /// `keygate_tls_certificate_expires_at_seconds`.
    pub tls_expires_at: AtomicU64,
}

impl ReloadStats {
    /// A certificate serves from now on.
    pub fn tls_loaded(&self, expires_at: crate::time::Timestamp) {
        self.tls_expires_at.store(expires_at.0, Ordering::Relaxed);
    }
}

pub struct Gateway {
    live: ArcSwap<Live>,
    /// The shared limit backend in cluster mode (fixed at start: a change needs a restart).
    pub redis: Option<Arc<RedisBackend>>,
    /// Where replicas share usage, quota counts and notification claims: the limit backend in
    /// cluster mode, else the shared key store's Redis (`config::shared_redis`), else none.
    pub shared: Option<Arc<RedisBackend>>,
    /// Usage over time and quota counts: in memory (saved in the state file), or in Redis
    /// (`shared`). Filled every second by the flusher this gateway runs (`flush_usage`).
    pub usage: Usage,
    pub failed_auth: FailedAuthGuard,
    /// The clock every key's rate cell reads (`limit::rate`).
    pub rate_clock: RateClock,
    pub capacity: Arc<Capacity>,
    pub draining: AtomicBool,
    /// The drain ran out (`drain_timeout`): requests still running are cut by the gateway,
    /// and are logged and counted as such (`drain_timeout`), not as clients that left.
    pub drain_over: AtomicBool,
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
        let metrics = Metrics::new(
            config.metrics.per_key_labels,
            config.metrics.listen.is_some(),
        );
        let upstreams = build_upstreams(&config, &[], &metrics);
        let failed_auth = FailedAuthGuard::new(config.limits.failed_auth_per_minute);
        let capacity = Capacity::new(config.server.max_in_flight);
        let redis = config.cluster.clone().map(RedisBackend::start);
        let shared = match &redis {
            Some(r) => Some(Arc::clone(r)),
            None => crate::config::shared_redis(None, &config.keys).map(RedisBackend::start),
        };
        let usage = Usage::new(shared.as_ref());
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
            shared,
            key_sync,
            usage,
            live: ArcSwap::from_pointee(Live {
                config: Arc::new(config),
                keys: None,
                upstreams,
            }),
            failed_auth,
            rate_clock: RateClock::new(),
            capacity,
            draining: AtomicBool::new(false),
            drain_over: AtomicBool::new(false),
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
        if self.key_sync.as_ref().is_some_and(|s| s.incomplete()) {
            return Some(NotReady::KeyStoreDiverged);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica that started without a snapshot knows only what the store kept: while the
    /// store is diverged that is incomplete, and it says so; before its first contact it has
    /// no age to report (it used to say the seconds since 1970).
    #[tokio::test]
    async fn a_replica_without_a_snapshot_knows_an_incomplete_set_while_the_store_is_diverged() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[keys]\nfile = \"{}\"\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n",
            dir.path().join("keys.json").display()
        );
        let gw = Gateway::new(Config::parse(&toml, None).unwrap());
        let sync = gw.key_sync.clone().unwrap();
        assert_eq!(sync.stale_seconds(), 0);
        assert!(!sync.incomplete());
        sync.diverged.store(true, Ordering::Relaxed);
        assert!(sync.incomplete());
    }

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
