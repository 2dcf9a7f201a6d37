//! An upstream's health-check result, cached with the upstream (`Upstream::health`), where
//! `/readyz` and the metrics read it; `ops::health` runs the checks on their intervals.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What the last check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Not checked yet (at start, or since the check was configured).
    Unknown = 0,
    Up = 1,
    Down = 2,
}

/// The cached result of an upstream's health check, shared across config reloads that keep
/// the same upstream and check.
#[derive(Debug)]
pub struct HealthState {
    status: AtomicU8,
    /// A check is running: the next is not started until it ends.
    checking: AtomicBool,
    next: Mutex<Option<Instant>>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            status: AtomicU8::new(Status::Unknown as u8),
            checking: AtomicBool::new(false),
            next: Mutex::new(None),
        }
    }
}

impl HealthState {
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            1 => Status::Up,
            2 => Status::Down,
            _ => Status::Unknown,
        }
    }

    /// Claims the next check if it is due at `now`; returns when the one after is due.
    pub fn claim(&self, now: Instant, interval: Duration) -> (bool, Instant) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let due = next.unwrap_or(now);
        if due > now || self.checking.load(Ordering::Acquire) {
            return (false, due.max(now + Duration::from_millis(10)));
        }
        self.checking.store(true, Ordering::Release);
        let after = now + interval;
        *next = Some(after);
        (true, after)
    }

    /// Records a result; returns the previous status.
    pub fn record(&self, up: bool) -> Status {
        let s = if up { Status::Up } else { Status::Down };
        let before = self.status.swap(s as u8, Ordering::AcqRel);
        self.checking.store(false, Ordering::Release);
        match before {
            1 => Status::Up,
            2 => Status::Down,
            _ => Status::Unknown,
        }
    }
}

/// Why an upstream failed its check, for the log.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Send(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_is_claimed_once_per_interval_and_never_twice_at_once() {
        let s = HealthState::default();
        let t0 = Instant::now();
        let i = Duration::from_secs(5);
        assert_eq!(s.claim(t0, i), (true, t0 + i));
        // Due again only after the interval, and only once the running check ended.
        assert!(!s.claim(t0 + Duration::from_secs(1), i).0);
        assert!(!s.claim(t0 + i, i).0, "still checking");
        assert_eq!(s.record(false), Status::Unknown);
        assert_eq!(s.status(), Status::Down);
        assert!(s.claim(t0 + i, i).0);
        assert_eq!(s.record(true), Status::Down);
        assert_eq!(s.status(), Status::Up);
    }
}
