//! Usage over time: hourly buckets per key and model (requests, tokens, errors, refusals), and
//! each key's quota counts per UTC day and month.
//!
//! The request path only adds to atomics in the key's runtime state (`keys::usage`,
//! `limit::quota`). Every second the flusher (`Usage::flush`, run by the gateway) reads what
//! every key has pending, writes it to the store, reads back the quota totals of the keys that
//! have quotas (what `limit::quota` checks against until the next second), and only then takes
//! what it wrote off the pending counts, so a store that does not answer loses nothing: it is
//! written at the next flush that succeeds (into that flush's hour).
//!
//! The store is this process's memory in file mode (`buckets`, saved in the state file by
//! `ops::usage_state`), or Redis in cluster mode (`redis`), where every replica's usage adds up.
//! `query` turns buckets into the rows of `GET /v1/usage` and `keygate usage`; `window` names
//! hours, days and months and holds the clock they are read from.

pub mod batch;
pub mod buckets;
pub mod query;
pub mod redis;
pub mod window;

use crate::keys::entry::KeyId;
use crate::keys::index::KeyIndex;
use crate::keys::usage::Counts;
use crate::limit::quota::Stored;
use crate::limit::redis::RedisBackend;
use crate::time::Timestamp;
use batch::Batch;
use buckets::{Buckets, Saved};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use window::{day_of, hour_of, month_of, Clock, Window};

/// One bucket: its hour, key, model (`""`: none) and counts.
pub type Row = (u32, KeyId, Arc<str>, Counts);

/// The gateway's usage store and its flusher's memory.
pub struct Usage {
    /// What hours, days and months are read from (tests move it forward).
    pub clock: Clock,
    store: Store,
    /// One flush at a time, and what a flush remembers.
    flusher: tokio::sync::Mutex<Flusher>,
    /// Moves whenever file mode's buckets change: the state file is saved when it moved.
    changes: AtomicU64,
}

enum Store {
    File(Mutex<Buckets>),
    Redis {
        backend: Arc<RedisBackend>,
        names: redis::Names,
    },
}

#[derive(Default)]
struct Flusher {
    /// The keys with quotas of the index flushed last, and that index.
    quota_keys: Option<(Weak<KeyIndex>, Arc<[KeyId]>)>,
    /// Failed writes to Redis in a row, and the reason last logged.
    failures: u32,
    logged: Option<String>,
}

/// Failed writes in a row before one is logged at warn (unless the limit backend's breaker
/// is open: then it has logged why Redis fails).
const LOG_AFTER: u32 = 3;

impl Flusher {
    /// The keys of `index` that have quotas, worked out once per index.
    fn quota_keys(&mut self, index: &Arc<KeyIndex>) -> Arc<[KeyId]> {
        if let Some((seen, keys)) = &self.quota_keys {
            // A live `Weak` keeps its allocation, so an equal address is the same index.
            if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(index)) {
                return Arc::clone(keys);
            }
        }
        let keys: Arc<[KeyId]> = index
            .entries()
            .filter(|e| e.quotas.is_some())
            .map(|e| e.id)
            .collect();
        self.quota_keys = Some((Arc::downgrade(index), Arc::clone(&keys)));
        keys
    }
}

impl Usage {
    /// In memory, or on the cluster's Redis when there is one.
    pub fn new(redis: Option<&Arc<RedisBackend>>) -> Usage {
        let store = match redis {
            Some(backend) => Store::Redis {
                names: redis::Names::new(&backend.config.key_prefix),
                backend: Arc::clone(backend),
            },
            None => Store::File(Mutex::default()),
        };
        Usage {
            clock: Clock::default(),
            store,
            flusher: tokio::sync::Mutex::default(),
            changes: AtomicU64::new(0),
        }
    }

    /// Usage is kept in Redis, summed over every replica.
    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    /// Moves whenever file mode's buckets change.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn buckets(m: &Mutex<Buckets>) -> std::sync::MutexGuard<'_, Buckets> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what every key of `index` has pending, keeping buckets for `retention`, and
    /// refreshes the quota totals of the keys with quotas.
    pub async fn flush(&self, index: &Arc<KeyIndex>, retention: Duration) {
        let mut f = self.flusher.lock().await;
        let quota_keys = f.quota_keys(index);
        let batch = Batch::collect(index, self.clock.now());
        match &self.store {
            Store::File(m) => {
                let mut b = Self::buckets(m);
                for (id, model, c) in &batch.buckets {
                    b.add(batch.hour, *id, &model.model, c);
                }
                for (id, _, u) in &batch.quota {
                    b.add_quota(batch.day, *id, *u);
                    b.add_quota(batch.month, *id, *u);
                }
                set_stored(index, &quota_keys, &b, batch.day, batch.month);
                // Under the lock: a query sees a count either pending or in a bucket.
                batch.drained();
                let hours = u32::try_from(retention.as_secs() / window::HOUR).unwrap_or(u32::MAX);
                let pruned = b.prune(batch.hour.saturating_sub(hours), [batch.day, batch.month]);
                if !batch.is_empty() || pruned {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Store::Redis { backend, names } => {
                if batch.is_empty() && quota_keys.is_empty() {
                    return;
                }
                // Not while Redis is known to fail (the limit backend logs why); counts stay.
                if backend.breaker_open() {
                    return;
                }
                let Some(mut conn) = backend.connection() else {
                    return;
                };
                let timeout = backend.background_timeout();
                match redis::write(&mut conn, names, &batch, retention, &quota_keys, timeout).await
                {
                    Ok(stored) => {
                        f.failures = 0;
                        if f.logged.take().is_some() {
                            tracing::info!("usage written to Redis again");
                        }
                        let mut lost = 0usize;
                        for (id, s) in stored {
                            if let Some(state) = index.state_for(&id) {
                                lost += usize::from(state.quota.set_stored(s));
                            }
                        }
                        if lost > 0 {
                            tracing::warn!(
                                keys = lost,
                                "USAGE COUNTS IN REDIS WENT BACKWARDS: Redis lost quota counts it had (restarted without persistence, or restored from a backup); quotas count from what it has now"
                            );
                        }
                        batch.drained();
                    }
                    Err(e) => {
                        f.failures += 1;
                        let told = backend.breaker_open() || f.logged.as_deref() == Some(&e);
                        if told || f.failures < LOG_AFTER {
                            tracing::debug!(error = %e, "usage not written to Redis; retried every second");
                        } else {
                            tracing::warn!(error = %e, "cannot write usage to Redis; it stays counted here and is written when Redis answers (retried every second)");
                            f.logged = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// Every bucket of the hours in `hours`, with what `index`'s keys have pending (in the
    /// current hour), so an answer is never behind this process's own requests (in cluster
    /// mode, other replicas' are up to a second behind). Taken while no flush runs, so
    /// nothing is counted both pending and stored.
    pub async fn rows(
        &self,
        index: Option<&KeyIndex>,
        hours: Range<u32>,
    ) -> Result<Vec<Row>, String> {
        let now = hour_of(self.clock.now());
        match &self.store {
            Store::File(m) => {
                // Under the buckets' lock, which the flusher moves pending counts under.
                let b = Self::buckets(m);
                let mut out = Vec::new();
                b.rows(hours.clone(), |h, k, m, c| {
                    out.push((h, k, Arc::from(m), *c));
                });
                add_pending(&mut out, index, now, &hours);
                Ok(out)
            }
            Store::Redis { backend, names } => {
                if backend.breaker_open() {
                    return Err("Redis is failing (circuit breaker open)".into());
                }
                let _no_flush = self.flusher.lock().await;
                let mut conn = backend
                    .connection()
                    .ok_or_else(|| "not connected to Redis".to_string())?;
                let timeout = backend.background_timeout() * 4;
                let mut out = redis::rows(&mut conn, names, hours.clone(), timeout).await?;
                add_pending(&mut out, index, now, &hours);
                Ok(out)
            }
        }
    }

    /// In cluster mode, a key's lifetime totals and last use summed over every replica
    /// (with what this process has not written yet); `None` in file mode (this process's
    /// counters are the totals).
    pub async fn key_totals(
        &self,
        index: Option<&KeyIndex>,
        id: &str,
    ) -> Option<Result<(Counts, Option<Timestamp>), String>> {
        let Store::Redis { backend, names } = &self.store else {
            return None;
        };
        if backend.breaker_open() {
            return Some(Err("Redis is failing (circuit breaker open)".into()));
        }
        let _no_flush = self.flusher.lock().await;
        let Some(mut conn) = backend.connection() else {
            return Some(Err("not connected to Redis".into()));
        };
        let read = redis::key_totals(&mut conn, names, id, backend.background_timeout()).await;
        Some(read.map(|(mut c, last)| {
            if let Some(state) = index.and_then(|i| i.state_of(id)) {
                for m in state.usage.pending.models().iter() {
                    c.add(&m.pending());
                }
            }
            (c, last)
        }))
    }

    /// File mode's buckets as the state file saves them; `None` in cluster mode.
    pub fn saved(&self) -> Option<Saved> {
        match &self.store {
            Store::File(m) => Some(Self::buckets(m).saved()),
            Store::Redis { .. } => None,
        }
    }

    /// Adds the buckets a state file saved (file mode), and gives `index`'s keys with quotas
    /// their counts at once, before the first request. Returns how many entries could not be
    /// read.
    pub fn restore(&self, saved: &Saved, index: &KeyIndex) -> usize {
        let Store::File(m) = &self.store else {
            return 0;
        };
        let mut b = Self::buckets(m);
        let skipped = b.merge(saved);
        let now = self.clock.now();
        let keys: Vec<KeyId> = index
            .entries()
            .filter(|e| e.quotas.is_some())
            .map(|e| e.id)
            .collect();
        set_stored(
            index,
            &keys,
            &b,
            Window::Day(day_of(now)),
            Window::Month(month_of(now)),
        );
        self.changes.fetch_add(1, Ordering::Relaxed);
        skipped
    }
}

/// Adds what `index`'s keys have pending to `rows`, as buckets of hour `now` (if in `hours`).
fn add_pending(rows: &mut Vec<Row>, index: Option<&KeyIndex>, now: u32, hours: &Range<u32>) {
    let Some(index) = index.filter(|_| hours.contains(&now)) else {
        return;
    };
    for (id, state) in index.used() {
        for m in state.usage.pending.models().iter() {
            let c = m.pending();
            if !c.is_zero() {
                rows.push((now, id, Arc::clone(&m.model), c));
            }
        }
    }
}

/// Gives each key of `keys` its quota counts in `day` and `month` as `b` holds them.
fn set_stored(index: &KeyIndex, keys: &[KeyId], b: &Buckets, day: Window, month: Window) {
    let (Window::Day(d), Window::Month(m)) = (day, month) else {
        return;
    };
    for id in keys {
        if let Some(state) = index.state_for(id) {
            state.quota.set_stored(Stored {
                day: d,
                month: m,
                in_day: b.quota(day, id),
                in_month: b.quota(month, id),
            });
        }
    }
}
