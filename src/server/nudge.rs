//! Wakers that say which of a task's futures woke it.
//!
//! A connection's driver polls hyper's connection beside the server's stop signal and one
//! timer. tokio wakes a task as a whole, several times per request for hyper alone, and
//! polling the stop signal and the timer at each of those wakes cost about 1k instructions per
//! request (the stop signal's wait was registered and dropped again every time). Each of the
//! two is polled with a waker of its own instead ([`waker`]): woken, it sets its bit in the
//! task's [`Nudges`] and wakes the task, and the driver polls only what has its bit set.
//!
//! The bits live in one word, in memory the connection touches at every request anyway (its
//! `Activity`), and the driver reads them with a plain load: with many connections open, a
//! connection's memory is cold at each of its polls, and one swap per future on a block of its
//! own cost two cache misses and two locked instructions per poll (a fifth of the connection
//! task's own time at 256 connections, by `perf annotate`).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// One bit per future of a task that has a waker of its own, and the task to wake.
#[derive(Debug)]
pub struct Nudges {
    bits: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Nudges {
    /// With `bits` set: those futures are polled at the task's first chance.
    pub fn new(bits: u8) -> Nudges {
        Nudges {
            bits: AtomicU8::new(bits),
            task: Mutex::new(None),
        }
    }

    /// The bits set since the last call, cleared. A plain load when none is set, which is
    /// nearly always.
    pub fn take(&self) -> u8 {
        if self.bits.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.bits.swap(0, Ordering::AcqRel)
    }

    /// The task to wake from now on.
    pub fn wakes(&self, task: &Waker) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
    }
}

/// A task's own `Nudges`, for tests of the wakers alone.
#[cfg(test)]
impl AsRef<Nudges> for Nudges {
    fn as_ref(&self) -> &Nudges {
        self
    }
}

/// Sets one bit of its owner's `Nudges`, then wakes the task.
struct Nudge<O> {
    owner: Arc<O>,
    bit: u8,
}

impl<O: AsRef<Nudges> + Send + Sync + 'static> Wake for Nudge<O> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let n = (*self.owner).as_ref();
        n.bits.fetch_or(self.bit, Ordering::Release);
        if let Some(task) = n
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            task.wake_by_ref();
        }
    }
}

/// A waker for the future that `bit` stands for in `owner`'s `Nudges`.
pub fn waker<O: AsRef<Nudges> + Send + Sync + 'static>(owner: &Arc<O>, bit: u8) -> Waker {
    Waker::from(Arc::new(Nudge {
        owner: Arc::clone(owner),
        bit,
    }))
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

    const A: u8 = 1;
    const B: u8 = 2;

    #[test]
    fn a_wake_sets_its_bit_and_wakes_the_task() {
        let n = Arc::new(Nudges::new(A | B));
        assert_eq!(n.take(), A | B, "new: both set");
        assert_eq!(n.take(), 0, "taken");
        let (task, count) = counting_waker();
        n.wakes(&task);
        let (a, b) = (waker(&n, A), waker(&n, B));
        b.wake_by_ref();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(n.take(), B, "only the woken one");
        a.wake();
        b.wake();
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert_eq!(n.take(), A | B);
        assert_eq!(n.take(), 0);
    }

    /// A wake from another thread, racing the driver's look, is never lost: either the look
    /// sees its bit, or the task is woken after the bit was set.
    #[test]
    fn a_wake_from_another_thread_is_seen() {
        let n = Arc::new(Nudges::new(0));
        let (task, count) = counting_waker();
        n.wakes(&task);
        let w = waker(&n, B);
        let t = std::thread::spawn(move || w.wake());
        let mut seen = 0;
        while seen == 0 {
            seen = n.take();
            if seen == 0 && count.load(Ordering::SeqCst) == 1 {
                seen = n.take();
                assert_eq!(seen, B, "woken, so its bit is set");
            }
        }
        t.join().unwrap();
        assert_eq!(seen, B);
    }
}
