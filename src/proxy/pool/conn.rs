//! One upstream connection: the idle stack it waits on, the transport under it, and why a
//! request on it got no answer head. The leaf of `pool`: the other files use this one, and it
//! uses none of them.

use super::wake::DriveWaker;
use crate::proxy::request_body::UpBody;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long an unused connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream.
pub(super) const MAX_IDLE: usize = 256;

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

/// An upstream's idle connections, most recently used on top.
#[derive(Default)]
pub(super) struct Idle {
    stack: Mutex<Vec<(Instant, Box<UpstreamConn>)>>,
}

impl Idle {
    /// An idle connection that is still open, if there is one, for a request sent `now`.
    ///
    /// The probe registers no waker. The request that takes the connection drives it with
    /// its own task's right after, once its request is handed over; a waker registered here
    /// (or the one the connection's last request left) would be woken by that handing over
    /// itself, a wasted poll of a whole client connection each request, its own or another's.
    pub(super) fn checkout(&self, now: Instant) -> Option<Box<UpstreamConn>> {
        let mut quiet = Context::from_waker(std::task::Waker::noop());
        loop {
            let mut conn = self.pop(now)?;
            if conn.usable(&mut quiet) {
                return Some(conn);
            }
        }
    }

    fn pop(&self, now: Instant) -> Option<Box<UpstreamConn>> {
        let mut idle = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        let (since, conn) = idle.pop()?;
        if now.saturating_duration_since(since) < IDLE_FOR {
            return Some(conn);
        }
        // The stack is ordered by age: all the rest are older still.
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop(stale);
        None
    }

    /// Keeps `conn`, idle since `now`. (The times are the requests' own clock reads, passed
    /// in: a clock read costs as much as the rest of a checkout.)
    pub(super) fn put(&self, conn: Box<UpstreamConn>, now: Instant) {
        let mut idle = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((now, conn));
        }
    }

    /// Closes connections that expired or that the upstream closed.
    pub(super) fn sweep(&self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut idle = self.stack.lock().unwrap_or_else(|e| e.into_inner());
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

    pub(super) fn len(&self) -> usize {
        self.stack.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One HTTP/1.1 connection: the half that takes requests and the half that does the I/O.
pub(super) struct UpstreamConn {
    pub(super) sender: http1::SendRequest<UpBody>,
    conn: http1::Connection<TokioIo<Transport>, UpBody>,
    done: bool,
    /// What the connection is driven with (see `wake`).
    waker: DriveWaker,
}

impl UpstreamConn {
    pub(super) fn new(
        sender: http1::SendRequest<UpBody>,
        conn: http1::Connection<TokioIo<Transport>, UpBody>,
    ) -> Box<UpstreamConn> {
        Box::new(UpstreamConn {
            sender,
            conn,
            done: false,
            waker: DriveWaker::new(),
        })
    }

    /// Moves the connection along (writes, reads, notices a hangup) for `cx`'s task; false
    /// once it has ended.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done {
            let mut cx = self.waker.context(cx);
            if let Poll::Ready(r) = Pin::new(&mut self.conn).poll(&mut cx) {
                self.done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            }
        }
        !self.done
    }

    /// Runs `take`, a read of the response body this connection feeds, with the
    /// connection's wake for that read dropped (see `wake`).
    pub(super) fn taking<R>(&self, take: impl FnOnce() -> R) -> R {
        self.waker.taking(take)
    }

    pub(super) fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }

    /// Neither side has ended it: closing it now would end a healthy connection.
    pub(super) fn open(&self) -> bool {
        !self.done && !self.sender.is_closed()
    }
}

/// Plain TCP or TLS, as the upstream's URL says.
pub(super) enum Transport {
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
