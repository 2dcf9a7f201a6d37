//! The body sent to the client, as it streams: a whole answer the gateway wrote, or an
//! upstream's answer frame by frame.
//!
//! It carries the request's `RequestRecord`, so accounting, the in-flight slots and the access
//! log are settled exactly when the client has the last byte, or has gone away, whichever
//! comes first. An upstream answer also counts what it relays (bytes, and an event stream's
//! text, for a stream cut short) and ends with an error when its key is revoked.

use crate::account::answer_model;
use crate::account::relayed::ContentCounter;
use crate::account::scanner::UsageScanner;
use crate::account::{RequestRecord, TokenUsage};
use crate::error::GatewayError;
use crate::keys::state::Ended;
use crate::keys::state::KeyState;
use crate::ops::metrics::UpstreamError;
use crate::proxy::idle::{BoxError, Idle, IdleTimeout};
use crate::proxy::pool::Lease;
use crate::proxy::revoke::RevokeWatch;
use crate::proxy::stream_usage::UsageChunkFilter;
use crate::server::activity::Exchange;
use crate::time::LazyNow;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The key of an answer was revoked (or left the key file) while the answer streamed.
#[derive(Debug, thiserror::Error)]
#[error("the API key was revoked")]
pub struct KeyRevoked;

/// The body sent to the client.
pub struct Body {
    kind: Kind,
    record: Option<Box<RequestRecord>>,
    // Data bytes handed to the client's connection so far.
    sent: u64,
    // The request's place on its connection: tells the connection's driver whether this
    // answer is waiting on the client (see `server::activity`). Dropped with the body.
    exchange: Option<Exchange>,
}

impl Drop for Body {
    fn drop(&mut self) {
        // A full body is complete once handed over. An upstream one is complete when it was
        // read to its end: hyper stops polling (and drops the body) as soon as the last frame
        // of a known length is out. Dropped before that, the client cut it short, and its
        // connection closes with it.
        // One clock read for the three that want the moment the answer ended.
        let mut end = LazyNow::default();
        if let Kind::Upstream(relay) = &mut self.kind {
            let relay = relay.as_mut().project();
            if relay.inner.is_end_stream() && relay.lease.is_held() {
                relay.lease.release(end.at());
            }
        }
        let complete = match &self.kind {
            Kind::Full(_) => true,
            upstream => upstream.is_end_stream(),
        };
        if self.record.is_some() {
            settle(&self.kind, &mut self.record, self.sent, complete, end.at());
        }
        if let Some(e) = self.exchange.as_mut().filter(|e| !e.is_ended()) {
            e.end(end.at());
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    // Boxed: an answer is moved whole a dozen times on its way to hyper (out of each stage,
    // into the connection's slot), and the relay's state is most of its size; one allocation
    // costs less than those copies.
    Upstream(Pin<Box<Relay>>),
}

pin_project_lite::pin_project! {
    /// An upstream answer on its way through.
    #[project = RelayProj]
    struct Relay {
        inner: Incoming,
        // The upstream connection `inner` arrives on, polled by this body.
        lease: Lease,
        idle: Idle,
        // The error that ends the answer (the upstream broke off, or the key was revoked),
        // held back for one poll so what hyper holds goes out first (`end_next_turn`).
        broken: Option<BoxError>,
        scanner: Option<UsageScanner>,
        // Counts the text an event stream relayed, for a stream cut short (boxed: only event
        // streams have one).
        content: Option<Box<ContentCounter>>,
        strip: Option<UsageChunkFilter>,
        // Ends the answer when its key is revoked.
        #[pin]
        revoke: Option<RevokeWatch>,
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(r) => {
                r.inner.is_end_stream() && r.strip.as_ref().is_none_or(UsageChunkFilter::is_empty)
            }
        }
    }
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        Body {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            record: None,
            sent: 0,
            exchange: None,
        }
    }

    /// Streams an upstream answer arriving on `lease`; `scan` reads token usage as it
    /// passes, and for an `event_stream` the text relayed is counted too.
    pub fn upstream(
        inner: Incoming,
        lease: Lease,
        idle: Duration,
        scan: Option<UsageScanner>,
        event_stream: bool,
    ) -> Body {
        let content = (scan.is_some() && event_stream).then(Box::default);
        Body {
            kind: Kind::Upstream(Box::pin(Relay {
                inner,
                lease,
                idle: Idle::new(idle),
                broken: None,
                scanner: scan,
                content,
                strip: None,
                revoke: None,
            })),
            record: None,
            sent: 0,
            exchange: None,
        }
    }

    /// Ends the answer with an error as soon as the key whose state this is is revoked.
    pub fn end_on_revoke(&mut self, state: &Arc<KeyState>) {
        if let Kind::Upstream(r) = &mut self.kind {
            r.as_mut()
                .project()
                .revoke
                .set(Some(RevokeWatch::new(state)));
        }
    }

    /// Hides the usage-only SSE event from the client (see `UsageChunkFilter`).
    pub fn strip_usage_chunk(&mut self) {
        if let Kind::Upstream(r) = &mut self.kind {
            *r.as_mut().project().strip = Some(UsageChunkFilter::default());
        }
    }

    /// Ties the body to its connection; from now until hyper first polls it, it waits on the
    /// client (an HTTP/2 stream without send window is never polled at all).
    pub fn set_exchange(&mut self, mut e: Exchange) {
        e.handed();
        self.exchange = Some(e);
    }

    /// The request's record, settled when this body ends. A whole answer the gateway wrote (a
    /// refusal, the model list, the management API's) asks nothing more of the upstream or of
    /// the key: its in-flight places go back now, not when a client that may never open its
    /// HTTP/2 window has read it (until `write_timeout`, a client with no key could otherwise
    /// hold every place of the gateway's cap with refusals it never reads).
    pub fn set_record(&mut self, mut f: Box<RequestRecord>) {
        if let Kind::Full(_) = self.kind {
            f.capacity = None;
            f.slot = None;
        }
        self.record = Some(f);
    }
}

/// Hands the request's record what the body knows, and drops it (`RequestRecord::drop` records and
/// logs). Once only: later calls find no record.
fn settle(
    kind: &Kind,
    record: &mut Option<Box<RequestRecord>>,
    sent: u64,
    complete: bool,
    at: Instant,
) {
    if let Some(mut f) = record.take() {
        f.ended = Some(at);
        if let Kind::Upstream(r) = kind {
            f.tokens = r
                .scanner
                .as_ref()
                .and_then(UsageScanner::tokens)
                .map(TokenUsage::Reported);
            f.relayed_tokens = r.content.as_deref().map(ContentCounter::tokens);
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
        let this = self.get_mut();
        if let Some(e) = this.exchange.as_mut() {
            e.polled();
        }
        let mut end = LazyNow::default();
        let out = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(relay) => loop {
                let RelayProj {
                    inner,
                    lease,
                    idle,
                    broken,
                    scanner,
                    content,
                    strip,
                    mut revoke,
                } = relay.as_mut().project();
                if let Some(e) = broken.take() {
                    break Poll::Ready(Some(Err(e)));
                }
                if let Some(why) = revoke
                    .as_ref()
                    .get_ref()
                    .as_ref()
                    .and_then(RevokeWatch::ended)
                {
                    return end_next_turn(broken, revoked(&mut this.record, why), cx);
                }
                lease.drive(cx);
                // The take from the connection's channel would wake this task to drive the
                // connection again, which the next poll does first anyway: not woken.
                let frame = match lease.taking(|| idle.poll_frame(inner, cx)) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if let Some(mut watch) = revoke.as_mut().as_pin_mut() {
                            if watch.as_mut().poll_revoked(cx).is_ready() {
                                let why = watch.ended().unwrap_or(Ended::Revoked);
                                return end_next_turn(broken, revoked(&mut this.record, why), cx);
                            }
                        }
                        return Poll::Pending;
                    }
                };
                if let Some(Err(e)) = frame {
                    // The upstream broke off (the frames before the break may have arrived
                    // in the same read).
                    return end_next_turn(broken, e, cx);
                }
                if frame.is_none() {
                    lease.release(end.at());
                }
                if let Some(Ok(f)) = &frame {
                    if let Some(d) = f.data_ref() {
                        if let Some(s) = scanner.as_mut() {
                            s.feed(d);
                            if let Some(r) = this.record.as_mut() {
                                if r.model.is_none() && r.answer_model.is_none() {
                                    r.answer_model = answer_model::find(d);
                                }
                            }
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
                    this.sent += d.len() as u64;
                }
                if let Some(e) = this.exchange.as_mut() {
                    e.handed();
                }
            }
            Poll::Ready(None) => {
                let at = end.at();
                settle(&this.kind, &mut this.record, this.sent, true, at);
                if let Some(e) = this.exchange.as_mut() {
                    e.end(at);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // Only an upstream body fails here: it broke off, stalled, or its key was
                // revoked.
                if let Some(f) = this.record.as_mut() {
                    if e.is::<IdleTimeout>() {
                        f.stream_error = Some(UpstreamError::IdleTimeout);
                    } else if !e.is::<KeyRevoked>() {
                        f.stream_error = Some(UpstreamError::StreamBroken);
                    }
                }
                settle(&this.kind, &mut this.record, this.sent, false, end.at());
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
            Kind::Upstream(r) if r.strip.is_some() => SizeHint::default(),
            Kind::Upstream(r) => r.inner.size_hint(),
        }
    }
}

/// Ends the answer with `e` at the next poll, after yielding once: hyper cuts the client's
/// connection at a body error without flushing what it holds (frames that arrived with an
/// upstream's break; for a revoke before the first frame, the head itself, without which the
/// client would get no answer at all), so that goes out first.
fn end_next_turn<T>(broken: &mut Option<BoxError>, e: BoxError, cx: &Context<'_>) -> Poll<T> {
    *broken = Some(e);
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// The error that ends an answer whose key was revoked or disabled, so the client sees a
/// broken stream, not a clean end; the record names the reason.
fn revoked(record: &mut Option<Box<RequestRecord>>, why: Ended) -> BoxError {
    if let Some(f) = record.as_mut() {
        f.error_code = Some(GatewayError::from(why).code());
    }
    Box::new(KeyRevoked)
}

#[cfg(test)]
#[path = "response_body_tests.rs"]
mod tests;
