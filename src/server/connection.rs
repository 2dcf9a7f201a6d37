//! One client connection's deadlines that hyper has no timer for, and the driver that applies
//! them.
//!
//! hyper bounds the wait for an HTTP/1.1 request head, but nothing closes an HTTP/2 connection
//! that never opens a stream (a client that answers PINGs keeps it forever), nor a connection
//! whose client stops reading an answer: hyper then stops polling the response body (no send
//! window on the stream, or a full socket buffer), so no timer inside the body can run, and the
//! upstream connection and the request's slots stay taken. [`drive`] polls the hyper connection
//! beside one timer and, when it fires, reads the connection's [`Activity`]:
//!
//! - no request yet: closed `header_read_timeout` after it was accepted;
//! - no request in progress: closed `idle_timeout` after the last one ended — unless the
//!   client has started sending the next HTTP/1.1 request head, which must then be complete
//!   `header_read_timeout` after its first byte (a slowloris on a kept-alive connection);
//!   hyper's own header timer is off, because it would also count the idle wait between
//!   requests, and a keep-alive connection that a load balancer holds open for a minute must
//!   not be closed at 10 s (the balancer would race us with its next request);
//! - a response that waited on the client for `write_timeout`: the connection is dropped, which
//!   drops every response body on it (accounting settles, slots are freed, upstream
//!   connections close);
//! - server shutdown: closed gracefully, the server waiting for the driver to return.
//!
//! "Closed" means hyper's `graceful_shutdown` (GOAWAY on HTTP/2, `connection: close` on
//! HTTP/1.1); a connection that has still not ended `header_read_timeout` later, with no
//! request in progress, is dropped.
//!
//! The request path pays little for this (`activity`): one `Arc` clone and two atomic adds
//! when a request starts, one when it is answered, a clock read when it ends and when the next
//! one's head starts, and two relaxed atomic adds per response frame. Nothing on the request
//! path wakes the driver (a wake per request would cost the connection's task an extra poll):
//! it wakes on its own at least every `header_read_timeout` and every quarter of
//! `write_timeout`, which is soon enough to find a head that started since, and then times
//! that head from its first byte.

use super::activity::{Activity, PARTS, STOP, TIMER};
use super::nudge;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The deadlines the driver applies (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header_read: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Why the driver ended a connection without waiting for hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A response waited on the client for `write_timeout`.
    WriteStalled,
    /// Asked to close, it still had not, with no request in progress.
    CloseIgnored,
    /// A request head did not arrive whole within `header_read_timeout` of its first byte
    /// (or of the accept, for a connection's first request).
    HeadTimeout,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// hyper finished the connection.
    Done(Result<(), E>),
    /// The driver dropped it.
    Cut(Cut),
}

/// Polls `conn` to its end, applying the deadlines; `graceful` asks it to close. `stop`
/// changing (or its sender going away) is the server shutting down.
/// The stop signal and the timer are polled only when they woke the task (`nudge`).
pub async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Arc<Activity>,
    d: Deadlines,
    mut stop: watch::Receiver<bool>,
) -> Ended<E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut clock = Clock::new(d);
    let mut stopping = *stop.borrow_and_update();
    if stopping {
        graceful(conn.as_mut());
        clock.closing = Some(Instant::now());
    }
    // The first wake works out the first deadline.
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut stopped = pin!(stop.changed());
    let (stop_waker, timer_waker) = (nudge::waker(activity, STOP), nudge::waker(activity, TIMER));
    let nudges = activity.nudges();
    let mut task: Option<Waker> = None;
    poll_fn(|cx| {
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            nudges.wakes(cx.waker());
            task = Some(cx.waker().clone());
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Done(r));
        }
        let mut closed = false;
        let mut woke = nudges.take();
        if !stopping
            && woke & STOP != 0
            && stopped
                .as_mut()
                .poll(&mut Context::from_waker(&stop_waker))
                .is_ready()
        {
            stopping = true;
            closed = clock.closing.is_none();
        }
        while woke & TIMER != 0 {
            woke = 0;
            if timer
                .as_mut()
                .poll(&mut Context::from_waker(&timer_waker))
                .is_pending()
            {
                break;
            }
            match clock.fired(activity) {
                Ok((wake, close)) => {
                    closed |= close;
                    timer.as_mut().reset(wake);
                    // Polled again: tokio registers a timer's waker when it is polled.
                    woke = TIMER;
                }
                Err(cut) => return Poll::Ready(Ended::Cut(cut)),
            }
        }
        if closed {
            graceful(conn.as_mut());
            clock.closing.get_or_insert_with(Instant::now);
            // hyper acts on it when polled next.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// The driver's reckoning of deadlines, made when its timer fires.
struct Clock {
    d: Deadlines,
    check_every: Duration,
    next_check: Instant,
    /// When the driver asked the connection to close.
    closing: Option<Instant>,
}

impl Clock {
    fn new(d: Deadlines) -> Clock {
        let check_every = (d.write / PARTS).max(Duration::from_millis(1));
        Clock {
            d,
            check_every,
            next_check: Instant::now() + check_every,
            closing: None,
        }
    }

    /// The timer fired: the connection is cut, or (when to wake next, whether to ask the
    /// connection to close now).
    fn fired(&mut self, activity: &Activity) -> Result<(Instant, bool), Cut> {
        let d = self.d;
        let now = Instant::now();
        if now >= self.next_check {
            if activity.next_period() {
                return Err(Cut::WriteStalled);
            }
            self.next_check = now + self.check_every;
        }
        // Never asleep longer than a head may take: a head that starts while the driver
        // sleeps is found in time to be cut at its own deadline.
        let mut wake = self.next_check.min(now + d.header_read);
        let mut close = false;
        match activity.idle_since() {
            // Busy: whenever its last request ends, a deadline counts from then, so none can
            // come sooner than a whole one from now.
            None => {
                let soonest = if self.closing.is_some() {
                    d.header_read
                } else {
                    d.idle
                };
                wake = wake.min(now + soonest);
            }
            Some(idle) => match self.closing {
                Some(asked) => {
                    let give_up = asked.max(idle) + d.header_read;
                    if now >= give_up {
                        return Err(Cut::CloseIgnored);
                    }
                    wake = wake.min(give_up);
                }
                None => {
                    let used = activity.was_used();
                    let head = activity.head_since();
                    // A head being read: cut at its deadline (hyper would wait for it to
                    // finish before closing gracefully). The first request's deadline counts
                    // from the accept.
                    let deadline = match (used, head) {
                        (false, _) => idle + d.header_read,
                        (true, Some(h)) => h + d.header_read,
                        (true, None) => idle + d.idle,
                    };
                    if now >= deadline {
                        if head.is_some() {
                            return Err(Cut::HeadTimeout);
                        }
                        close = true;
                        self.closing = Some(now);
                        wake = wake.min(now + d.header_read);
                    } else {
                        wake = wake.min(deadline);
                    }
                }
            },
        }
        Ok((wake, close))
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
