//! A key's request rate: GCRA in one 8-byte cell, lock-free (one compare-and-swap a request).
//!
//! The Redis backend runs the same algorithm in Lua (`limit/redis/rate.lua`), in microseconds
//! of Redis's clock; `tests/limit_twins.rs` checks that both answer a sequence alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One key's request-rate cell: GCRA, whose whole state is one "theoretical arrival time".
/// The quota is not part of the state but passed in, so the state is 8 bytes, a changed
/// quota applies at once without handing the key a fresh burst, and the cell needs no
/// allocation of its own (a million keys: see `keys::index`). governor, used for the
/// failed-auth guard, keeps quota, clock and state together in one larger limiter.
#[derive(Debug, Default)]
pub struct RateCell {
    /// Nanoseconds on the gateway's `RateClock`; 0 for a cell never used.
    tat: AtomicU64,
}

/// What a limit check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: the request is refused (429), and may be retried after this long.
    Limited {
        retry_after: Duration,
    },
    /// The shared backend could not answer and the `deny` policy refuses: the answer is then
    /// 503, not 429, with the same `x-ratelimit-*` headers.
    BackendDown,
}

impl Verdict {
    pub fn is_allowed(self) -> bool {
        self == Verdict::Allowed
    }
}

/// The outcome of one rate check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    pub verdict: Verdict,
}

/// The rate cells' clock: monotonic nanoseconds since the gateway started. A cell holds a
/// moment as a bare number, so every cell of a gateway must read the same clock: the
/// gateway's own (`Gateway::rate_clock`).
#[derive(Debug, Clone, Copy)]
pub struct RateClock {
    origin: Instant,
}

impl RateClock {
    pub fn new() -> RateClock {
        RateClock {
            origin: Instant::now(),
        }
    }

    /// Now, in nanoseconds since the origin.
    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The moment `t`, in nanoseconds since the origin (0 before it). A request's cell is
    /// taken at the moment the request began (`RequestRecord::started`), a clock read it
    /// already paid for: one less per request.
    pub fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for RateClock {
    fn default() -> RateClock {
        RateClock::new()
    }
}

/// A request quota with its GCRA interval worked out once per key (at index build): the
/// division is not paid on every request. 16 bytes, kept in every key entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_minute: u32,
    pub burst: u32,
    /// Nanoseconds between requests at the steady rate.
    interval: u64,
}

impl Quota {
    pub fn new(per_minute: u32, burst: u32) -> Quota {
        Quota {
            per_minute,
            burst,
            interval: 60_000_000_000 / u64::from(per_minute.max(1)),
        }
    }

    /// How far ahead of now the arrival time may run: `burst` intervals.
    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst.max(1)))
    }
}

impl RateCell {
    /// Takes one request's cell under `quota`, now on `clock`.
    pub fn check(&self, clock: &RateClock, quota: &Quota) -> RateInfo {
        self.check_at(clock.now(), quota)
    }

    /// `check` at `now`, in nanoseconds on the cell's own clock (for tests that replay a
    /// sequence of moments).
    pub fn check_at(&self, now: u64, q: &Quota) -> RateInfo {
        let (interval, tolerance) = (q.interval, q.tolerance());
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            let tat = cur.max(now);
            let ahead = tat.saturating_add(interval) - now;
            if ahead > tolerance {
                return RateInfo {
                    limit: q.per_minute,
                    remaining: 0,
                    reset: Duration::from_nanos(tat - now),
                    verdict: Verdict::Limited {
                        retry_after: Duration::from_nanos(ahead - tolerance)
                            .max(Duration::from_millis(1)),
                    },
                };
            }
            match self.tat.compare_exchange_weak(
                cur,
                now + ahead,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return RateInfo {
                        limit: q.per_minute,
                        remaining: ((tolerance - ahead) / interval).min(u64::from(u32::MAX)) as u32,
                        reset: Duration::from_nanos(ahead),
                        verdict: Verdict::Allowed,
                    }
                }
                Err(v) => cur = v,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_burst_then_refuses() {
        let l = RateCell::default();
        let infos: Vec<_> = (0..11)
            .map(|_| l.check_at(1_000, &Quota::new(10, 10)))
            .collect();
        assert!(infos[..10].iter().all(|i| i.verdict.is_allowed()));
        assert_eq!(infos[9].remaining, 0);
        assert_eq!(infos[0].remaining, 9);
        let refused = infos[10];
        assert_eq!(
            refused.verdict,
            Verdict::Limited {
                retry_after: Duration::from_secs(6)
            }
        );
        // One interval later, one cell is back.
        let later = l.check_at(1_000 + 6_000_000_000, &Quota::new(10, 10));
        assert_eq!((later.verdict, later.remaining), (Verdict::Allowed, 0));
        // A changed quota applies to the same state at once.
        assert!(!l
            .check_at(1_000 + 6_000_000_000, &Quota::new(600, 1))
            .verdict
            .is_allowed());
    }
}
