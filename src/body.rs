//! The two bodies the gateway moves: the request going up and the response coming down.
//!
//! Both stream frame by frame. The response body carries the request's `Finish` record, so
//! accounting, the in-flight slots and the access log are settled exactly when the client has
//! the last byte, or has gone away, whichever comes first.

use crate::account::Finish;
use crate::account::UsageScanner;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
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

/// The request body exceeded `server.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Polls `inner`, failing when no frame arrives for `idle`, or, with a total deadline, when
/// the whole body has not arrived by then (a body dripped just under the idle gap). The
/// timers are created only once `inner` makes the caller wait: a body whose frames are
/// already there (most answers) never touches the timer wheel.
pub struct Idle {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame came since `sleep` was set: the next wait sets it again.
    rearm: bool,
    total: Option<Instant>,
    total_sleep: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    fn new(idle: Duration) -> Idle {
        Idle {
            idle,
            sleep: None,
            rearm: false,
            total: None,
            total_sleep: None,
        }
    }

    fn with_total(idle: Duration, total: Duration) -> Idle {
        Idle {
            total: Some(Instant::now() + total),
            ..Idle::new(idle)
        }
    }

    fn poll_frame(
        &mut self,
        inner: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(r) => {
                // The gap starts again at the next wait.
                self.rearm = true;
                Poll::Ready(r.map(|r| r.map_err(BoxError::from)))
            }
            Poll::Pending => {
                if let Some(deadline) = self.total {
                    let total = self
                        .total_sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
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

/// The body sent upstream: bytes already read (to check the model), or the client's stream.
pub enum UpBody {
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        idle: Idle,
        limit: u64,
        seen: u64,
        /// `seen`, readable by the access log after hyper has dropped this body.
        counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    },
}

impl UpBody {
    pub fn full(b: Bytes) -> UpBody {
        UpBody::Full((!b.is_empty()).then_some(b))
    }

    /// The exact length when the body is held in full.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            UpBody::Full(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream { .. } => None,
        }
    }

    /// The client's body, streamed: each gap and the whole body bounded by `timeout`.
    pub fn stream(inner: Incoming, timeout: Duration, limit: u64) -> UpBody {
        UpBody::Stream {
            inner,
            idle: Idle::with_total(timeout, timeout),
            limit,
            seen: 0,
            counter: Default::default(),
        }
    }

    /// The count of bytes streamed so far, shared, for a streamed body.
    pub fn counter(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        match self {
            UpBody::Full(_) => None,
            UpBody::Stream { counter, .. } => Some(std::sync::Arc::clone(counter)),
        }
    }
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream {
                inner,
                idle,
                limit,
                seen,
                counter,
            } => {
                let frame = ready!(idle.poll_frame(inner, cx));
                match frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            *seen += d.len() as u64;
                            counter.store(*seen, std::sync::atomic::Ordering::Relaxed);
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                            }
                        }
                        // Trailers from the client are never forwarded: a credential could
                        // hide there, and no OpenAI endpoint uses them.
                        if f.is_trailers() {
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Err(e)) if e.is::<IdleTimeout>() => Poll::Ready(Some(Err(e))),
                    Some(Err(e)) => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyError(e.to_string())))))
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// The body sent to the client.
pub struct Body {
    kind: Kind,
    finish: Option<Box<Finish>>,
    /// Data bytes handed to the client so far.
    sent: u64,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        /// The upstream connection `inner` arrives on, polled by this body.
        lease: crate::pool::Lease,
        idle: Idle,
        /// An upstream error held back for one poll (see `poll_frame`).
        broken: Option<BoxError>,
        scanner: Option<UsageScanner>,
        strip: Option<UsageChunkFilter>,
    },
}

/// Removes the usage-only SSE event (`"choices":[]` with a `usage`) that the gateway asked
/// the upstream for on the client's behalf. Events pass through as soon as they are
/// complete; only an incomplete event's bytes wait for the rest of it.
#[derive(Default)]
struct UsageChunkFilter {
    pending: bytes::BytesMut,
}

impl UsageChunkFilter {
    /// The complete events of `data` (and of what was pending), minus the usage chunk.
    fn filter(&mut self, data: &[u8]) -> Bytes {
        self.pending.extend_from_slice(data);
        let mut out = bytes::BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if !is_usage_only(&event) {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    fn rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Where the first complete SSE event ends (after its blank line), LF or CRLF.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_only(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    let Some(json) = event.strip_prefix(b"data:") else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json.trim_ascii()) else {
        return false;
    };
    v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        Body {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            finish: None,
            sent: 0,
        }
    }

    /// Streams an upstream answer arriving on `lease`; `scan` reads token usage as it passes.
    pub fn upstream(
        inner: Incoming,
        lease: crate::pool::Lease,
        idle: Duration,
        scan: bool,
    ) -> Body {
        Body {
            kind: Kind::Upstream {
                inner,
                lease,
                idle: Idle::new(idle),
                broken: None,
                scanner: scan.then(UsageScanner::default),
                strip: None,
            },
            finish: None,
            sent: 0,
        }
    }

    /// Hides the usage-only SSE event from the client (see `UsageChunkFilter`).
    pub fn strip_usage_chunk(&mut self) {
        if let Kind::Upstream { strip, .. } = &mut self.kind {
            *strip = Some(UsageChunkFilter::default());
        }
    }

    pub fn set_finish(&mut self, f: Box<Finish>) {
        self.finish = Some(f);
    }

    fn settle(&mut self, complete: bool) {
        if let Some(mut f) = self.finish.take() {
            if let Kind::Upstream { scanner, .. } = &self.kind {
                f.tokens = scanner.as_ref().and_then(UsageScanner::tokens);
            }
            f.complete = complete;
            f.bytes_sent = self.sent;
            drop(f); // Finish::drop records and logs
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::full(b)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let out = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                inner,
                lease,
                idle,
                broken,
                scanner,
                strip,
            } => loop {
                if let Some(e) = broken.take() {
                    break Poll::Ready(Some(Err(e)));
                }
                lease.drive(cx);
                let frame = ready!(idle.poll_frame(inner, cx));
                if let Some(Err(e)) = frame {
                    // The upstream broke off. hyper cuts the client's connection at a body
                    // error without flushing what it has buffered, and the frames before
                    // the break may have arrived in the same read: yield once so they go
                    // out first, then report the error.
                    *broken = Some(e);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if frame.is_none() {
                    lease.release();
                }
                if let (Some(Ok(f)), Some(s)) = (&frame, scanner.as_mut()) {
                    if let Some(d) = f.data_ref() {
                        s.feed(d);
                    }
                }
                let Some(filter) = strip.as_mut() else {
                    break Poll::Ready(frame);
                };
                match frame {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => {
                            let kept = filter.filter(&d);
                            if !kept.is_empty() {
                                break Poll::Ready(Some(Ok(Frame::data(kept))));
                            }
                        }
                        Err(f) => break Poll::Ready(Some(Ok(f))),
                    },
                    None => {
                        let rest = filter.rest();
                        *strip = None;
                        if rest.is_empty() {
                            break Poll::Ready(None);
                        }
                        // The stream ends on the next poll (the filter is gone).
                        break Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    other => break Poll::Ready(other),
                }
            },
        };
        match &out {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.settle(true),
            Poll::Ready(Some(Err(e))) => {
                // Only an upstream body fails here: it broke off or stalled.
                if let Some(f) = this.finish.as_mut() {
                    f.stream_error = Some(if e.is::<IdleTimeout>() {
                        crate::metrics::UpstreamError::IdleTimeout
                    } else {
                        crate::metrics::UpstreamError::StreamBroken
                    });
                }
                this.settle(false)
            }
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { inner, strip, .. } => {
                inner.is_end_stream() && strip.as_ref().is_none_or(|f| f.pending.is_empty())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Filtering changes the length: no promise then.
            Kind::Upstream { strip: Some(_), .. } => SizeHint::default(),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A full body is complete once handed over. An upstream one is complete when it was
        // read to its end: hyper stops polling (and drops the body) as soon as the last frame
        // of a known length is out. Dropped before that, the client cut it short, and its
        // connection closes with it.
        let complete = match &mut self.kind {
            Kind::Full(_) => true,
            Kind::Upstream { inner, lease, .. } => {
                if inner.is_end_stream() {
                    lease.release();
                }
                self.is_end_stream()
            }
        };
        self.settle(complete);
    }
}
