//! The per-address failed-authentication guard: bad credentials are counted per client
//! address (keyed GCRA, governor), and an address over its allowance has its bad credentials
//! refused with 429 while its valid keys are still served.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::RateLimiter;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

type KeyedGcra = RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Counts bad credentials per client address. Once an address is over its allowance its
/// bad credentials are refused with 429, and each one extends the block (OWASP API2); a
/// valid key from the same address is still served, since behind a proxy or NAT one address
/// is many clients, and refusing them all would hand any of them a lock-out of the rest.
pub struct FailedAuthGuard {
    failures: KeyedGcra,
    blocked: dashmap::DashMap<IpAddr, Instant>,
    /// False only while `blocked` is empty: the request path reads one flag instead of
    /// asking every shard of the map.
    any_blocked: AtomicBool,
    per_minute: AtomicU32,
}

impl FailedAuthGuard {
    /// A guard allowing `per_minute` bad credentials per address. Its clock is made here, once:
    /// making a `quanta` clock calibrates it (CPUID, ~20 µs in a VM), too slow per request.
    pub fn new(per_minute: u32) -> FailedAuthGuard {
        FailedAuthGuard {
            failures: KeyedGcra::new(
                governor::Quota::per_minute(nz(per_minute)),
                governor::state::keyed::DefaultKeyedStateStore::<IpAddr>::default(),
                DefaultClock::default(),
            ),
            blocked: dashmap::DashMap::new(),
            any_blocked: AtomicBool::new(false),
            per_minute: AtomicU32::new(per_minute),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Relaxed)
    }

    /// True while `ip` is over its allowance. Cheap when nobody is: one flag.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        if !self.any_blocked.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        match self.blocked.get(&ip).map(|until| *until) {
            Some(until) if until > now => true,
            Some(_) => {
                self.blocked.remove_if(&ip, |_, until| *until <= now);
                false
            }
            None => false,
        }
    }

    /// Records one bad credential from `ip`. The failure that uses up the allowance blocks
    /// the address; every failure while it is blocked pushes the end of the block to at
    /// least one allowance interval later. Returns how long the block now lasts, if any.
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let interval = Duration::from_secs(60) / self.per_minute().max(1);
        let over = match self.failures.check_key(&ip) {
            Ok(snapshot) => (snapshot.remaining_burst_capacity() == 0).then_some(interval),
            Err(not_until) => Some(
                not_until
                    .wait_time_from(self.failures.clock().now())
                    .max(interval),
            ),
        };
        let until = match self.blocked.entry(ip) {
            dashmap::Entry::Occupied(mut e) => {
                let cur = e.get_mut();
                if over.is_none() && *cur <= now {
                    return None; // an expired block, and this failure is within allowance
                }
                *cur = (*cur).max(now + over.unwrap_or(interval));
                *cur
            }
            dashmap::Entry::Vacant(e) => *e.insert(now + over?),
        };
        self.any_blocked.store(true, Ordering::Release);
        Some(until - now)
    }

    /// Drops state for addresses that have been quiet, so memory stays bounded.
    pub fn sweep(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
        // Cleared first, then set again if an entry is there (one added meanwhile included).
        self.any_blocked.store(false, Ordering::Release);
        if !self.blocked.is_empty() {
            self.any_blocked.store(true, Ordering::Release);
        }
    }

    /// Client addresses with recent failures. A blocked address is one of them (its failure
    /// count outlives its block), so it is not counted twice.
    pub fn tracked(&self) -> usize {
        self.failures.len().max(self.blocked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_auth_blocks_after_allowance() {
        let g = FailedAuthGuard::new(3);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(g.record_failure(ip), None);
            assert!(!g.is_blocked(ip));
        }
        let first = g.record_failure(ip).expect("blocked");
        assert!(g.is_blocked(ip), "the third failure uses up the allowance");
        assert!(!g.is_blocked("127.0.0.8".parse().unwrap()));
        // Failures while blocked keep the block at least one interval (20 s here) ahead.
        let again = g.record_failure(ip).expect("still blocked");
        assert!(
            again >= Duration::from_secs(19) && again <= Duration::from_secs(20),
            "{again:?}"
        );
        assert!(first <= Duration::from_secs(20), "{first:?}");
    }

    #[test]
    fn sweep_drops_expired_blocks() {
        // 60k a minute: a block lasts 1 ms. (The failure counts are kept until they are back
        // to full, a minute here: governor's `retain_recent`.)
        let g = FailedAuthGuard::new(60_000);
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        while !g.is_blocked(ip) {
            g.record_failure(ip);
        }
        assert_eq!(g.tracked(), 1, "one address, blocked or not");
        std::thread::sleep(Duration::from_millis(20));
        g.sweep();
        assert_eq!(g.tracked(), 1, "its failure count is still recent");
        assert!(g.blocked.is_empty());
        assert!(!g.is_blocked(ip));
        assert!(!g.any_blocked.load(Ordering::Acquire));
        // Blocking again after a sweep still works.
        while !g.is_blocked(ip) {
            g.record_failure(ip);
        }
        assert!(g.is_blocked(ip));
    }
}
