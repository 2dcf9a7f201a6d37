//! Stage 4 of a request: per-key rate (GCRA), per-key and gateway-wide in-flight caps, and
//! the per-address failed-authentication guard.
//!
//! Every limiter here is lock-free on the path of an allowed request: a GCRA cell is one
//! atomic compare-and-swap and an in-flight slot one atomic add. A key's limiter lives in the
//! key index and is carried over a reload when its quota is unchanged, so editing the key file
//! does not hand every key a fresh burst.

use crate::error::GatewayError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One key's request-rate limiter.
#[derive(Debug)]
pub struct RateLimit {
    gcra: Gcra,
    pub per_minute: u32,
    pub burst: u32,
}

/// The outcome of one rate check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// `Some` when this request is refused, with how long to wait.
    pub retry_after: Option<Duration>,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimit {
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        let quota = Quota::per_minute(nz(per_minute)).allow_burst(nz(burst));
        RateLimit {
            gcra: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            per_minute,
            burst,
        }
    }

    /// Takes one request's cell.
    pub fn check(&self) -> RateInfo {
        let interval = Duration::from_secs(60) / self.per_minute.max(1);
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateInfo {
                    limit: self.per_minute,
                    remaining,
                    reset: interval * self.burst.saturating_sub(remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateInfo {
                    limit: self.per_minute,
                    remaining: 0,
                    reset: interval * self.burst,
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                }
            }
        }
    }
}

impl RateInfo {
    pub fn into_result(self) -> Result<(), GatewayError> {
        match self.retry_after {
            None => Ok(()),
            Some(retry_after) => Err(GatewayError::RateLimited {
                limit: self.limit,
                retry_after,
            }),
        }
    }
}

/// A counter of requests in flight with a cap; the slot is given back when the guard drops,
/// which for a proxied request is when the response body ends or the client goes away.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU32,
}

pub struct InFlightGuard {
    owner: Arc<InFlight>,
}

impl InFlight {
    pub fn acquire(self: &Arc<Self>, cap: u32) -> Option<InFlightGuard> {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= cap {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightGuard {
            owner: Arc::clone(self),
        })
    }

    pub fn current(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.owner.count.fetch_sub(1, Ordering::AcqRel);
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

type KeyedGcra = RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Counts bad credentials per client address. Once an address is over its allowance it is
/// refused before its credential is even parsed, let alone hashed (OWASP API2).
pub struct FailedAuthGuard {
    failures: KeyedGcra,
    blocked: dashmap::DashMap<IpAddr, Instant>,
    per_minute: AtomicU32,
}

impl FailedAuthGuard {
    pub fn new(per_minute: u32) -> FailedAuthGuard {
        FailedAuthGuard {
            failures: RateLimiter::<
                IpAddr,
                governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
                DefaultClock,
            >::keyed(Quota::per_minute(nz(per_minute)))
            .with_middleware::<StateInformationMiddleware>(),
            blocked: dashmap::DashMap::new(),
            per_minute: AtomicU32::new(per_minute),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Relaxed)
    }

    /// Refuses an address that is blocked. Cheap when nobody is: one empty-map check.
    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        if self.blocked.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        match self.blocked.get(&ip).map(|until| *until) {
            Some(until) if until > now => Err(GatewayError::TooManyFailedAttempts {
                retry_after: until - now,
            }),
            Some(_) => {
                self.blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records one bad credential from `ip`. The failure that uses up the allowance blocks
    /// the address, so the next attempt is refused before any work.
    pub fn record_failure(&self, ip: IpAddr) {
        let wait = match self.failures.check_key(&ip) {
            Ok(snapshot) if snapshot.remaining_burst_capacity() == 0 => {
                Duration::from_secs(60) / self.per_minute().max(1)
            }
            Ok(_) => return,
            Err(not_until) => not_until.wait_time_from(DefaultClock::default().now()),
        };
        self.blocked.insert(ip, Instant::now() + wait);
    }

    /// Drops state for addresses that have been quiet, so memory stays bounded.
    pub fn sweep(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }

    pub fn tracked(&self) -> usize {
        self.failures.len() + self.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_burst_then_refuses() {
        let l = RateLimit::new(10, 10);
        let infos: Vec<_> = (0..11).map(|_| l.check()).collect();
        assert!(infos[..10].iter().all(|i| i.retry_after.is_none()));
        assert_eq!(infos[9].remaining, 0);
        assert_eq!(infos[0].remaining, 9);
        let refused = infos[10];
        assert!(refused.retry_after.unwrap() > Duration::from_secs(5));
    }

    #[test]
    fn in_flight_caps_and_releases() {
        let f = Arc::new(InFlight::default());
        let a = f.acquire(1).unwrap();
        assert!(f.acquire(1).is_none());
        drop(a);
        assert!(f.acquire(1).is_some());
    }

    #[test]
    fn failed_auth_blocks_after_allowance() {
        let g = FailedAuthGuard::new(3);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..2 {
            g.record_failure(ip);
            assert!(g.check(ip).is_ok());
        }
        g.record_failure(ip);
        assert!(
            g.check(ip).is_err(),
            "the third failure uses up the allowance"
        );
        assert!(g.check("127.0.0.8".parse().unwrap()).is_ok());
    }
}
