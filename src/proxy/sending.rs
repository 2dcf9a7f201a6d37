//! The wait for an upstream's answer head, raced against a revoke of the request's key.
//!
//! A named future rather than an `async` block: a block keeps each value it captured even
//! after moving it on (the request, the pool's future), and every request touches its future's
//! memory, which with hundreds of connections open is cold at each request. This one holds the
//! pool's wait, the revoke watch and references, nothing twice.

use crate::account::scanner::UsageScanner;
use crate::account::{Added, RequestRecord};
use crate::error::GatewayError;
use crate::keys::scope::Scope;
use crate::keys::state::KeyState;
use crate::proxy::first_byte::HeadLate;
use crate::proxy::headers;
use crate::proxy::pool::Sent;
use crate::proxy::response_body::Body;
use crate::proxy::revoke::RevokeWatch;
use crate::proxy::upstream::Upstream;
use http::{header, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

pin_project_lite::pin_project! {
    /// Ends with the answer (its body streaming from the upstream), or with the request's
    /// error: the key revoked or disabled while waiting (401; dropping this closes the
    /// upstream connection), the first byte late, the upstream unreachable.
    pub struct Sending<'a, F> {
        #[pin]
        revoke: RevokeWatch,
        #[pin]
        sending: F,
        upstream: &'a Upstream,
        state: &'a Arc<KeyState>,
        record: &'a mut RequestRecord,
        // When the request was written, and how long the gateway had taken until then.
        sent: Instant,
        before: Duration,
        strip_usage: bool,
    }
}

impl<'a, F> Sending<'a, F>
where
    F: Future<Output = Result<Sent, HeadLate>>,
{
    pub(super) fn new(
        upstream: &'a Upstream,
        state: &'a Arc<KeyState>,
        record: &'a mut RequestRecord,
        sent: Instant,
        sending: F,
    ) -> Self {
        let before = sent - record.started;
        // Until the head comes: a request that ends waiting for it (timed out, its client
        // gone, the drain over) added this much, not its wait.
        record.added = Added::Measured(before);
        Sending {
            // The key's waiter list is locked once to wait and once when done, not at every
            // poll.
            revoke: RevokeWatch::new(state),
            sending,
            upstream,
            state,
            record,
            sent,
            before,
            strip_usage: false,
        }
    }

    /// The upstream was asked for a stream's usage that the client did not ask for: the
    /// answer drops the extra chunk (and its length, which no longer holds).
    pub(super) fn stripping_usage(mut self, strip: bool) -> Self {
        self.strip_usage = strip;
        self
    }
}

impl<F> Future for Sending<'_, F>
where
    F: Future<Output = Result<Sent, HeadLate>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.revoke.as_mut().poll_revoked(cx).is_ready() {
            let why = this.revoke.ended();
            return Poll::Ready(Err(why.map_or(GatewayError::RevokedKey, GatewayError::from)));
        }
        let sent = ready!(this.sending.poll(cx));
        let (resp, lease) = this.upstream.settle(sent)?;
        let upstream_latency = this.sent.elapsed();
        let record = &mut **this.record;
        record.upstream_latency = Some(upstream_latency);
        let (mut parts, incoming) = resp.into_parts();
        headers::sanitize_response(&mut parts.headers);
        if let Some(e) = parts.headers.get(header::CONTENT_ENCODING) {
            if !e.as_bytes().eq_ignore_ascii_case(b"identity") {
                this.upstream.answered_compressed(e);
            }
        }
        let event_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let config = &this.upstream.config;
        // The Responses API echoes the request's tools and schemas as JSON: its usage is read
        // where it stands, not wherever a member has its name (`account::scanner`).
        let echoes = record.route == Scope::Responses.name();
        let scan = Some(UsageScanner::for_answer(echoes));
        let mut body = Body::upstream(incoming, lease, config.idle_timeout, scan, event_stream);
        body.end_on_revoke(this.state);
        record.added = Added::Measured(*this.before + (this.sent.elapsed() - upstream_latency));
        if *this.strip_usage {
            parts.headers.remove(header::CONTENT_LENGTH);
            body.strip_usage_chunk();
        }
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}
