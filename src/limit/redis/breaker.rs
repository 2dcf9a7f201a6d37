//! The circuit breaker in front of Redis: after `THRESHOLD` failures in a row, calls are
//! skipped (the failure policy answers at once) for `OPEN`, then one caller probes. The reason
//! Redis fails is logged once per change, never per call.

use crate::config::cluster::OnBackendError;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker, and how long it stays open before one caller
/// probes Redis again.
const THRESHOLD: u32 = 3;
pub(super) const OPEN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed). Once it has
    /// passed, the one caller that moves it an interval on is the probe; the others keep
    /// getting the policy.
    open_until: AtomicU64,
    epoch: Instant,
    /// The failure reason last logged at warn/error; empty while Redis answers. Touched only
    /// on failures and on recovery, never on the path of a call that succeeds.
    logged: Mutex<String>,
    /// Failed calls and connection attempts.
    pub errors: AtomicU64,
    /// Named in the log line that says the breaker opened.
    policy: OnBackendError,
}

impl Breaker {
    pub fn new(policy: OnBackendError) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            logged: Mutex::new(String::new()),
            errors: AtomicU64::new(0),
            policy,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Closed: the last call succeeded, or fewer than `THRESHOLD` failed since (not open, and
    /// not waiting for a probe).
    pub fn is_closed(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }

    pub fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }

    /// May this caller call Redis? Yes while the breaker is closed; while it is open, no,
    /// except for one caller per interval: the probe.
    pub fn admit(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + OPEN.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Whether the breaker is open and its interval has passed, claiming the probe if so (a
    /// background probe, when no request came to be it).
    pub fn probe_due(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0 && self.admit()
    }

    pub fn succeeded(&self) {
        // Both read: a failure racing a success can leave the breaker open with no failures
        // counted, and a successful probe must close it then too.
        if self.failures.load(Ordering::Relaxed) == 0
            && self.open_until.load(Ordering::Relaxed) == 0
        {
            return;
        }
        let was = self.failures.swap(0, Ordering::AcqRel);
        self.open_until.store(0, Ordering::Release);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if was >= THRESHOLD || !logged.is_empty() {
            tracing::info!("Redis limit backend answers again; circuit breaker closed");
        }
        logged.clear();
    }

    pub fn failed(&self, reason: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < THRESHOLD {
            tracing::debug!(reason, "Redis limit call failed");
            return;
        }
        // Opens the breaker; a failed probe finds it open already (its claim moved it on).
        let _ = self.open_until.compare_exchange(
            0,
            self.now_ms() + OPEN.as_millis() as u64,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if *logged == reason {
            tracing::debug!(reason, "Redis limit backend still failing");
            return;
        }
        if logged.is_empty() {
            tracing::error!(
                reason,
                policy = ?self.policy,
                "Redis limit backend failing; circuit breaker open: the failure policy applies, and one call every {} probes Redis",
                humantime::format_duration(OPEN)
            );
        } else {
            tracing::warn!(
                reason,
                "Redis limit backend still failing, for another reason"
            );
        }
        reason.clone_into(&mut logged);
    }
}
