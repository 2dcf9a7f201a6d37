//! A key's tokens per minute: a bucket that a request reserves an estimate from before it is
//! forwarded, settled against the upstream's real usage when it ends.
//!
//! The Redis backend keeps the same bucket in Lua (`limit/redis/tokens.lua`).

use crate::limit::rate::Verdict;
use std::time::{Duration, Instant};

/// A per-key tokens-per-minute bucket. A request reserves an estimate before it is
/// forwarded and is reconciled with the upstream's real `usage` afterwards, so the bucket
/// ends up charged what was really used; while a request runs, its estimate holds capacity.
/// The quota is passed in; the state starts full on first use.
#[derive(Debug, Default)]
pub struct TokenBucket {
    state: std::sync::Mutex<Option<(f64, Instant)>>,
}

/// What the `x-ratelimit-*-tokens` headers report.
#[derive(Debug, Clone, Copy)]
pub struct TokenInfo {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
    pub verdict: Verdict,
}

impl TokenBucket {
    /// Runs `f` on the balance, refilled up to now.
    fn with<T>(&self, per_minute: u64, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (balance, at) = st.get_or_insert((per_minute as f64, now));
        let rate = per_minute as f64 / 60.0;
        *balance = (*balance + rate * now.duration_since(*at).as_secs_f64()).min(per_minute as f64);
        *at = now;
        f(balance)
    }

    fn info(per_minute: u64, tokens: f64, verdict: Verdict) -> TokenInfo {
        let rate = per_minute as f64 / 60.0;
        let missing = (per_minute as f64 - tokens).max(0.0);
        TokenInfo {
            limit: per_minute,
            remaining: tokens.max(0.0) as u64,
            reset: Duration::from_secs_f64(missing / rate),
            verdict,
        }
    }

    /// Takes `cost` tokens (at most the whole bucket) if they are there.
    pub fn reserve(&self, per_minute: u64, cost: u64) -> TokenInfo {
        let per_minute = per_minute.max(1);
        let cost = cost.min(per_minute) as f64;
        self.with(per_minute, |balance| {
            if *balance >= cost {
                *balance -= cost;
                Self::info(per_minute, *balance, Verdict::Allowed)
            } else {
                let rate = per_minute as f64 / 60.0;
                let wait =
                    Duration::from_secs_f64((cost - *balance) / rate).max(Duration::from_millis(1));
                Self::info(per_minute, *balance, Verdict::Limited { retry_after: wait })
            }
        })
    }

    /// Gives back `refund` tokens (negative: charges more). The balance may go below zero:
    /// a request that used more than it reserved is paid for by the next ones.
    pub fn adjust(&self, per_minute: u64, refund: i64) {
        let per_minute = per_minute.max(1);
        self.with(per_minute, |balance| {
            *balance = (*balance + refund as f64).min(per_minute as f64);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_reserves_and_reconciles() {
        let b = TokenBucket::default();
        assert!(b.reserve(1000, 600).verdict.is_allowed());
        assert!(!b.reserve(1000, 600).verdict.is_allowed(), "only ~400 left");
        b.adjust(1000, 500); // the first request used 100 of its 600
        let i = b.reserve(1000, 600);
        assert!(i.verdict.is_allowed(), "{i:?}");
        b.adjust(1000, -2000); // far more than reserved: the balance goes negative
        assert!(!b.reserve(1000, 1).verdict.is_allowed());
    }
}
