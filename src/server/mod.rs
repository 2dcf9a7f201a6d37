//! Stage 1 of a request: the listener. HTTP/1.1 and HTTP/2 on one port, with explicit limits
//! on headers, streams and time, and a graceful shutdown.
//!
//! `run` takes a listener that is already bound, so tests bind port 0 and read the address,
//! and a shutdown future, so tests stop it without signals. On shutdown, readiness fails at
//! once, new connections are still accepted for `shutdown_delay` (while load balancers
//! notice), then the listener closes and in-flight requests and streams get `drain_timeout`.
//!
//! Each connection is run by [`crate::server::connection::drive`], which closes idle connections and those
//! whose client stops reading. Accepting pauses while the process is out of descriptors
//! ([`Acceptor`]), and `max_connections_per_ip` bounds one address's share ([`PerIp`]).

pub mod connection;
pub mod tls;

use crate::config::ServerConfig;
use crate::gateway::Gateway;
use crate::pipeline::{self, Conn};
use crate::server::connection::{Activity, Cut, Deadlines, Ended};
use crate::server::tls::ServerTls;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Sleep};

/// Length of the HTTP/2 connection preface.
const PREFACE_LEN: usize = 24;

/// Bounds the protocol-detection phase. hyper-util reads up to 24 bytes to tell HTTP/1.1
/// from HTTP/2 with no timer, and hyper's own header timeout starts only after that, so a
/// client that connects and sends nothing (or part of the HTTP/2 preface) would hold a
/// descriptor forever. Reads fail with `TimedOut` if the preface is not complete by the
/// deadline; the deadline is dropped once 24 bytes have arrived or the first byte shows the
/// client speaks HTTP/1.1 (hyper's header timeout then applies).
///
/// It also ends a connection whose requests are cancelled by the client before they are
/// answered, over and over (an HTTP/2 "rapid reset" after the server accepted each stream,
/// which hyper's pending-reset limit does not see): see `Cancels`.
struct Detect<I> {
    inner: I,
    deadline: Option<Pin<Box<Sleep>>>,
    seen: usize,
    cancels: Arc<Cancels>,
}

impl<I> Detect<I> {
    fn new(inner: I, timeout: Duration, cancels: Arc<Cancels>) -> Detect<I> {
        Detect {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
            cancels,
        }
    }
}

/// Requests on one connection that the client abandoned before their answer, against those
/// answered. A client that cancels more than `CANCEL_LIMIT` requests, and more than it lets
/// finish, is cut off: its next read fails and hyper closes the connection.
#[derive(Default)]
struct Cancels {
    cancelled: std::sync::atomic::AtomicU32,
    answered: std::sync::atomic::AtomicU32,
}

const CANCEL_LIMIT: u32 = 8;

impl Cancels {
    fn abusive(&self) -> bool {
        let c = self.cancelled.load(Ordering::Relaxed);
        c > CANCEL_LIMIT && c > self.answered.load(Ordering::Relaxed)
    }
}

/// Counts a request as cancelled unless `answered` is called before it drops.
struct CancelGuard(Option<Arc<Cancels>>);

impl CancelGuard {
    fn answered(mut self) {
        if let Some(c) = self.0.take() {
            c.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Detect<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.cancels.abusive() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "too many requests cancelled before their answer",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.deadline.is_some() {
                    let new = &buf.filled()[before..];
                    if this.seen == 0 && new.first().is_some_and(|b| *b != b'P') {
                        this.deadline = None;
                    }
                    this.seen += new.len();
                    if this.seen >= PREFACE_LEN {
                        this.deadline = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no request within the header read timeout",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Detect<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The HTTP server settings, all explicit rather than hyper's defaults.
pub fn builder(s: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes)
        .max_headers(s.max_headers)
        .keep_alive(true)
        .half_close(false)
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .max_header_list_size(s.http2_max_header_list_size)
        // Rapid-reset (CVE-2023-44487) and error-reset floods end in GOAWAY.
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = gw.config();
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(
            ServerTls::load(&t.cert, &t.key).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let _cert_watchers = CertWatchers::start(tls.as_ref(), config.keys.poll_interval);
    // Every connection holds a receiver: `stop` says "close gracefully", and the sender's
    // `closed()` completes when the last connection has ended.
    let (stop, stopped) = watch::channel(false);
    let mut acceptor = Acceptor::new("api");
    let ctx = Ctx {
        gw: Arc::clone(&gw),
        builder: Arc::new(builder(&config.server)),
        tls,
        stop: stopped,
        freed: acceptor.freed(),
        per_ip: Arc::new(PerIp::default()),
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            (stream, peer) = acceptor.accept(&listener) => ctx.serve(stream, peer),
        }
    }

    gw.draining.store(true, Ordering::Release);
    let config = gw.config();
    tracing::info!(
        delay = ?config.server.shutdown_delay,
        drain = ?config.server.drain_timeout,
        "shutting down: readiness now fails"
    );
    let delay = tokio::time::sleep(config.server.shutdown_delay);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut delay => break,
            (stream, peer) = acceptor.accept(&listener) => ctx.serve(stream, peer),
        }
    }
    drop(listener);
    drop(ctx);
    let _ = stop.send(true);
    tokio::select! {
        _ = stop.closed() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(config.server.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
}

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
    fn admit(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<IpSlot> {
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
struct IpSlot {
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

/// Reloads the listener's certificate when its files change; stops with the server.
struct CertWatchers(Vec<tokio::task::JoinHandle<()>>);

impl CertWatchers {
    fn start(tls: Option<&Arc<ServerTls>>, poll: Duration) -> CertWatchers {
        let Some(tls) = tls else {
            return CertWatchers(Vec::new());
        };
        let tasks = [tls.cert.clone(), tls.key.clone()]
            .into_iter()
            .map(|path| {
                let t = Arc::clone(tls);
                let failures = crate::watch::FailureLatch::default();
                crate::watch::spawn(path, poll, move || match t.reload() {
                    Ok(()) => {
                        failures.succeeded();
                        tracing::info!("TLS certificate reloaded");
                        true
                    }
                    Err(e) => {
                        if failures.failed(&e.to_string()) {
                            tracing::error!(error = %e, "TLS certificate reload failed; the current one keeps serving (retried at every poll)");
                        }
                        false
                    }
                })
            })
            .collect();
        CertWatchers(tasks)
    }
}

impl Drop for CertWatchers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What every connection task needs from the listener.
struct Ctx {
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
    freed: Arc<Notify>,
    per_ip: Arc<PerIp>,
}

impl Ctx {
    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let server = &self.gw.config().server;
        let slot = match server.max_connections_per_ip {
            Some(limit) => match self.per_ip.admit(peer.ip(), limit) {
                Some(slot) => Some(slot),
                None => return, // dropping the stream closes it
            },
            None => None,
        };
        let deadlines = Deadlines {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
            write: server.write_timeout,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(peer, self.tls.is_some());
        let gw = Arc::clone(&self.gw);
        let builder = Arc::clone(&self.builder);
        let acceptor = self.tls.as_ref().map(|t| t.acceptor());
        let stop = self.stop.clone();
        let freed = Arc::clone(&self.freed);
        tokio::spawn(async move {
            let _slot = slot;
            let handshake_timeout = deadlines.header_read;
            match acceptor {
                None => serve_io(stream, gw, builder, conn, deadlines, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_io(s, gw, builder, conn, deadlines, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            freed.notify_one();
        });
    }
}

/// Serves HTTP on one connection until it ends or its driver cuts it.
async fn serve_io<I>(
    io: I,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: Conn,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Activity::new();
    let cancels = Arc::new(Cancels::default());
    let counted = Arc::clone(&cancels);
    let requests = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let gw = Arc::clone(&gw);
        let guard = CancelGuard(Some(Arc::clone(&counted)));
        let conn = conn.clone();
        let stream = requests.begin();
        async move {
            let mut resp = pipeline::handle(gw, req, conn).await;
            guard.answered();
            resp.body_mut().set_stream(stream);
            Ok::<_, Infallible>(resp)
        }
    });
    let http = builder.serve_connection(
        TokioIo::new(Detect::new(io, deadlines.header_read, cancels)),
        svc,
    );
    tokio::pin!(http);
    let ended = crate::server::connection::drive(
        http.as_mut(),
        |c| c.graceful_shutdown(),
        &activity,
        deadlines,
        stop,
    )
    .await;
    match ended {
        Ended::Done(Ok(())) => {}
        Ended::Done(Err(e)) => {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
        Ended::Cut(Cut::WriteStalled) => tracing::info!(
            %peer,
            write_timeout = ?deadlines.write,
            "connection closed: a response waited on the client for write_timeout"
        ),
        Ended::Cut(Cut::CloseIgnored) => {
            tracing::debug!(%peer, "connection dropped: it did not close when asked");
        }
    }
}
