//! Body frames bounded in time, and why a client's body failed on its way in.
//!
//! A client body that fails while it streams upstream ends the upstream request with one of
//! these errors; `GatewayError::client_body` finds it in the failure and answers the client
//! (400 or 413), so a client's fault is never blamed on the upstream.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body frame did not arrive within the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// The client's request body was malformed or broke off (a client fault, not the upstream's).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyError(pub String);

/// The client left before its request body was complete: its connection closed (HTTP/1.1),
/// or it reset its stream or lost its connection (HTTP/2). Nobody is left to answer.
#[derive(Debug, thiserror::Error)]
#[error("the client left before its request body was complete")]
pub struct ClientGone;

/// Whether a failure reading a client's body means the client left, not that it sent
/// something malformed.
pub fn client_left(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<ClientGone>() {
            return true;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_reset() || h2.is_io() || h2.is_go_away() {
                return true;
            }
        }
        // hyper's body error for a connection that ended mid-body (its cause is an I/O error).
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// What a client body's failure becomes on its way upstream: the client left, or its body
/// could not be read.
pub fn client_body_failure(e: BoxError) -> BoxError {
    if client_left(&*e) {
        Box::new(ClientGone)
    } else {
        Box::new(ClientBodyError(e.to_string()))
    }
}

/// The request body exceeded `server.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The rate a client body must keep to take longer than `body_read_timeout` in all: each
/// byte received moves the whole-body deadline on by 1/1024 s. A body dripped just under the
/// idle gap (3 bytes a second) is still cut soon after the timeout; an upload on a slow link
/// (an audio file at 2 KB/s) is not.
pub const MIN_BODY_RATE: u64 = 1024;

/// How much later a body that has received `bytes` more may end.
pub fn earned(bytes: u64) -> Duration {
    Duration::from_nanos(bytes.saturating_mul(1_000_000_000 / MIN_BODY_RATE))
}

/// Polls `inner`, failing when no frame arrives for `idle`, or, for a client's body, when the
/// whole body has not arrived by its deadline (`for_body`). The timers are created only once
/// `inner` makes the caller wait: a body whose frames are already there (most answers)
/// never touches the timer wheel.
pub struct Idle {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame came since `sleep` was set: the next wait sets it again.
    rearm: bool,
    total: Option<Instant>,
    total_sleep: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    pub fn new(idle: Duration) -> Idle {
        Idle {
            idle,
            sleep: None,
            rearm: false,
            total: None,
            total_sleep: None,
        }
    }

    /// A client's body: no gap over `timeout`, and the whole of it within `timeout` of
    /// `started` (when its request began: a clock read the request already paid for) plus
    /// what its bytes earned (`earned`).
    pub fn for_body(timeout: Duration, started: std::time::Instant) -> Idle {
        Idle {
            total: Some(Instant::from_std(started) + timeout),
            ..Idle::new(timeout)
        }
    }

    pub fn poll_frame(
        &mut self,
        inner: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(r) => {
                // The gap starts again at the next wait.
                self.rearm = true;
                if let (Some(total), Some(Ok(f))) = (&mut self.total, &r) {
                    *total += earned(f.data_ref().map_or(0, |d| d.len() as u64));
                }
                Poll::Ready(r.map(|r| r.map_err(BoxError::from)))
            }
            Poll::Pending => {
                if let Some(deadline) = self.total {
                    let total = self
                        .total_sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if total.deadline() != deadline {
                        total.as_mut().reset(deadline);
                    }
                    if total.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(self.idle)))));
                    }
                }
                let idle = self.idle;
                let sleep = match &mut self.sleep {
                    Some(s) => {
                        if std::mem::take(&mut self.rearm) {
                            s.as_mut().reset(Instant::now() + idle);
                        }
                        s
                    }
                    None => self.sleep.insert(Box::pin(tokio::time::sleep(idle))),
                };
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout(self.idle)))))
            }
        }
    }
}
