//! The body sent upstream: bytes the gateway read (to check the model, and perhaps rewrote),
//! the client's own stream, or a multipart upload whose `model` was read while it streams.

use crate::authorize::multipart::MultipartBody;
use crate::proxy::idle::{client_body_failure, BodyTooLarge, BoxError, Idle, IdleTimeout};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// The body sent upstream: bytes already read (to check the model), the client's stream,
/// or a multipart upload whose `model` was read while it streams.
///
/// The streamed kinds are boxed: a request is moved whole a dozen times on its way into the
/// upstream connection, and most carry a body already read.
pub enum UpBody {
    Full(Option<Bytes>),
    Stream(Box<Streamed>),
    Multipart(Box<MultipartBody>),
}

/// The client's body as it arrives.
pub struct Streamed {
    inner: Incoming,
    idle: Idle,
    limit: u64,
    /// Bytes received so far, shared with the request's `RequestRecord` (`bytes_received`).
    seen: Arc<AtomicU64>,
}

impl UpBody {
    pub fn full(b: Bytes) -> UpBody {
        UpBody::Full((!b.is_empty()).then_some(b))
    }

    /// The exact length when the body is held in full.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            UpBody::Full(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(_) | UpBody::Multipart(_) => None,
        }
    }

    /// How many bytes of a streamed body have passed so far, shared: the first-byte deadline
    /// waits while it moves (`proxy::first_byte`). `None` for a body held whole.
    pub fn progress(&self) -> Option<Arc<AtomicU64>> {
        match self {
            UpBody::Full(_) => None,
            UpBody::Stream(s) => Some(Arc::clone(&s.seen)),
            UpBody::Multipart(m) => Some(m.progress()),
        }
    }

    /// A multipart upload, forwarded as it streams (see `multipart`).
    pub fn multipart(body: MultipartBody) -> UpBody {
        UpBody::Multipart(Box::new(body))
    }

    /// The client's body, streamed: each gap bounded by `timeout`, the whole body by
    /// `timeout` of `started` and its rate (`Idle::for_body`).
    /// `seen` counts the bytes as they pass.
    pub fn stream(
        inner: Incoming,
        timeout: Duration,
        started: std::time::Instant,
        limit: u64,
        seen: Arc<AtomicU64>,
    ) -> UpBody {
        UpBody::Stream(Box::new(Streamed {
            inner,
            idle: Idle::for_body(timeout, started),
            limit,
            seen,
        }))
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
            UpBody::Stream(s) => {
                let Streamed {
                    inner,
                    idle,
                    limit,
                    seen,
                } = &mut **s;
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
                    Some(Err(e)) => Poll::Ready(Some(Err(client_body_failure(e)))),
                    None => Poll::Ready(None),
                }
            }
            UpBody::Multipart(m) => m.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s) => s.inner.is_end_stream(),
            UpBody::Multipart(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s) => s.inner.size_hint(),
            UpBody::Multipart(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// A request on its way upstream and an answer on its way to hyper are each moved whole a
    /// dozen times (out of each stage, into channels and slots), each move a copy: their
    /// bulky states stay behind a box. 336 and 496 bytes before they did.
    #[test]
    fn what_each_request_moves_stays_small() {
        use std::mem::size_of;
        let up = size_of::<http::Request<super::UpBody>>();
        let down = size_of::<http::Response<crate::proxy::response_body::Body>>();
        assert!(up <= 264, "request {up} B");
        assert!(down <= 200, "response {down} B");
    }
}
