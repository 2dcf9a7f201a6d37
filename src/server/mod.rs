//! Stage 1 of a request: the listener. HTTP/1.1 and HTTP/2 on one port, with explicit limits
//! on headers, streams and time, and a graceful shutdown.
//!
//! `run` takes a listener that is already bound, so tests bind port 0 and read the address,
//! and a shutdown future, so tests stop it without signals. On shutdown, readiness fails at
//! once, new connections are still accepted for `shutdown_delay` (while load balancers
//! notice), then the listener closes and in-flight requests and streams get `drain_timeout`.
//!
//! Each connection is run by [`connection::drive`], which closes idle connections and those
//! whose client stops reading; its first bytes are bounded in time by [`detect::Detect`].
//! Accepting pauses while the process is out of descriptors ([`accept::Acceptor`]), and
//! `max_connections_per_ip` bounds one address's share ([`accept::PerIp`]).
//!
//! Every `[server]` setting applies on reload, to connections accepted from then on (hyper's
//! own settings: a new builder is made when they change) or to requests, except `listen` and
//! `tls`, which need a restart (`Gateway::apply_config` logs that).

pub mod accept;
pub mod activity;
pub mod connection;
pub mod detect;
pub(crate) mod nudge;
pub mod peer;
pub mod request_id;
pub mod tls;

use crate::config::{Config, ServerConfig};
use crate::gateway::Gateway;
use crate::pipeline;
use accept::{Acceptor, PerIp};
use activity::Activity;
use connection::{Cut, Deadlines, Ended};
use detect::Detect;
use futures_util::FutureExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use peer::Peer;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tls::{Handshake, Reloaded, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// The server settings hyper's builder takes: when a reload changes them, a new builder is
/// made for the connections accepted from then on.
fn builder_settings(s: &ServerConfig) -> impl PartialEq {
    (
        s.max_header_bytes,
        s.max_headers,
        s.http2_max_concurrent_streams,
        s.http2_max_header_list_size,
    )
}

/// The HTTP server settings, all explicit rather than hyper's defaults.
pub fn builder(s: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Off: the connection driver bounds a request head from its first byte, and the idle
        // wait between requests by idle_timeout (hyper's timer would count that wait too).
        .header_read_timeout(None)
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
    if let Some(t) = &tls {
        gw.reloads.tls_loaded(t.expires_at);
    }
    let _cert_watchers = CertWatchers::start(tls.as_ref(), &gw, config.keys.poll_interval);
    // Every connection holds a receiver: `stop` says "close gracefully", and the sender's
    // `closed()` completes when the last connection has ended.
    let (stop, stopped) = watch::channel(false);
    let mut acceptor = Acceptor::new("api");
    let mut ctx = Ctx {
        gw: Arc::clone(&gw),
        builder: Arc::new(builder(&config.server)),
        built_from: Arc::clone(&config),
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
            gw.drain_over.store(true, Ordering::Relaxed);
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
}

/// Reloads the listener's certificate when its files change; stops with the server.
struct CertWatchers(Vec<tokio::task::JoinHandle<()>>);

impl CertWatchers {
    /// One watcher per file, sharing what they last said: a Secret update changes both
    /// files at once, and is one reload in the log, not two.
    fn start(tls: Option<&Arc<ServerTls>>, gw: &Arc<Gateway>, poll: Duration) -> CertWatchers {
        let Some(tls) = tls else {
            return CertWatchers(Vec::new());
        };
        let failures = Arc::new(crate::watch::FailureLatch::default());
        let tasks = [tls.cert.clone(), tls.key.clone()]
            .into_iter()
            .map(|path| {
                let t = Arc::clone(tls);
                let failures = Arc::clone(&failures);
                let gw = Arc::downgrade(gw);
                crate::watch::spawn(path, poll, move || {
                    let reloaded = t.reload();
                    let Some(gw) = gw.upgrade() else {
                        return false;
                    };
                    match reloaded {
                        Ok(Reloaded::Same) => {
                            failures.succeeded();
                            true
                        }
                        Ok(Reloaded::Changed { expires_at }) => {
                            failures.succeeded();
                            gw.reloads.tls_loaded(expires_at);
                            gw.reloads.tls_reloads.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%expires_at, "TLS certificate reloaded");
                            true
                        }
                        Err(e) => {
                            gw.reloads.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                            if failures.failed(&e.to_string()) {
                                tracing::error!(error = %e, "TLS certificate reload failed; the current one keeps serving (retried at every poll)");
                            }
                            false
                        }
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
    /// The configuration `builder` was made from.
    built_from: Arc<Config>,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
    freed: Arc<Notify>,
    per_ip: Arc<PerIp>,
}

impl Ctx {
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr) {
        if let Some(task) = self.connection(stream, peer) {
            tokio::spawn(task);
        }
    }

    /// The task that serves one accepted connection; `None` when its address already has
    /// its fill of connections (dropping the stream closes it).
    ///
    /// The task's future is copied whole into a fresh task allocation per connection and
    /// read at every poll, so a plain connection's is kept small: what only TLS needs (the
    /// handshake, a TLS stream) and hyper's connection state are boxed. Unboxed, the TLS
    /// handshake sized every plain connection's task at 5,880 bytes (1,256 boxed; held by
    /// `tests::a_connections_task_stays_small`); a new connection per request cost 326
    /// simulated last-level misses per request under callgrind, 106 boxed (docs/performance.md).
    fn connection(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let config = self.gw.config();
        if !Arc::ptr_eq(&config, &self.built_from) {
            if builder_settings(&config.server) != builder_settings(&self.built_from.server) {
                self.builder = Arc::new(builder(&config.server));
            }
            self.built_from = Arc::clone(&config);
        }
        let server = &config.server;
        let slot = match server.max_connections_per_ip {
            Some(limit) => match self.per_ip.admit(peer.ip(), limit) {
                Some(slot) => Some(slot),
                None => return None,
            },
            None => None,
        };
        let deadlines = Deadlines {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
            write: server.write_timeout,
        };
        let _ = stream.set_nodelay(true);
        let conn = Peer::new(peer, self.tls.is_some());
        let gw = Arc::clone(&self.gw);
        let builder = Arc::clone(&self.builder);
        let acceptor = self.tls.as_ref().map(|t| t.acceptor());
        let stop = self.stop.clone();
        let freed = Arc::clone(&self.freed);
        Some(async move {
            let _slot = slot;
            let handshake_timeout = deadlines.header_read;
            match acceptor {
                None => serve_io(stream, gw, builder, conn, deadlines, stop).await,
                Some(acceptor) => {
                    let handshake = tls::handshake(acceptor, stream);
                    match Box::pin(tokio::time::timeout(handshake_timeout, handshake)).await {
                        Ok(Ok(Handshake::Tls(s))) => {
                            Box::pin(serve_io(s, gw, builder, conn, deadlines, stop)).await
                        }
                        Ok(Ok(Handshake::PlainHttp)) => {
                            tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
                        }
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
        })
    }
}

/// Serves HTTP on one connection until it ends or its driver cuts it.
async fn serve_io<I>(
    io: I,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: Peer,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.addr;
    let activity = Activity::new();
    let requests = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let gw = Arc::clone(&gw);
        let conn = conn.clone();
        // Dropped unanswered (the client cancelled the request), it counts against the
        // connection (`Activity::abusive`).
        let mut exchange = requests.begin();
        // Boxed: hyper keeps the request's future in the connection's own memory, which
        // with many connections open is cold at every request, while a box reuses the block
        // the last finished request freed. A `map`, not an `async` block, which would keep
        // the request a second time beside the pipeline's future.
        Box::pin(pipeline::handle(gw, req, conn).map(move |mut resp| {
            exchange.answered();
            resp.body_mut().set_exchange(exchange);
            Ok::<_, Infallible>(resp)
        }))
    });
    // Boxed: see `Ctx::connection`.
    let mut http = Box::pin(builder.serve_connection(
        TokioIo::new(Detect::new(
            io,
            deadlines.header_read,
            Arc::clone(&activity),
        )),
        svc,
    ));
    let ended = connection::drive(
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
        Ended::Cut(Cut::HeadTimeout) => {
            tracing::debug!(%peer, "connection dropped: a request head did not arrive within header_read_timeout");
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
