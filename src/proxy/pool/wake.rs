//! The waker an upstream connection is driven with: the driving task's, minus one wake that
//! only costs a poll.
//!
//! hyper's connection hands a response body to its reader through a one-frame channel, and
//! taking a frame wakes whoever drives the connection, so that it reads the next one. Here
//! that is the very task taking the frame, from inside its own poll: the runtime marks it to
//! be polled again, and it is, a whole poll of the client's connection that finds nothing to
//! do (one in four of a plain request's polls). The wake is redundant: the body drives the
//! connection before every read of the channel (`Relay` in `proxy::response_body`), and the
//! connection cannot send another frame before the body has taken this one.
//!
//! So the connection is driven with a waker of its own that passes every wake on to the task
//! that drives it now, except a wake raised on the thread that is taking a frame, while it
//! takes it (`DriveWaker::taking`). A wake from any other thread (the I/O driver of a
//! multi-threaded runtime, an HTTP/2 stream's task feeding the request's body) passes
//! during the take too: only the channel's own wake, raised inside the take, is dropped.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};
use std::thread::ThreadId;

/// The waker one upstream connection is driven with, kept for the connection's life.
pub(super) struct DriveWaker {
    state: Arc<State>,
    /// `state` as a `Waker`, made once.
    waker: Waker,
}

struct State {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The waker of the task driving the connection now.
    task: Waker,
    /// The thread taking a body frame, while it does.
    taking: Option<ThreadId>,
}

impl DriveWaker {
    pub(super) fn new() -> DriveWaker {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                task: Waker::noop().clone(),
                taking: None,
            }),
        });
        DriveWaker {
            waker: Waker::from(Arc::clone(&state)),
            state,
        }
    }

    /// A context for driving the connection on behalf of `cx`'s task.
    pub(super) fn context<'w>(&'w self, cx: &Context<'_>) -> Context<'w> {
        let mut inner = self.state.lock();
        if !inner.task.will_wake(cx.waker()) {
            inner.task = cx.waker().clone();
        }
        Context::from_waker(&self.waker)
    }

    /// Runs `take` (a read of the connection's body channel) with the channel's wake of the
    /// connection's driver dropped, on this thread only.
    pub(super) fn taking<R>(&self, take: impl FnOnce() -> R) -> R {
        self.state.lock().taking = Some(std::thread::current().id());
        let r = take();
        self.state.lock().taking = None;
        r
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let inner = self.lock();
        if inner
            .taking
            .is_some_and(|t| t == std::thread::current().id())
        {
            return;
        }
        inner.task.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        let w = Waker::from(Arc::clone(&c));
        (c, w)
    }

    #[test]
    fn wakes_reach_the_task_driving_now() {
        let d = DriveWaker::new();
        let (first, w1) = counted();
        let (second, w2) = counted();
        d.context(&Context::from_waker(&w1)).waker().wake_by_ref();
        // The connection changes hands: wakes registered earlier reach the new driver.
        let registered = d.context(&Context::from_waker(&w1)).waker().clone();
        let _ = d.context(&Context::from_waker(&w2));
        registered.wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_a_wake_from_inside_the_take_on_its_thread_is_dropped() {
        let d = DriveWaker::new();
        let (task, w) = counted();
        let registered = d.context(&Context::from_waker(&w)).waker().clone();
        d.taking(|| {
            // The channel's own wake, raised by the take: dropped.
            registered.wake_by_ref();
            // A wake from another thread meanwhile (the I/O driver, another task): passed on.
            let other = registered.clone();
            std::thread::spawn(move || other.wake()).join().unwrap();
        });
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        // After the take, wakes pass again.
        registered.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
    }
}
