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

impl Nudge {
    /// A nudge already marked: its future is polled at the task's first chance.
    fn new() -> Arc<Nudge> {
        Arc::new(Nudge {
            marked: AtomicBool::new(true),
            task: Mutex::new(None),
        })
    }

    fn take(&self) -> bool {
        self.marked.swap(false, Ordering::AcqRel)
    }

    fn mark(&self) {
        self.marked.store(true, Ordering::Release);
    }

    fn wakes(&self, task: &Waker) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
    }
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark();
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
    pub fn new() -> Nudged {
        let nudge = Nudge::new();
        Nudged {
            waker: Waker::from(Arc::clone(&nudge)),
            nudge,
        }
    }

    /// Whether the future was woken (or marked) since the last call; unmarks it.
    pub fn take(&self) -> bool {
        self.nudge.take()
    }

    /// Asks for a poll without a wake: the caller is about to look anyway.
    pub fn mark(&self) {
        self.nudge.mark();
    }

    /// The task to wake from now on.
    pub fn wakes(&self, task: &Waker) {
        self.nudge.wakes(task);
    }

    /// The context to poll the future with.
    pub fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_marks_and_wakes_the_task() {
        let n = Nudged::new();
        assert!(n.take(), "new: marked");
        assert!(!n.take(), "taken");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        n.wakes(&Waker::from(Arc::clone(&count)));
        n.context().waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(n.take());
        assert!(!n.take());
        n.mark();
        assert!(n.take(), "marked without a wake");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
