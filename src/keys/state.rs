//! What a key does at runtime: its rate cell, in-flight count, token bucket, usage counters,
//! quota counts and revocation, created on the key's first request and shared by every index of
//! the gateway (`KeyIndex`'s registry), so a reload neither resets limits nor loses usage.

use crate::keys::usage::KeyUsage;
use crate::limit::inflight::InFlight;
use crate::limit::quota::QuotaState;
use crate::limit::rate::RateCell;
use crate::limit::tokens::TokenBucket;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// What a key does at runtime. Created on the key's first request.
#[derive(Debug, Default)]
pub struct KeyState {
    pub rate: RateCell,
    pub in_flight: InFlight,
    pub tokens: TokenBucket,
    pub usage: KeyUsage,
    pub quota: QuotaState,
    pub revocation: Revocation,
}

/// Ends a key's running requests when a reload finds it revoked or gone from the file.
///
/// A flag every response body checks on each poll (one atomic load), and a `Notify` that
/// wakes the requests that are waiting (for the upstream's head, or for the next frame of a
/// stream), created the first time someone needs it. A request registers only while it
/// waits, so the cost on the request path is a load, and a lock of this key's list of
/// waiters when a request first waits and when it ends.
#[derive(Debug, Default)]
pub struct Revocation {
    /// 0 while the key may run, else an `Ended` as its `u8`.
    ended: AtomicU8,
    /// How many times the waiters were woken: a waiter that slept through a revoke a restore
    /// has undone since sees it changed, and waits again with a new registration.
    wakes: AtomicU32,
    notify: OnceLock<Arc<Notify>>,
}

/// Why a key's running requests were ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ended {
    Revoked = 1,
    Disabled = 2,
}

impl Revocation {
    fn notify(&self) -> &Arc<Notify> {
        self.notify.get_or_init(Default::default)
    }

    pub fn is_revoked(&self) -> bool {
        self.ended.load(Ordering::SeqCst) != 0
    }

    /// Why the key's requests were ended, if they were.
    pub fn ended(&self) -> Option<Ended> {
        match self.ended.load(Ordering::SeqCst) {
            1 => Some(Ended::Revoked),
            2 => Some(Ended::Disabled),
            _ => None,
        }
    }

    /// Marks the key revoked and wakes everything waiting on it. The flag is stored before
    /// the wake-up and read after a waiter registered (both sequentially consistent, as are
    /// `Notify`'s own counters), so a request registering at the same moment either sees the
    /// flag or is woken.
    pub(crate) fn revoke(&self, why: Ended) {
        if self.ended.swap(why as u8, Ordering::SeqCst) == 0 {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.notify().notify_waiters();
        }
    }

    /// How many times a revoke woke the waiters.
    pub fn wakes(&self) -> u32 {
        self.wakes.load(Ordering::SeqCst)
    }

    /// The key is active again (its `revoked_at` was removed by hand): new requests run.
    pub(crate) fn restore(&self) {
        if self.ended.load(Ordering::Relaxed) != 0 {
            self.ended.store(0, Ordering::SeqCst);
        }
    }

    /// Completes once the key is revoked (for tests: requests hold a `RevokeWatch`).
    #[cfg(test)]
    pub async fn revoked(&self) {
        loop {
            let woken = self.notify().notified();
            if self.is_revoked() {
                return;
            }
            woken.await;
        }
    }

    /// A wake-up for a response body to hold (and poll while it waits); it fires on the
    /// next `revoke`.
    pub fn watch(&self) -> OwnedNotified {
        Arc::clone(self.notify()).notified_owned()
    }
}
