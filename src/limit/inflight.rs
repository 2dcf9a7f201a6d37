//! In-flight caps: a key's count of requests in flight (`InFlight`, in its runtime state) and
//! the gateway-wide `Capacity`. Each slot is an atomic add; it is given back when its guard
//! drops, which for a proxied request is when the response body ends or the client goes away.

use crate::error::GatewayError;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// A counter of requests in flight with a cap.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU32,
}

impl InFlight {
    /// Takes a slot if fewer than `cap` are taken; `release` gives it back.
    pub fn try_take(&self, cap: u32) -> bool {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= cap {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gateway-wide cap: past it, answer 503 `overloaded` at once instead of queueing.
#[derive(Debug)]
pub struct Capacity {
    used: AtomicUsize,
    cap: AtomicUsize,
}

pub struct CapacityGuard(Arc<Capacity>);

impl Capacity {
    pub fn new(cap: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            used: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
        })
    }

    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub fn acquire(self: &Arc<Self>) -> Result<CapacityGuard, GatewayError> {
        let prev = self.used.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cap.load(Ordering::Relaxed) {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::Overloaded);
        }
        Ok(CapacityGuard(Arc::clone(self)))
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for CapacityGuard {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}
