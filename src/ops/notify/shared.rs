//! What the watcher and the deliverer share: the gateway, the ledger, the claims (cluster
//! mode), the wake-ups, and what each remembers of failures to log them once.

use super::claim::Claims;
use super::ledger::{Ledger, Settled};
use crate::gateway::Gateway;
use crate::ops::metrics::Delivery;
use crate::watch::FailureLatch;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

pub(super) struct Shared {
    pub gw: Arc<Gateway>,
    pub ledger: Ledger,
    /// In cluster mode.
    pub claims: Option<Claims>,
    /// This machine's name, for the payload's `gateway.host`.
    pub host: Option<String>,
    pub wake_watcher: Notify,
    pub wake_deliverer: Notify,
    pub redis_failures: FailureLatch,
    pub delivery_failures: FailureLatch,
}

impl Shared {
    /// Drops a waiting notification another replica took over (its claim is theirs now).
    /// Whether there was one.
    pub fn drop_taken_over(&self, id: &str) -> bool {
        match self
            .ledger
            .settle(id, Settled::Elsewhere, self.gw.usage.clock.now())
        {
            Some(p) => {
                self.gw
                    .metrics
                    .notification(p.event.event.name(), Delivery::Elsewhere);
                true
            }
            None => false,
        }
    }
}

/// The machine's name, when it has one.
pub(super) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Unix milliseconds: when notifications are queued and due (the system's time).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
