//! A waker that says which of a task's futures woke it.
//!
//! A connection's driver polls hyper's connection beside the server's stop signal and one
//! timer. tokio wakes a task as a whole, about four times per request for hyper alone, and
//! polling the stop signal and the timer at each of those wakes cost about 1k instructions per
//! request (the stop signal's wait was registered and dropped again every time). Each of the
//! two is polled with a [`Nudge`] of its own instead: woken, it marks itself and wakes the
//! task, and the driver polls only what is marked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

/// Marks one future as wanting a poll, then wakes the task that owns it.
#[derive(Debug)]
struct Nudge {
    marked: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.marked.store(true, Ordering::Release);
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            task.wake_by_ref();
        }
    }
}

/// A nudge and the waker made of it, for polling one future of a task.
pub struct Nudged {
    nudge: Arc<Nudge>,
    waker: Waker,
}

impl Nudged {
    /// Already marked: the future is polled at the task's first chance.
    pub fn new() -> Nudged {
        let nudge = Arc::new(Nudge {
            marked: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Nudged {
            waker: Waker::from(Arc::clone(&nudge)),
            nudge,
        }
    }

    /// Whether the future was woken (or marked) since the last call; unmarks it.
    pub fn take(&self) -> bool {
        self.nudge.marked.swap(false, Ordering::AcqRel)
    }

    /// Asks for a poll without a wake: the caller is about to look anyway.
    pub fn mark(&self) {
        self.nudge.marked.store(true, Ordering::Release);
    }

    /// The task to wake from now on.
    pub fn wakes(&self, task: &Waker) {
        *self
            .nudge
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
    }

    /// The context to poll the future with.
    pub fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
}

/// A waker that counts its wakes, for tests of what wakes whom.
#[cfg(test)]
pub(crate) fn counting_waker() -> (Waker, Arc<std::sync::atomic::AtomicUsize>) {
    struct Count(Arc<std::sync::atomic::AtomicUsize>);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (Waker::from(Arc::new(Count(Arc::clone(&count)))), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_marks_and_wakes_the_task() {
        let n = Nudged::new();
        assert!(n.take(), "new: marked");
        assert!(!n.take(), "taken");
        let (task, count) = counting_waker();
        n.wakes(&task);
        n.context().waker().wake_by_ref();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(n.take());
        assert!(!n.take());
        n.mark();
        assert!(n.take(), "marked without a wake");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
