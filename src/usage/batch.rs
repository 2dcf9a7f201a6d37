//! One flush's worth of usage: what every key counted since the last flush, read (not taken)
//! from the keys' runtime state, so it can be taken off once the store has it (`drained`) and
//! stays counted if the store did not answer.

use crate::keys::entry::KeyId;
use crate::keys::index::KeyIndex;
use crate::keys::state::KeyState;
use crate::keys::usage::{Counts, ModelUsage};
use crate::limit::quota::Used;
use crate::time::Timestamp;
use crate::usage::window::{day_of, hour_of, month_of, Window};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Batch {
    /// The hour the buckets go in: the flush's.
    pub hour: u32,
    pub day: Window,
    pub month: Window,
    /// Per key and model, what its pending bucket holds.
    pub buckets: Vec<(KeyId, Arc<ModelUsage>, Counts)>,
    /// Per key, its pending quota counts.
    pub quota: Vec<(KeyId, Arc<KeyState>, Used)>,
    /// Keys with new buckets, and their last use (Unix seconds).
    pub last_used: Vec<(KeyId, u64)>,
}

impl Batch {
    /// What every key with runtime state has pending, for the windows of `now`.
    pub fn collect(index: &KeyIndex, now: Timestamp) -> Batch {
        let mut b = Batch {
            hour: hour_of(now),
            day: Window::Day(day_of(now)),
            month: Window::Month(month_of(now)),
            buckets: Vec::new(),
            quota: Vec::new(),
            last_used: Vec::new(),
        };
        for (id, state) in index.used() {
            let mut any = false;
            for m in state.usage.pending.models().iter() {
                let c = m.pending();
                if !c.is_zero() {
                    b.buckets.push((id, Arc::clone(m), c));
                    any = true;
                }
            }
            if any {
                let last = state.usage.last_used.load(Ordering::Relaxed);
                if last > 0 {
                    b.last_used.push((id, last));
                }
            }
            let q = state.quota.pending();
            if q != Used::default() {
                b.quota.push((id, state, q));
            }
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.quota.is_empty()
    }

    /// Takes what the store now has off the keys' pending counts.
    pub fn drained(&self) {
        for (_, m, c) in &self.buckets {
            m.drained(c);
        }
        for (_, state, u) in &self.quota {
            state.quota.drained(*u);
        }
    }
}
