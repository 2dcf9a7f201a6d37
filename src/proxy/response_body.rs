//! The two bodies the gateway moves: the request going up and the response coming down.
//!
//! Both stream frame by frame. The response body carries the request's `Finish` record, so
//! accounting, the in-flight slots and the access log are settled exactly when the client has
//! the last byte, or has gone away, whichever comes first. An upstream answer also counts
//! what it relays (bytes, and an event stream's text, for a stream cut short) and ends with
//! an error when its key is revoked.

use crate::account::{ContentCounter, Finish, UsageScanner};
use crate::keys::index::KeyState;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::futures::OwnedNotified;
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

    pub(crate) fn with_total(idle: Duration, total: Duration) -> Idle {
        Idle {
            total: Some(Instant::now() + total),
            ..Idle::new(idle)
        }
    }

    pub(crate) fn poll_frame(
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

/// The body sent upstream: bytes already read (to check the model), the client's stream,
/// or a multipart upload whose `model` was read while it streams.
pub enum UpBody {
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        idle: Idle,
        limit: u64,
        /// Bytes received so far, shared with the request's `Finish` (`bytes_received`).
        seen: Arc<AtomicU64>,
    },
    Multipart(Box<crate::authorize::multipart::MultipartBody>),
}

impl UpBody {
    pub fn full(b: Bytes) -> UpBody {
        UpBody::Full((!b.is_empty()).then_some(b))
    }

    /// The exact length when the body is held in full.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            UpBody::Full(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream { .. } | UpBody::Multipart(_) => None,
        }
    }

    /// A multipart upload, forwarded as it streams (see `multipart`).
    pub fn multipart(body: crate::authorize::multipart::MultipartBody) -> UpBody {
        UpBody::Multipart(Box::new(body))
    }

    /// The client's body, streamed: each gap and the whole body bounded by `timeout`.
    /// `seen` counts the bytes as they pass.
    pub fn stream(inner: Incoming, timeout: Duration, limit: u64, seen: Arc<AtomicU64>) -> UpBody {
        UpBody::Stream {
            inner,
            idle: Idle::with_total(timeout, timeout),
            limit,
            seen,
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
            } => {
                let frame = ready!(idle.poll_frame(inner, cx));
                match frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            let len = d.len() as u64;
                            if seen.fetch_add(len, Ordering::Relaxed) + len > *limit {
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
            UpBody::Multipart(m) => m.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream { inner, .. } => inner.is_end_stream(),
            UpBody::Multipart(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream { inner, .. } => inner.size_hint(),
            UpBody::Multipart(_) => SizeHint::default(),
        }
    }
}

/// The key of an answer was revoked (or left the key file) while the answer streamed.
#[derive(Debug, thiserror::Error)]
#[error("the API key was revoked")]
pub struct KeyRevoked;

pin_project_lite::pin_project! {
    /// The body sent to the client.
    pub struct Body {
        kind: Kind,
        finish: Option<Box<Finish>>,
        // Data bytes handed to the client's connection so far.
        sent: u64,
        // Ends an upstream answer when its key is revoked.
        #[pin]
        revoke: Option<RevokeWatch>,
        // The request's place on its connection: tells the connection's driver whether this
        // answer is waiting on the client (see `crate::server::connection`). Dropped with the body.
        stream: Option<crate::server::connection::Stream>,
    }

    impl PinnedDrop for Body {
        fn drop(this: Pin<&mut Self>) {
            // A full body is complete once handed over. An upstream one is complete when it
            // was read to its end: hyper stops polling (and drops the body) as soon as the
            // last frame of a known length is out. Dropped before that, the client cut it
            // short, and its connection closes with it.
            let this = this.project();
            if let Kind::Upstream { inner, lease, .. } = &mut *this.kind {
                if inner.is_end_stream() {
                    lease.release();
                }
            }
            let complete = match &*this.kind {
                Kind::Full(_) => true,
                upstream => upstream.is_end_stream(),
            };
            settle(this.kind, this.finish, *this.sent, complete);
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        /// The upstream connection `inner` arrives on, polled by this body.
        lease: crate::proxy::pool::Lease,
        idle: Idle,
        /// An upstream error held back for one poll (see `poll_frame`).
        broken: Option<BoxError>,
        scanner: Option<UsageScanner>,
        /// Counts the text an event stream relayed, for a stream cut short (boxed: only
        /// event streams have one, and it would double the size of every other body).
        content: Option<Box<ContentCounter>>,
        strip: Option<UsageChunkFilter>,
    },
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { inner, strip, .. } => {
                inner.is_end_stream() && strip.as_ref().is_none_or(|f| f.pending.is_empty())
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Wakes a waiting response body when its key is revoked. The wake-up is registered only
    /// once the body has to wait (not for an answer whose frames are already there), and again
    /// only when the waiting task changes: one lock of the key's waiter list per stream, plus
    /// one when it ends. While frames flow, each poll reads the flag.
    struct RevokeWatch {
        state: Arc<KeyState>,
        #[pin]
        woken: Option<OwnedNotified>,
        waker: Option<Waker>,
    }
}

impl RevokeWatch {
    fn is_revoked(&self) -> bool {
        self.state.revocation.is_revoked()
    }

    /// `Ready` once the key is revoked; otherwise registers `cx` to be woken when it is.
    fn poll_revoked(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let revocation = &this.state.revocation;
        if revocation.is_revoked() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if this.woken.is_none() {
            this.woken.set(Some(revocation.watch()));
        }
        if let Some(woken) = this.woken.as_mut().as_pin_mut() {
            if woken.poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        *this.waker = Some(cx.waker().clone());
        // Revoked between the first check and the registration: seen here.
        if revocation.is_revoked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
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
            revoke: None,
            stream: None,
        }
    }

    /// Streams an upstream answer arriving on `lease`; `scan` reads token usage as it
    /// passes, and for an `event_stream` the text relayed is counted too.
    pub fn upstream(
        inner: Incoming,
        lease: crate::proxy::pool::Lease,
        idle: Duration,
        scan: bool,
        event_stream: bool,
    ) -> Body {
        Body {
            kind: Kind::Upstream {
                inner,
                lease,
                idle: Idle::new(idle),
                broken: None,
                scanner: scan.then(UsageScanner::default),
                content: (scan && event_stream).then(Box::default),
                strip: None,
            },
            finish: None,
            sent: 0,
            revoke: None,
            stream: None,
        }
    }

    /// Ends the answer with an error as soon as the key whose state this is is revoked.
    pub fn end_on_revoke(&mut self, state: &Arc<KeyState>) {
        if let Kind::Upstream { .. } = self.kind {
            self.revoke = Some(RevokeWatch {
                state: Arc::clone(state),
                woken: None,
                waker: None,
            });
        }
    }

    /// Hides the usage-only SSE event from the client (see `UsageChunkFilter`).
    pub fn strip_usage_chunk(&mut self) {
        if let Kind::Upstream { strip, .. } = &mut self.kind {
            *strip = Some(UsageChunkFilter::default());
        }
    }

    /// Ties the body to its connection; from now until hyper first polls it, it waits on the
    /// client (an HTTP/2 stream without send window is never polled at all).
    pub fn set_stream(&mut self, mut s: crate::server::connection::Stream) {
        s.handed();
        self.stream = Some(s);
    }

    pub fn set_finish(&mut self, f: Box<Finish>) {
        self.finish = Some(f);
    }
}

/// Hands the request's record what the body knows, and drops it (`Finish::drop` records and
/// logs). Once only: later calls find no record.
fn settle(kind: &Kind, finish: &mut Option<Box<Finish>>, sent: u64, complete: bool) {
    if let Some(mut f) = finish.take() {
        if let Kind::Upstream {
            scanner, content, ..
        } = kind
        {
            f.tokens = scanner.as_ref().and_then(UsageScanner::tokens);
            f.relayed_tokens = content.as_deref().map(ContentCounter::tokens);
        }
        f.bytes_sent = sent;
        f.complete = complete;
        drop(f);
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
        let this = self.project();
        let mut revoke = this.revoke;
        if let Some(s) = this.stream.as_mut() {
            s.polled();
        }
        let out = match &mut *this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                inner,
                lease,
                idle,
                broken,
                scanner,
                content,
                strip,
            } => loop {
                if let Some(e) = broken.take() {
                    break Poll::Ready(Some(Err(e)));
                }
                if revoke
                    .as_ref()
                    .get_ref()
                    .as_ref()
                    .is_some_and(RevokeWatch::is_revoked)
                {
                    break revoked(this.finish);
                }
                lease.drive(cx);
                let frame = match idle.poll_frame(inner, cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if let Some(watch) = revoke.as_mut().as_pin_mut() {
                            if watch.poll_revoked(cx).is_ready() {
                                break revoked(this.finish);
                            }
                        }
                        return Poll::Pending;
                    }
                };
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
                if let Some(Ok(f)) = &frame {
                    if let Some(d) = f.data_ref() {
                        if let Some(s) = scanner.as_mut() {
                            s.feed(d);
                        }
                        if let Some(c) = content.as_mut() {
                            c.feed(d);
                        }
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
                    *this.sent += d.len() as u64;
                }
                if let Some(s) = this.stream.as_mut() {
                    s.handed();
                }
            }
            Poll::Ready(None) => settle(this.kind, this.finish, *this.sent, true),
            Poll::Ready(Some(Err(e))) => {
                // Only an upstream body fails here: it broke off, stalled, or its key was
                // revoked.
                if let Some(f) = this.finish.as_mut() {
                    if e.is::<IdleTimeout>() {
                        f.stream_error = Some(crate::ops::metrics::UpstreamError::IdleTimeout);
                    } else if !e.is::<KeyRevoked>() {
                        f.stream_error = Some(crate::ops::metrics::UpstreamError::StreamBroken);
                    }
                }
                settle(this.kind, this.finish, *this.sent, false)
            }
            Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
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

/// Ends an answer whose key was revoked: an error, so the client sees a broken stream, not
/// a clean end; the record names the reason.
fn revoked(finish: &mut Option<Box<Finish>>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if let Some(f) = finish.as_mut() {
        f.error_code = Some(crate::error::GatewayError::RevokedKey.code());
    }
    Poll::Ready(Some(Err(Box::new(KeyRevoked))))
}
