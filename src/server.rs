//! Stage 1 of a request: the listener. HTTP/1.1 and HTTP/2 on one port, with explicit limits
//! on headers, streams and time, and a graceful shutdown.
//!
//! `run` takes a listener that is already bound, so tests bind port 0 and read the address,
//! and a shutdown future, so tests stop it without signals. On shutdown, readiness fails at
//! once, new connections are still accepted for `shutdown_delay` (while load balancers
//! notice), then the listener closes and in-flight requests and streams get `drain_timeout`.

use crate::config::ServerConfig;
use crate::gateway::{self, Conn};
use crate::state::Gateway;
use crate::tls::ServerTls;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

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
    let builder = Arc::new(builder(&config.server));
    let graceful = GracefulShutdown::new();
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(
            ServerTls::load(&t.cert, &t.key).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let _cert_watchers = CertWatchers::start(tls.as_ref(), config.keys.poll_interval);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => serve_accepted(accepted, &gw, &builder, graceful.watcher(), tls.as_ref()),
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
            accepted = listener.accept() => serve_accepted(accepted, &gw, &builder, graceful.watcher(), tls.as_ref()),
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(config.server.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
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

fn serve_accepted(
    accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
    gw: &Arc<Gateway>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    tls: Option<&Arc<ServerTls>>,
) {
    let (stream, peer) = match accepted {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let conn = Conn::new(peer, tls.is_some());
    let gw = Arc::clone(gw);
    let builder = Arc::clone(builder);
    let acceptor = tls.map(|t| t.acceptor());
    tokio::spawn(async move {
        let handshake_timeout = gw.config().server.header_read_timeout;
        let cancels = Arc::new(Cancels::default());
        let counted = Arc::clone(&cancels);
        let svc = service_fn(move |req| {
            let gw = Arc::clone(&gw);
            let guard = CancelGuard(Some(Arc::clone(&counted)));
            let conn = conn.clone();
            async move {
                let resp = gateway::handle(gw, req, conn).await;
                guard.answered();
                Ok::<_, Infallible>(resp)
            }
        });
        let result = match acceptor {
            None => {
                watcher
                    .watch(
                        builder
                            .serve_connection(
                                TokioIo::new(Detect::new(stream, handshake_timeout, cancels)),
                                svc,
                            )
                            .into_owned(),
                    )
                    .await
            }
            Some(acceptor) => {
                let tls_stream =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                watcher
                    .watch(
                        builder
                            .serve_connection(
                                TokioIo::new(Detect::new(tls_stream, handshake_timeout, cancels)),
                                svc,
                            )
                            .into_owned(),
                    )
                    .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}
