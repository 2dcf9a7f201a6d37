//! Upstream health checks, for readiness: an upstream with `health = "/health"` is asked on
//! its own interval, in the background, and `/readyz` reads the cached answer. A probe never
//! causes a request upstream, however often the kubelet or a load balancer asks.
//!
//! Readiness with several upstreams: the gateway is ready when every upstream *that has a
//! health check* last answered it with a 2xx. An upstream without `health` never holds
//! readiness back, so an operator chooses which upstreams the pod cannot serve without (the
//! model server in the same pod) and which it can (a shared one elsewhere). A failing check
//! only affects readiness: requests are still forwarded and fail or succeed on their own.

use crate::gateway::Gateway;
use crate::proxy::upstream::Upstream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
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

    /// `Some(up)` once checked.
    pub fn is_up(&self) -> Option<bool> {
        match self.status() {
            Status::Unknown => None,
            s => Some(s == Status::Up),
        }
    }

    /// Claims the next check if it is due at `now`; returns when the one after is due.
    fn claim(&self, now: Instant, interval: Duration) -> (bool, Instant) {
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
    fn record(&self, up: bool) -> Status {
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

/// Checks every upstream with a health check when it is due, until the task is aborted.
/// Reads the live upstream list each round, so a config reload that adds, changes or removes
/// a check takes effect at once.
pub async fn run(gw: Arc<Gateway>) {
    loop {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for u in gw.live().upstreams.iter() {
            let (Some(check), Some(state)) = (u.config.health.as_ref(), u.health()) else {
                continue;
            };
            let (start, next) = state.claim(now, check.interval);
            wake = wake.min(next);
            if start {
                tokio::spawn(check_one(Arc::clone(u), Arc::clone(state)));
            }
        }
        tokio::time::sleep_until(wake).await;
    }
}

async fn check_one(u: Arc<Upstream>, state: Arc<HealthState>) {
    let result = u.check_health().await;
    let before = state.record(result.is_ok());
    u.series.set_up(result.is_ok());
    match (before, result) {
        (Status::Up, Ok(())) => {}
        (_, Ok(())) => tracing::info!(upstream = %u.name, "upstream health check passes"),
        (Status::Down, Err(_)) => {}
        (_, Err(e)) => {
            tracing::warn!(upstream = %u.name, error = %e, "upstream health check fails; not ready")
        }
    }
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
        assert_eq!(s.is_up(), Some(false));
        assert!(s.claim(t0 + i, i).0);
        assert_eq!(s.record(true), Status::Down);
        assert_eq!(s.status(), Status::Up);
    }
}
