//! The wait for an upstream's response head, bounded by `first_byte_timeout` counted from
//! the last byte of the request body the upstream was sent, not from when sending began.
//!
//! A request body streams from the client through the gateway as the upstream reads it: a
//! 25 MB recording on a slow link takes minutes to arrive, and no upstream answers before it
//! has it. Counted from the start, the deadline cut such an upload with a 504 blamed on the
//! upstream. So while the body is still arriving (its byte count moved since the deadline
//! was set) the deadline moves on: the upstream always has at least `first_byte_timeout`
//! after the last byte. A client that stalls is cut by its own body's time limits
//! (`body_read_timeout` and the body's rate: `proxy::idle`), a 400, not by this.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// No response head within `first_byte_timeout` of the request's last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLate;

pin_project_lite::pin_project! {
    /// `inner`, or `HeadLate` when the deadline passes with the body's count unmoved.
    pub struct FirstByte<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        // `None` for a body held whole, which is written at once. Boxed: most bodies are,
        // and the wait is copied whole into its box at every request.
        streamed: Option<Box<Streamed>>,
    }
}

/// A streamed body's count, and the deadline's length to move it on by.
struct Streamed {
    /// The bytes sent so far (`UpBody::progress`).
    progress: Arc<AtomicU64>,
    /// The count when the deadline was last set.
    seen: u64,
    timeout: Duration,
}

impl<F> FirstByte<F> {
    pub fn new(
        inner: F,
        sent: Instant,
        timeout: Duration,
        progress: Option<Arc<AtomicU64>>,
    ) -> Self {
        FirstByte {
            inner,
            sleep: tokio::time::sleep_until(sent + timeout),
            streamed: progress.map(|progress| {
                Box::new(Streamed {
                    seen: progress.load(Ordering::Relaxed),
                    progress,
                    timeout,
                })
            }),
        }
    }
}

impl<F: Future> Future for FirstByte<F> {
    type Output = Result<F::Output, HeadLate>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let Some(s) = this.streamed.as_deref_mut() else {
                return Poll::Ready(Err(HeadLate));
            };
            let now = s.progress.load(Ordering::Relaxed);
            if now == s.seen {
                return Poll::Ready(Err(HeadLate));
            }
            s.seen = now;
            let next = Instant::now() + s.timeout;
            this.sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_moves_while_the_body_arrives() {
        let t = Duration::from_secs(2);
        let progress = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let feeder = {
            let p = Arc::clone(&progress);
            tokio::spawn(async move {
                // 5 s of upload, a chunk every 500 ms, then nothing.
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    p.fetch_add(100, Ordering::Relaxed);
                }
            })
        };
        let wait = FirstByte::new(
            std::future::pending::<()>(),
            start,
            t,
            Some(Arc::clone(&progress)),
        );
        assert_eq!(wait.await, Err(HeadLate));
        let waited = start.elapsed();
        feeder.await.unwrap();
        // The last byte came at 5 s: at least 2 s after it, at most 4.
        assert!(
            waited >= Duration::from_secs(7) && waited <= Duration::from_secs(9),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_held_whole_times_out_from_the_start() {
        let start = Instant::now();
        let wait = FirstByte::new(
            std::future::pending::<()>(),
            start,
            Duration::from_secs(2),
            None,
        );
        assert_eq!(wait.await, Err(HeadLate));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let ready = FirstByte::new(async { 7 }, start, Duration::from_secs(2), None);
        assert_eq!(ready.await, Ok(7));
    }
}
