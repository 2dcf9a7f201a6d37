//! A connection in use by one request, and what an upstream's connections share.
//!
//! A lease dropped before its answer ended closes its connection: HTTP/1.1 has no other way
//! to cancel a request, and an inference server stops generating when its connection closes.
//! The connection was healthy, though, and without a replacement the next request would pay
//! for a new one (a TCP and maybe a TLS handshake, and the upstream's accept) on its own
//! critical path. So a healthy connection closed that way is replaced at once, in the
//! background, onto the idle stack: a chat's "stop" button, a client's timeout or a load
//! generator ending its run leave the pool as large as it was. At most `MAX_IDLE`
//! connections are idle or being made; a replacement that cannot connect is given up, not
//! retried.

use super::conn::{Idle, UpstreamConn, MAX_IDLE};
use super::connect::Connector;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Instant;

/// An upstream's connections: how to make one, the idle ones, the replacements being made.
pub(super) struct Shared {
    pub(super) connector: Connector,
    pub(super) idle: Idle,
    replacing: AtomicUsize,
}

impl Shared {
    pub(super) fn new(connector: Connector) -> Shared {
        Shared {
            connector,
            idle: Idle::default(),
            replacing: AtomicUsize::new(0),
        }
    }

    /// Makes a connection in place of a healthy one a cancelled request closed. None outside
    /// a runtime (a lease dropped as the process ends).
    fn replace(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.replacing.fetch_add(1, Ordering::AcqRel) + self.idle.len() >= MAX_IDLE {
            self.replacing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            match shared.connector.connect().await {
                Ok(conn) => shared.idle.put(conn, Instant::now()),
                Err(e) => tracing::debug!(error = %e, "no replacement upstream connection"),
            }
            shared.replacing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A connection in use by one request. Dropped before the response ended, it closes the
/// connection (which is how a generation is cancelled when the client leaves), and a healthy
/// one is replaced (see the module's note).
pub struct Lease {
    conn: Option<Box<UpstreamConn>>,
    shared: Arc<Shared>,
}

impl Lease {
    pub(super) fn new(conn: Box<UpstreamConn>, shared: Arc<Shared>) -> Lease {
        Lease {
            conn: Some(conn),
            shared,
        }
    }

    /// Polls the connection so the response body moves; call before polling the body.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        self.alive(cx);
    }

    /// Runs `take`, a read of the response body this lease's connection feeds: the
    /// connection's wake for it is dropped, since the body drives the connection before
    /// each read anyway (see `wake`).
    pub fn taking<R>(&self, take: impl FnOnce() -> R) -> R {
        match &self.conn {
            Some(c) => c.taking(take),
            None => take(),
        }
    }

    /// Drives the connection; false once it has ended (or was handed on).
    pub(super) fn alive(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.as_mut().is_some_and(|c| c.drive(cx))
    }

    /// Closes the connection with no replacement: it failed, it was not cancelled.
    pub(super) fn discard(&mut self) {
        self.conn = None;
    }

    /// The connection has not been released, discarded or closed yet.
    pub fn is_held(&self) -> bool {
        self.conn.is_some()
    }

    /// The response was read to its end at `now`: the connection may serve the next
    /// request.
    pub fn release(&mut self, now: Instant) {
        if let Some(c) = self.conn.take() {
            if c.open() {
                self.shared.idle.put(c, now);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let healthy = conn.open();
            drop(conn);
            if healthy {
                self.shared.replace();
            }
        }
    }
}
