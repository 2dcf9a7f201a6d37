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
//! reused connection is sent again on another.

use crate::proxy::request_body::UpBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long an unused connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream.
const MAX_IDLE: usize = 256;

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("the server name {0:?} is not valid for TLS")]
    ServerName(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
}

/// Where and how to connect.
pub struct Pool {
    host: String,
    port: u16,
    /// The connector and the name the certificate must carry (`None`: not a valid TLS name,
    /// reported when a request tries to connect).
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Instant, Box<UpstreamConn>)>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({}:{})", self.host, self.port)
    }
}

/// The pool's answer to one request: the response head with the lease of its connection.
pub type Sent = Result<(http::Response<Incoming>, Lease), SendError>;

impl Pool {
    /// A pool for `host:port`, over TLS when `tls` is given.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Pool {
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).ok();
            (TlsConnector::from(Arc::new(config)), name)
        });
        Pool {
            host,
            port,
            tls,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` on an idle connection, or a new one, and waits for the response head. The
    /// lease must be kept (and driven) while the response body is read.
    ///
    /// Not an `async fn`, which would hold `req` twice (the call's copy and the body's) for
    /// the whole wait: the block uses the one it captured.
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        self: &Arc<Self>,
        mut req: http::Request<UpBody>,
    ) -> impl Future<Output = Sent> + '_ {
        async move {
            loop {
                let (mut conn, reused) = match self.checkout().await {
                    Some(c) => (c, true),
                    None => {
                        // Boxed: connecting is the rare path, and its future would otherwise
                        // make every request's future larger by a kilobyte.
                        let c = Box::pin(self.connect()).await?;
                        // Connecting took at least one trip through the scheduler; let the
                        // client's side run once more before writing, so a request it has
                        // already cancelled (an HTTP/2 reset) is dropped here and costs the
                        // upstream nothing.
                        tokio::task::yield_now().await;
                        (c, false)
                    }
                };
                let mut pending = std::pin::pin!(conn.sender.try_send_request(req));
                let answer = poll_fn(|cx| {
                    let alive = conn.drive(cx);
                    match pending.as_mut().poll(cx) {
                        Poll::Pending if !alive => Poll::Ready(None),
                        p => p.map(Some),
                    }
                })
                .await;
                match answer {
                    Some(Ok(resp)) => {
                        let lease = Lease {
                            conn: Some(conn),
                            pool: Arc::clone(self),
                        };
                        return Ok((resp, lease));
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        // Not written: a reused connection had gone stale; try another.
                        Some(r) if reused => req = r,
                        _ => return Err(SendError::Http(e.into_error())),
                    },
                    None => return Err(SendError::Closed),
                }
            }
        }
    }

    /// An idle connection that is still open, if there is one.
    async fn checkout(&self) -> Option<Box<UpstreamConn>> {
        loop {
            let mut conn = self.pop()?;
            if poll_fn(|cx| Poll::Ready(conn.usable(cx))).await {
                return Some(conn);
            }
        }
    }

    fn pop(&self) -> Option<Box<UpstreamConn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let (since, conn) = idle.pop()?;
        if since.elapsed() < IDLE_FOR {
            return Some(conn);
        }
        // The stack is ordered by age: all the rest are older still.
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop(stale);
        None
    }

    /// Closes idle connections that expired or that the upstream closed, so a pool that
    /// traffic has left does not hold sockets the other side has given up on. Run on a timer.
    pub fn sweep(&self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::take(&mut *idle);
        let mut gone = Vec::new();
        for (since, mut conn) in before {
            if since.elapsed() < IDLE_FOR && conn.usable(&mut cx) {
                idle.push((since, conn));
            } else {
                gone.push(conn);
            }
        }
        drop(idle);
        drop(gone);
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn put(&self, conn: Box<UpstreamConn>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), conn));
        }
    }

    async fn connect(&self) -> Result<Box<UpstreamConn>, SendError> {
        let addr = || format!("{}:{}", self.host, self.port);
        let tls = match &self.tls {
            None => None,
            Some((_, None)) => return Err(SendError::ServerName(self.host.clone())),
            Some((tls, Some(name))) => Some((tls, name)),
        };
        let io = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, io::Error>(match tls {
                None => Transport::Plain(tcp),
                Some((tls, name)) => {
                    Transport::Tls(Box::new(tls.connect(name.clone(), tcp).await?))
                }
            })
        })
        .await
        .map_err(|_| SendError::ConnectTimeout(addr()))?
        .map_err(|source| SendError::Connect {
            addr: addr(),
            source,
        })?;
        let (sender, conn) = http1::Builder::new()
            // One buffer, one send(2) per request, as on the server side.
            .writev(false)
            .handshake(TokioIo::new(io))
            .await?;
        Ok(Box::new(UpstreamConn {
            sender,
            conn,
            done: false,
        }))
    }
}

/// One HTTP/1.1 connection: the half that takes requests and the half that does the I/O.
struct UpstreamConn {
    sender: http1::SendRequest<UpBody>,
    conn: http1::Connection<TokioIo<Transport>, UpBody>,
    done: bool,
}

impl UpstreamConn {
    /// Moves the connection along (writes, reads, notices a hangup); false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done {
            if let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx) {
                self.done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            }
        }
        !self.done
    }

    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }
}

/// A connection in use by one request. Dropped before the response ended, it closes the
/// connection (which is how a generation is cancelled when the client leaves).
pub struct Lease {
    conn: Option<Box<UpstreamConn>>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Polls the connection so the response body moves; call before polling the body.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = &mut self.conn {
            c.drive(cx);
        }
    }

    /// The response has been read to its end: the connection may serve the next request.
    pub fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.done && !c.sender.is_closed() {
                self.pool.put(c);
            }
        }
    }
}

/// Plain TCP or TLS, as the upstream's URL says.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
