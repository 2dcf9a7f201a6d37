//! The watcher: it looks at the key set (`event::detect`) at the start, whenever a new index
//! or configuration is swapped in (`Gateway::swapped`: a change by the CLI, the API or a file
//! edit is seen at its reload), every 10 s (time passes: thresholds, quota windows) and when
//! asked. What it finds that the ledger does not know — in cluster mode, what this replica
//! could claim — it reads the keys' records for, queues in the ledger and saves before the
//! deliverer is woken.

use super::claim::{Claim, ClaimError, Claims};
use super::event::{self, Event, Found, KeyFacts};
use super::shared::{now_ms, Shared};
use crate::gateway::Live;
use crate::keys::record::KeyRecord;
use crate::limit::redis::RedisBackend;
use crate::ops::metrics::Delivery;
use crate::time::Timestamp;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the key set is looked at when nothing changed.
const EVERY: Duration = Duration::from_secs(10);

/// The watcher: a look at the start, at every swap, every 10 s, and when asked.
pub(super) async fn watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        shared.look().await;
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.gw.swapped.notified() => {}
            _ = shared.wake_watcher.notified() => {}
        }
    }
}

impl Shared {
    /// One look at the key set: what is new is claimed (cluster mode) and queued.
    async fn look(&self) {
        let live = self.gw.live();
        let Some(cfg) = live.config.notify.as_ref() else {
            return;
        };
        let Some(index) = live.keys.clone() else {
            return;
        };
        let now = self.gw.usage.clock.now();
        let mut changed = self.ledger.prune(now);
        let found: Vec<Found> = event::detect(&index, now, &cfg.expiry_days)
            .into_iter()
            .filter(|f| !self.ledger.knows(&f.id))
            .collect();
        let mine = match (&self.claims, &self.gw.shared) {
            (Some(claims), Some(backend)) => {
                changed |= self.renew(claims, backend).await;
                self.claim(claims, backend, found, now).await
            }
            _ => found,
        };
        if !mine.is_empty() {
            let records = records(&live, &mine).await;
            let prefix = &live.config.keys.prefix;
            for f in mine {
                let key = match records.get(f.key.as_str()) {
                    Some(rec) => KeyFacts::of_record(rec, prefix, now),
                    None => match index.by_id(&f.key) {
                        Some(e) => KeyFacts::of_entry(&e, now),
                        None => continue,
                    },
                };
                let until = f.until;
                self.ledger.queue(Event::new(f, key), until, now_ms());
            }
            changed = true;
        }
        if changed {
            self.ledger.save().await;
        }
        // Also when nothing is new: what waits may have waited for a `[notify]` to come back.
        self.wake_deliverer.notify_one();
    }

    /// What of `found` this replica may send; what another has settled is remembered.
    async fn claim(
        &self,
        claims: &Claims,
        backend: &RedisBackend,
        found: Vec<Found>,
        now: Timestamp,
    ) -> Vec<Found> {
        if found.is_empty() {
            return found;
        }
        let ids: Vec<String> = found.iter().map(|f| f.id.clone()).collect();
        match claims.claim(backend, &ids, &self.ledger.replica()).await {
            Ok(answers) => {
                if self.redis_failures.succeeded() {
                    tracing::info!("notifications are claimed in Redis again");
                }
                let mut mine = Vec::new();
                for (f, answer) in found.into_iter().zip(answers) {
                    match answer {
                        Claim::Mine => mine.push(f),
                        Claim::Theirs => {}
                        Claim::Settled => {
                            self.ledger.elsewhere(&f.id, now, f.until);
                            self.gw
                                .metrics
                                .notification(f.kind.name(), Delivery::Elsewhere);
                        }
                    }
                }
                mine
            }
            Err(ClaimError::Unavailable(why)) => {
                // The limit backend logs why Redis fails.
                tracing::debug!(error = why, "notifications wait for Redis");
                Vec::new()
            }
            Err(ClaimError::Failed(e)) => {
                if self.redis_failures.failed(&e) {
                    tracing::warn!(error = %e, "notifications wait for Redis (each is claimed there so one replica sends it); retried every 10 s");
                }
                Vec::new()
            }
        }
    }

    /// Renews the claims of what waits here; drops what another replica took over.
    async fn renew(&self, claims: &Claims, backend: &RedisBackend) -> bool {
        let ids = self.ledger.pending_ids();
        if ids.is_empty() {
            return false;
        }
        let Ok(answers) = claims.claim(backend, &ids, &self.ledger.replica()).await else {
            return false;
        };
        let mut changed = false;
        for (id, answer) in ids.iter().zip(answers) {
            if answer != Claim::Mine {
                changed |= self.drop_taken_over(id);
            }
        }
        changed
    }
}

/// The records of the keys `found` is about, read from the key file (one streaming pass of
/// its one reader; only when something new was found). A key the file no longer has, or a
/// file that cannot be read now, leaves the index's facts to tell.
async fn records(live: &Live, found: &[Found]) -> HashMap<String, KeyRecord> {
    let wanted: HashSet<String> = found.iter().map(|f| f.key.to_string()).collect();
    let store = crate::keys::store::KeyStore::new(live.config.keys.file.clone());
    tokio::task::spawn_blocking(move || {
        let mut out = HashMap::new();
        if let Ok(Some(text)) = store.read_text() {
            let _ = crate::keys::file::read(store.path(), &text, &mut |rec| {
                if wanted.contains(&rec.id) {
                    out.insert(rec.id.clone(), rec);
                }
            });
        }
        out
    })
    .await
    .unwrap_or_default()
}
