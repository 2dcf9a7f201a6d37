//! Upstream connections, driven by the request that uses them.
//!
//! hyper's pooled client runs every upstream connection as a task of its own, so each request
//! crosses tasks for its head and again for every body frame, and handing the connection back
//! costs a spawned task, a lock and a hash of the pool key. Here a connection is *leased*: the
//! task serving the client polls the upstream connection itself while it waits for the head
//! and while the body streams, and the end of the body puts the connection back on a
//! per-upstream stack (most recently used first, so the warmest connections stay busy).
//!
//! An idle connection is polled by no one. When it is taken it is probed once: an upstream
//! that closed it meanwhile (vLLM's uvicorn does after 5 s idle) is noticed then, the
//! connection is dropped, and the next one is tried. A request that could not be written on a
//! reused connection is sent again on another. A request cancelled by its client closes its
//! connection, and a healthy one is replaced in the background (`lease`).

mod conn;
mod connect;
mod lease;
mod send;
mod wake;

use crate::proxy::request_body::UpBody;
pub use conn::SendError;
use connect::Connector;
use hyper::client::conn::http1;
pub use lease::Lease;
use lease::Shared;
use send::PoolSend;
pub use send::Sent;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upstream's connections: how to make one, and the idle ones.
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.shared.connector;
        write!(f, "Pool({}:{})", c.host, c.port)
    }
}

impl Pool {
    /// A pool for `host:port`, over TLS when `tls` is given.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared::new(Connector::new(
                host,
                port,
                tls,
                connect_timeout,
            ))),
        }
    }

    /// Sends `req` on an idle connection, or a new one, and waits for the response head. The
    /// lease must be kept (and driven) while the response body is read.
    pub fn send(&self, req: http::Request<UpBody>, at: Instant) -> impl Future<Output = Sent> + '_ {
        PoolSend::new(&self.shared, req, at, http1::SendRequest::try_send_request)
    }

    /// Closes idle connections that expired or that the upstream closed, so a pool that
    /// traffic has left does not hold sockets the other side has given up on. Run on a timer.
    pub fn sweep(&self) {
        self.shared.idle.sweep();
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.shared.idle.len()
    }
}
