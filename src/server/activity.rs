//! What a connection's requests tell its driver (`connection`): whether one is in progress,
//! when the last one ended, when the next one's head started, which answers wait on the
//! client, how many the client cancelled before their answer, and which of the driver's own
//! futures woke its task. One block per connection, shared by its requests and its driver,
//! touched at every request: what the driver reads at each poll lives here rather than in
//! blocks of its own, which with many connections open would each be a cache miss.

use super::nudge::Nudges;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How finely a wait on the client is timed: the driver checks every `write_timeout / PARTS`,
/// so a stalled response is found between 1 and 1 + 1/PARTS times `write_timeout`.
pub(super) const PARTS: u32 = 4;
/// Counters of responses waiting on the client, by the check period they started waiting in;
/// at least `PARTS + 2` (the periods still counting, the one checked, the next one).
const SLOTS: usize = 8;
/// Requests a client may cancel before their answer beyond those answered (see `abusive`).
const CANCEL_LIMIT: u32 = 8;

/// What the connection is doing, shared by its requests' response bodies and its driver.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Requests begun and not yet ended (their response body not yet dropped).
    open: AtomicU32,
    /// A request has begun on this connection.
    used: AtomicBool,
    /// When a request last ended, in milliseconds since `start`.
    ended_ms: AtomicU64,
    /// The driver's check period; bodies count their wait in `waiting[period % SLOTS]`.
    period: AtomicU32,
    waiting: [AtomicU32; SLOTS],
    /// When the first byte of an HTTP/1.1 request head arrived while no request was in
    /// progress, in milliseconds since `start`, plus one; 0 for none.
    head_ms: AtomicU64,
    /// Requests the client abandoned before their answer, and requests answered: a client
    /// that cancels more than `CANCEL_LIMIT`, and more than it lets be answered, is cut off
    /// (`abusive`). Here, not in a block of their own, for the same reason as `nudges`.
    cancelled: AtomicU32,
    answered: AtomicU32,
    /// Which of the driver's own futures (the stop signal, the timer) woke its task: here,
    /// in memory each request touches anyway, the driver's look at every poll costs no cache
    /// miss of its own.
    nudges: Nudges,
}

impl AsRef<Nudges> for Activity {
    fn as_ref(&self) -> &Nudges {
        &self.nudges
    }
}

/// The driver's futures' bits in `Activity::nudges`.
pub(super) const STOP: u8 = 1;
pub(super) const TIMER: u8 = 2;

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            open: AtomicU32::new(0),
            used: AtomicBool::new(false),
            ended_ms: AtomicU64::new(0),
            period: AtomicU32::new(0),
            waiting: Default::default(),
            head_ms: AtomicU64::new(0),
            cancelled: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            // Both polled at the driver's first chance.
            nudges: Nudges::new(STOP | TIMER),
        })
    }

    /// Bytes of an HTTP/1.1 connection arrived: if no request is in progress, they start the
    /// next request's head (bounded by `header_read_timeout` from now). Cheap when a request
    /// is in progress (one load), which is when nearly all bytes arrive.
    pub fn http1_bytes_read(&self) {
        if self.open.load(Ordering::Acquire) > 0 || self.head_ms.load(Ordering::Relaxed) != 0 {
            return;
        }
        let ms = self.ms_since_start(Instant::now()).saturating_add(1);
        // The driver finds it on its next wake, at most `header_read_timeout` from now.
        let _ = self
            .head_ms
            .compare_exchange(0, ms, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// A request has begun on this connection.
    pub(super) fn was_used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    /// Which of the driver's futures woke its task.
    pub(super) fn nudges(&self) -> &Nudges {
        &self.nudges
    }

    /// When the head of a request not begun yet started arriving.
    pub(super) fn head_since(&self) -> Option<Instant> {
        match self.head_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.start + Duration::from_millis(ms - 1)),
        }
    }

    /// A request begins: the connection is busy until the returned `Exchange` is dropped.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.used.store(true, Ordering::Release);
        if self.head_ms.load(Ordering::Relaxed) != 0 {
            self.head_ms.store(0, Ordering::Release);
        }
        Exchange {
            activity: Arc::clone(self),
            waiting: None,
            answered: false,
            ended: false,
        }
    }

    /// The client cancels its requests before their answer, over and over (an HTTP/2 "rapid
    /// reset" after the server accepted each stream, which hyper's pending-reset limit does
    /// not see): the connection's next read fails, and hyper closes it.
    pub fn abusive(&self) -> bool {
        let c = self.cancelled.load(Ordering::Relaxed);
        c > CANCEL_LIMIT && c > self.answered.load(Ordering::Relaxed)
    }

    fn ms_since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection became idle, or `None` while a request is in progress.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.used.load(Ordering::Acquire) {
            return Some(self.start);
        }
        let ms = self.ended_ms.load(Ordering::Acquire);
        Some(self.start + Duration::from_millis(ms))
    }

    /// Starts the next check period; true if a response has waited on the client since
    /// before the period `PARTS` periods ago began.
    pub(super) fn next_period(&self) -> bool {
        let n = self.period.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let old = n.wrapping_sub(PARTS + 1) as usize % SLOTS;
        self.waiting[old].load(Ordering::Relaxed) > 0
    }
}

/// One request on a connection, held by its response body: marks the connection busy, and
/// tells the driver when the body waits on the client.
#[derive(Debug)]
pub struct Exchange {
    activity: Arc<Activity>,
    /// The slot this response counts in while hyper holds a frame of it and has not asked for
    /// the next one.
    waiting: Option<usize>,
    /// The request was answered (its answer's head was handed to hyper); dropped before
    /// that, it counts as cancelled by the client.
    answered: bool,
    /// `end` has told the connection when the answer ended.
    ended: bool,
}

impl Exchange {
    /// The request has its answer (not cancelled by the client).
    pub fn answered(&mut self) {
        if !std::mem::replace(&mut self.answered, true) {
            self.activity.answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// hyper has the response (or its latest frame) and has not asked for more yet.
    pub fn handed(&mut self) {
        if self.waiting.is_none() {
            let slot = self.activity.period.load(Ordering::Relaxed) as usize % SLOTS;
            self.activity.waiting[slot].fetch_add(1, Ordering::Relaxed);
            self.waiting = Some(slot);
        }
    }

    /// hyper asks for the next frame: the client took the last one.
    pub fn polled(&mut self) {
        if let Some(slot) = self.waiting.take() {
            self.activity.waiting[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `end` was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The answer ended at `at` (the body's own clock read, which its record and its upstream
    /// connection use too): the connection's idle time counts from then.
    pub fn end(&mut self, at: std::time::Instant) {
        if !std::mem::replace(&mut self.ended, true) {
            let a = &self.activity;
            a.ended_ms
                .fetch_max(a.ms_since_start(Instant::from_std(at)), Ordering::AcqRel);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.polled();
        if !self.answered {
            self.activity.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        // Before `open` falls, so the driver never sees it idle with an older end time.
        if !self.ended {
            self.end(std::time::Instant::now());
        }
        self.activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[path = "activity_tests.rs"]
mod tests;
