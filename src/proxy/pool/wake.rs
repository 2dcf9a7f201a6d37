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
//! that drives it now, except a wake raised by the task taking a frame, while it takes it
//! (`DriveWaker::taking`). Whoever else wakes it meanwhile (the I/O driver of a
//! multi-threaded runtime, on another thread; an HTTP/2 stream's task feeding the request's
//! body) is passed on: only the channel's own wake, raised inside the take, is dropped. The
//! taker is told by tokio's task id, which is read without a panic even while a thread ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};
use tokio::task::Id;

/// The waker one upstream connection is driven with, kept for the connection's life.
pub(super) struct DriveWaker {
    state: Arc<State>,
    /// `state` as a `Waker`, made once.
    waker: Waker,
    /// A copy of the task waker in `state`, kept here so that the driving task's check that
    /// it is still the one there reads the connection's own memory, not `state`'s lock: with
    /// many connections open, `state` is cold at each drive, and its lock costs two locked
    /// instructions.
    driver: Waker,
}

struct State {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The waker of the task driving the connection now.
    task: Waker,
    /// The task taking a body frame, while it does.
    taking: Option<Id>,
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
            driver: Waker::noop().clone(),
        }
    }

    /// A context for driving the connection on behalf of `cx`'s task.
    pub(super) fn context<'w>(&'w mut self, cx: &Context<'_>) -> Context<'w> {
        if !self.driver.will_wake(cx.waker()) {
            self.driver = cx.waker().clone();
            self.state.lock().task = cx.waker().clone();
        }
        Context::from_waker(&self.waker)
    }

    /// Runs `take` (a read of the connection's body channel) with the wakes this task raises
    /// meanwhile dropped. Outside a task (no id to tell it by) nothing is dropped.
    pub(super) fn taking<R>(&self, take: impl FnOnce() -> R) -> R {
        let Some(me) = tokio::task::try_id() else {
            return take();
        };
        self.state.lock().taking = Some(me);
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
            .is_some_and(|t| Some(t) == tokio::task::try_id())
        {
            return;
        }
        inner.task.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::nudge::counting_waker;
    use std::sync::atomic::Ordering;

    #[test]
    fn wakes_reach_the_task_driving_now() {
        let mut d = DriveWaker::new();
        let (w1, first) = counting_waker();
        let (w2, second) = counting_waker();
        d.context(&Context::from_waker(&w1)).waker().wake_by_ref();
        // The connection changes hands: wakes registered earlier reach the new driver.
        let registered = d.context(&Context::from_waker(&w1)).waker().clone();
        let _ = d.context(&Context::from_waker(&w2));
        registered.wake_by_ref();
        assert_eq!(first.load(Ordering::SeqCst), 1);
        assert_eq!(second.load(Ordering::SeqCst), 1);
        // And back: the copy kept beside the waker follows every change.
        let _ = d.context(&Context::from_waker(&w1));
        registered.wake();
        assert_eq!(first.load(Ordering::SeqCst), 2);
        assert_eq!(second.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_wake_the_taking_task_raises_during_its_take_is_dropped() {
        let mut d = DriveWaker::new();
        let (w, task) = counting_waker();
        let registered = d.context(&Context::from_waker(&w)).waker().clone();
        let d = Arc::new(d);
        let (d2, r2) = (Arc::clone(&d), registered.clone());
        tokio::spawn(async move {
            let (r3, r4) = (r2.clone(), r2.clone());
            d2.taking(|| {
                // The channel's own wake, raised by the take: dropped.
                r2.wake_by_ref();
                // A wake from a thread outside the runtime meanwhile: passed on.
                std::thread::spawn(move || r3.wake()).join().unwrap();
                // A wake from another task meanwhile, on the other worker (an HTTP/2 stream
                // feeding the request's body): passed on. The take waits for it. (Spawned
                // from outside the runtime: a task spawned on this worker would wait for it.)
                let (done, wait) = std::sync::mpsc::channel();
                let rt = tokio::runtime::Handle::current();
                std::thread::spawn(move || {
                    rt.spawn(async move {
                        r4.wake_by_ref();
                        let _ = done.send(());
                    })
                });
                wait.recv().unwrap();
            });
        })
        .await
        .unwrap();
        assert_eq!(task.load(Ordering::SeqCst), 2);
        // Outside a take, and outside any task, wakes pass.
        registered.wake_by_ref();
        d.taking(|| registered.wake_by_ref());
        assert_eq!(task.load(Ordering::SeqCst), 4);
    }
}
