//! Accepting connections when the process is short of descriptors, and bounding one
//! address's share of them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Accepts connections without spinning when accepting fails.
///
/// Out of descriptors (EMFILE, ENFILE) or memory, `accept` fails at once for as long as a
/// connection waits in the backlog, so retrying at once burns a core and floods the log. The
/// acceptor pauses instead, from 10 ms doubling to 1 s, and retries sooner when one of its
/// connections ends (`freed`). A failure that concerns only the connection being accepted
/// (reset or aborted by the client) is retried at once. Failures are logged once per
/// `LOG_EVERY` with their count, and the return to normal once.
pub struct Acceptor {
    what: &'static str,
    freed: Arc<Notify>,
    pause: Duration,
    /// Failures since the last success.
    failures: u64,
    /// Failures not yet logged, and when the last log line was written.
    unlogged: u64,
    logged_at: Option<Instant>,
}

const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Acceptor {
    /// `what` names the listener in log lines.
    pub fn new(what: &'static str) -> Acceptor {
        Acceptor {
            what,
            freed: Arc::new(Notify::new()),
            pause: PAUSE_MIN,
            failures: 0,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// Signalled (`notify_one`) by a connection that ends, so a paused acceptor retries.
    pub fn freed(&self) -> Arc<Notify> {
        Arc::clone(&self.freed)
    }

    /// The next connection. Cancel-safe: dropped while paused, nothing is lost.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.what,
                            failures = self.failures,
                            "accepting connections again"
                        );
                        self.failures = 0;
                        self.unlogged = 0;
                        self.logged_at = None;
                        self.pause = PAUSE_MIN;
                    }
                    return accepted;
                }
                Err(e) => {
                    self.failures += 1;
                    self.unlogged += 1;
                    let now = Instant::now();
                    if self.logged_at.is_none_or(|t| now >= t + LOG_EVERY) {
                        tracing::warn!(
                            listener = self.what,
                            error = %e,
                            failures = self.unlogged,
                            "accept failed; pausing accepts while it keeps failing"
                        );
                        self.unlogged = 0;
                        self.logged_at = Some(now);
                    }
                    if !is_connection_error(&e) {
                        tokio::select! {
                            _ = tokio::time::sleep(self.pause) => {}
                            _ = self.freed.notified() => {}
                        }
                        self.pause = (self.pause * 2).min(PAUSE_MAX);
                    }
                }
            }
        }
    }
}

/// An accept error about the one connection being accepted, not the listener or the process.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// Open connections per client address, for `max_connections_per_ip`. Touched once when a
/// connection opens and once when it closes, and only when the limit is set.
#[derive(Default)]
pub struct PerIp {
    open: Mutex<HashMap<IpAddr, u32>>,
    refused: Mutex<RefusedLog>,
}

#[derive(Default)]
struct RefusedLog {
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl PerIp {
    /// Counts a connection from `ip`, or `None` if `ip` already has `limit` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            drop(open);
            self.refused(ip, limit);
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: Arc::clone(self),
            ip,
        })
    }

    /// Logs refusals once per `LOG_EVERY`, with their count.
    fn refused(&self, ip: IpAddr, limit: u32) {
        let mut log = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        log.unlogged += 1;
        let now = Instant::now();
        if log.logged_at.is_none_or(|t| now >= t + LOG_EVERY) {
            tracing::warn!(
                %ip,
                limit,
                refused = log.unlogged,
                "connection refused: max_connections_per_ip reached"
            );
            log.unlogged = 0;
            log.logged_at = Some(now);
        }
    }
}

/// One counted connection; uncounted when dropped.
pub struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one, and logs what it did.
///
/// Every client connection and every upstream connection is a descriptor, and the usual soft
/// limit (1024) is reached long before memory or CPU are: the hard limit is what the operator
/// (systemd's `LimitNOFILE`, `ulimit -Hn`) actually allows.
pub fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok((soft, hard)), Ok(now)) if now > soft => {
            tracing::info!(from = soft, to = now, hard, "raised the open-file limit");
        }
        (Ok((soft, hard)), Ok(_)) => {
            tracing::info!(
                limit = soft,
                hard,
                "open-file limit unchanged (at the hard limit)"
            );
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; keeping it as it is");
        }
    }
}
