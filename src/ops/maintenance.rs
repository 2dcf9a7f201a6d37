//! The periodic task: every 10 s it saves usage (`usage_state`, when it changed: lifetime
//! counters, and in file mode the hourly buckets the gateway's flusher fills every second), warns of keys
//! about to expire (one log line per key at 7, 3 and 1 days before its expiry, so an operator
//! hears about it before its users do), and sweeps what would otherwise only grow: the
//! failed-auth guard's quiet addresses, idle upstream connections.
//!
//! The task owns what it remembers between rounds (the keys already warned about, the usage
//! last saved), and saves usage a last time when it is stopped.

use crate::gateway::Gateway;
use crate::keys::entry::KeyId;
use crate::time::Timestamp;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const THRESHOLDS_DAYS: [u64; 3] = [1, 3, 7];
const EVERY: Duration = Duration::from_secs(10);

/// The maintenance task's state.
pub struct Maintenance {
    gw: Arc<Gateway>,
    /// Set once saved usage has been restored into the index: saved usage is never
    /// overwritten before that.
    restored: Arc<AtomicBool>,
    /// Keys warned about, with the threshold (days) they crossed and the expiry it was of
    /// (an expiry extended since is warned about again when it comes near).
    warned: HashSet<(KeyId, u64, Timestamp)>,
    /// The usage fingerprint at the last save (see `usage_state::save_if_changed`).
    saved: u64,
}

/// A running maintenance task; `stop` ends it after a last save of usage.
pub struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the task and waits for its last save.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

impl Maintenance {
    pub fn new(gw: Arc<Gateway>, restored: Arc<AtomicBool>) -> Maintenance {
        Maintenance {
            gw,
            restored,
            warned: HashSet::new(),
            saved: 0,
        }
    }

    /// Runs a round every 10 s (the first one 10 s from now) until stopped.
    pub fn spawn(mut self) -> Running {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => self.round().await,
                    _ = &mut stopped => break,
                }
            }
            // At shutdown what requests counted since the last flush goes to the usage
            // store, then usage is saved whatever was restored (with no keys loaded there is
            // nothing to save).
            self.gw.flush_usage().await;
            self.save_usage().await;
        });
        Running { stop, task }
    }

    /// One round: usage saved, expiry warnings, sweeps.
    pub async fn round(&mut self) {
        if self.restored.load(Ordering::Acquire) {
            self.save_usage().await;
        }
        let _ = self.warn_expiring();
        self.gw.failed_auth.sweep();
        for u in self.gw.live().upstreams.iter() {
            u.pool().sweep();
        }
    }

    /// Writes the usage state file if the counters moved since the last save.
    async fn save_usage(&mut self) {
        let gw = Arc::clone(&self.gw);
        let path = gw.config().keys.state_file.clone();
        let mut saved = self.saved;
        let done = tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::ops::usage_state::save_if_changed(&gw, &path, &mut saved) {
                tracing::warn!(path = %path.display(), error = %e, "cannot save usage state");
            }
            saved
        })
        .await;
        if let Ok(saved) = done {
            self.saved = saved;
        }
    }

    /// Logs each key that has crossed a threshold since the last call, and returns them as
    /// (key id, days). Cheap: run it often.
    pub fn warn_expiring(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let live = self.gw.live();
        let Some(idx) = &live.keys else { return out };
        let now = Timestamp::now();
        for e in idx.entries() {
            let Some(exp) = e.expires_at else { continue };
            if exp <= now || e.revoked_at.is_some() {
                continue;
            }
            let left = now.until(exp);
            // The smallest threshold the key is within is the one to report.
            if let Some(days) = THRESHOLDS_DAYS.iter().copied().find(|d| left <= d * 86_400) {
                if self.warned.insert((e.id, days, exp)) {
                    tracing::warn!(
                        key_id = %e.id, key_name = %e.name, expires_at = %exp, days,
                        "API key expires within {days} day(s); extend it with `keygate keys update {} --expires-in DURATION` (rotating keeps the expiry)", e.id
                    );
                    out.push((e.id.to_string(), days));
                }
            }
        }
        out
    }
}
