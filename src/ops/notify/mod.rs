//! Webhook notifications (`[notify]`): a `POST` for each key 7, 3 and 1 days before it
//! expires (`expiry_days`), and when it is revoked, disabled, or has used up a quota — each
//! sent once, even across restarts, and in cluster mode by one replica only.
//!
//! Two tasks share the ledger (`ledger`, `<state_file>.notify`): the `watcher` looks at the
//! key set and queues what is new (in cluster mode, what this replica claimed: `claim`); the
//! `deliverer` posts the queue (`webhook`, bodies from `payload`), retrying with backoff.
//!
//! The time events are found at is the usage clock (`usage::window::Clock`), which tests move
//! forward; delivery (backoff, giving up) runs on the system's.

mod claim;
mod deliverer;
pub mod event;
mod ledger;
pub mod payload;
mod shared;
mod watcher;
mod webhook;

use crate::gateway::Gateway;
use claim::Claims;
use ledger::Ledger;
use shared::Shared;
use std::sync::Arc;
use tokio::sync::Notify;

/// The running notifier; its tasks end when it is dropped.
pub struct Notifier {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the notifier of `gw` (needs a Tokio runtime). It runs whether or not `[notify]` is
/// set, doing nothing without it, so a reload can switch notifications on and off.
pub fn start(gw: Arc<Gateway>) -> Notifier {
    let cfg = gw.config();
    let ledger = Ledger::open(Ledger::path_for(&cfg.keys.state_file));
    if let Some(n) = &cfg.notify {
        tracing::info!(receiver = %n.url.shown(), "webhook notifications on");
    }
    let shared = Arc::new(Shared {
        claims: gw
            .shared
            .as_ref()
            .map(|b| Claims::new(&b.config.key_prefix)),
        gw,
        ledger,
        host: shared::hostname(),
        wake_watcher: Notify::new(),
        wake_deliverer: Notify::new(),
        redis_failures: Default::default(),
        delivery_failures: Default::default(),
    });
    let tasks = vec![
        tokio::spawn(watcher::watch(Arc::clone(&shared))),
        tokio::spawn(deliverer::deliver(Arc::clone(&shared))),
    ];
    Notifier { shared, tasks }
}

impl Notifier {
    /// Looks at the key set now (tests, after moving the clock).
    pub fn look_now(&self) {
        self.shared.wake_watcher.notify_one();
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
