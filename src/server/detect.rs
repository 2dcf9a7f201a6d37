//! The first bytes of a connection, bounded in time, and clients that cancel what they ask.

use super::activity::Activity;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
/// answered, over and over: see `Activity::abusive`.
pub struct Detect<I> {
    inner: I,
    deadline: Option<Pin<Box<Sleep>>>,
    seen: usize,
    /// Which protocol the client speaks, once its first bytes tell.
    proto: Proto,
    /// Told of HTTP/1.1 bytes that arrive between requests (the start of a request head);
    /// says whether the client cancels too many requests.
    activity: Arc<Activity>,
}

/// The protocol, from the first bytes: HTTP/2 starts with its 24-byte preface, anything else
/// that differs from it is HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// The first `n` bytes match the HTTP/2 preface so far.
    Undecided(usize),
    Http1,
    Http2,
}

const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Proto {
    fn after(self, bytes: &[u8]) -> Proto {
        let Proto::Undecided(mut n) = self else {
            return self;
        };
        for b in bytes {
            if PREFACE.get(n) != Some(b) {
                return Proto::Http1;
            }
            n += 1;
            if n == PREFACE_LEN {
                return Proto::Http2;
            }
        }
        Proto::Undecided(n)
    }
}

impl<I> Detect<I> {
    pub fn new(inner: I, timeout: Duration, activity: Arc<Activity>) -> Detect<I> {
        Detect {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
            proto: Proto::Undecided(0),
            activity,
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
        if this.activity.abusive() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "too many requests cancelled before their answer",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.proto = this.proto.after(new);
                    if this.proto == Proto::Http1 {
                        this.activity.http1_bytes_read();
                    }
                }
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
