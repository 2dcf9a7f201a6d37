//! Stage 4 of a request: per-key rate (GCRA), tokens per minute, per-key and gateway-wide
//! in-flight caps, and the per-address failed-authentication guard. `check_rate`,
//! `acquire_slot` and `reserve_tokens` are what the pipeline calls: they use this process's
//! limiters, or the shared ones of `cluster` in cluster mode, with its failure policy.
//!
//! The local request limiters are lock-free on the path of an allowed request: a GCRA cell
//! is one atomic compare-and-swap and an in-flight slot one atomic add (a token bucket, only
//! for keys with a token limit, takes a short per-key lock). A key's limiter lives in the
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

/// One clock for every limiter. Creating a `quanta` clock calibrates it (CPUID, slow in a
/// VM: ~20 µs), so it is done once, not per key or per refused request.
static CLOCK: std::sync::LazyLock<DefaultClock> = std::sync::LazyLock::new(DefaultClock::default);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimit {
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        let quota = Quota::per_minute(nz(per_minute)).allow_burst(nz(burst));
        RateLimit {
            gcra: RateLimiter::direct_with_clock(quota, CLOCK.clone())
                .with_middleware::<StateInformationMiddleware>(),
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
                let wait = not_until.wait_time_from(self.gcra.clock().now());
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
            failures: KeyedGcra::new(
                Quota::per_minute(nz(per_minute)),
                governor::state::keyed::DefaultKeyedStateStore::<IpAddr>::default(),
                CLOCK.clone(),
            ),
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
            Err(not_until) => not_until.wait_time_from(self.failures.clock().now()),
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

/// A per-key tokens-per-minute bucket. A request reserves an estimate before it is
/// forwarded and is reconciled with the upstream's real `usage` afterwards, so the bucket
/// ends up charged what was really used; while a request runs, its estimate holds capacity.
#[derive(Debug)]
pub struct TokenBucket {
    pub per_minute: u64,
    state: std::sync::Mutex<(f64, Instant)>,
}

/// What the `x-ratelimit-*-tokens` headers report.
#[derive(Debug, Clone, Copy)]
pub struct TokenInfo {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
    pub retry_after: Option<Duration>,
}

impl TokenBucket {
    pub fn new(per_minute: u64) -> TokenBucket {
        TokenBucket {
            per_minute,
            state: std::sync::Mutex::new((per_minute as f64, Instant::now())),
        }
    }

    fn refill(&self, st: &mut (f64, Instant)) {
        let now = Instant::now();
        let rate = self.per_minute as f64 / 60.0;
        st.0 = (st.0 + rate * now.duration_since(st.1).as_secs_f64()).min(self.per_minute as f64);
        st.1 = now;
    }

    fn info(&self, tokens: f64, retry_after: Option<Duration>) -> TokenInfo {
        let rate = self.per_minute as f64 / 60.0;
        let missing = (self.per_minute as f64 - tokens).max(0.0);
        TokenInfo {
            limit: self.per_minute,
            remaining: tokens.max(0.0) as u64,
            reset: Duration::from_secs_f64(missing / rate),
            retry_after,
        }
    }

    /// Takes `cost` tokens (at most the whole bucket) if they are there.
    pub fn reserve(&self, cost: u64) -> TokenInfo {
        let cost = cost.min(self.per_minute) as f64;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st);
        if st.0 >= cost {
            st.0 -= cost;
            self.info(st.0, None)
        } else {
            let rate = self.per_minute as f64 / 60.0;
            let wait = Duration::from_secs_f64((cost - st.0) / rate).max(Duration::from_millis(1));
            self.info(st.0, Some(wait))
        }
    }

    /// Gives back `refund` tokens (negative: charges more). The balance may go below zero:
    /// a request that used more than it reserved is paid for by the next ones.
    pub fn adjust(&self, refund: i64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st);
        st.0 = (st.0 + refund as f64).min(self.per_minute as f64);
    }
}

impl TokenInfo {
    pub fn into_result(self) -> Result<(), GatewayError> {
        match self.retry_after {
            None => Ok(()),
            Some(retry_after) => Err(GatewayError::TokenRateLimited {
                limit: self.limit,
                retry_after,
            }),
        }
    }
}

// ------------------------------------------------------------- the limit stage, local or shared

use crate::cluster::{Cluster, OnError};
use crate::index::KeyEntry;

/// What the policy says when Redis cannot answer: `None` means "use the local limiter".
fn unavailable(cluster: &Cluster) -> Result<Option<()>, GatewayError> {
    match cluster.config.on_backend_error {
        OnError::Allow => Ok(Some(())),
        OnError::Deny => Err(GatewayError::LimiterUnavailable),
        OnError::Local => Ok(None),
    }
}

/// Takes one request cell of the key's rate: shared in cluster mode, else this process's.
pub async fn check_rate(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyEntry,
) -> Result<RateInfo, GatewayError> {
    let Some(c) = cluster else {
        return Ok(key.rate.check());
    };
    if let Some(info) = c
        .check_rate(&key.id, key.rate.per_minute, key.rate.burst)
        .await
    {
        return Ok(info);
    }
    Ok(match unavailable(c)? {
        Some(()) => RateInfo {
            limit: key.rate.per_minute,
            remaining: key.rate.burst,
            reset: Duration::ZERO,
            retry_after: None,
        },
        None => key.rate.check(),
    })
}

/// Takes one of the key's in-flight slots; the returned guard gives it back when dropped.
pub async fn acquire_slot(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyEntry,
) -> Result<Box<dyn Send + Sync>, GatewayError> {
    let refused = || GatewayError::ConcurrencyLimited(key.max_in_flight);
    if let Some(c) = cluster {
        match c.acquire_slot(&key.id, key.max_in_flight).await {
            Some(Some(lease)) => return Ok(Box::new(lease)),
            Some(None) => return Err(refused()),
            None => {
                if unavailable(c)?.is_some() {
                    return Ok(Box::new(()));
                }
            }
        }
    }
    let slot = key
        .in_flight
        .acquire(key.max_in_flight)
        .ok_or_else(refused)?;
    Ok(Box::new(slot))
}

/// Tokens reserved for one request, settled against real usage when it ends.
pub struct TokenCharge {
    reserved: u64,
    target: ChargeTarget,
}

enum ChargeTarget {
    Local(Arc<TokenBucket>),
    Shared(Arc<Cluster>, Arc<str>, u64),
    None,
}

impl TokenCharge {
    /// `used`: the upstream's real usage, if it reported one. Without it, a successful
    /// answer keeps its estimate and a failed one is refunded.
    pub fn settle(self, used: Option<u64>, success: bool) {
        let refund = match used {
            Some(u) => self.reserved as i64 - u as i64,
            None if success => 0,
            None => self.reserved as i64,
        };
        if refund == 0 {
            return;
        }
        match self.target {
            ChargeTarget::Local(b) => b.adjust(refund),
            ChargeTarget::Shared(c, id, per_minute) => c.adjust_tokens(&id, per_minute, refund),
            ChargeTarget::None => {}
        }
    }
}

/// Reserves `estimate` tokens from the key's bucket, if it has a token limit.
pub async fn reserve_tokens(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyEntry,
    estimate: u64,
) -> Result<Option<(TokenInfo, TokenCharge)>, GatewayError> {
    let Some(bucket) = &key.tokens else {
        return Ok(None);
    };
    let reserved = estimate.min(bucket.per_minute);
    let local = |b: &Arc<TokenBucket>| {
        let info = b.reserve(reserved);
        let target = if info.retry_after.is_none() {
            ChargeTarget::Local(Arc::clone(b))
        } else {
            ChargeTarget::None
        };
        (info, TokenCharge { reserved, target })
    };
    let Some(c) = cluster else {
        return Ok(Some(local(bucket)));
    };
    match c.reserve_tokens(&key.id, bucket.per_minute, reserved).await {
        Some(info) => {
            let target = if info.retry_after.is_none() {
                ChargeTarget::Shared(Arc::clone(c), Arc::clone(&key.id), bucket.per_minute)
            } else {
                ChargeTarget::None
            };
            Ok(Some((info, TokenCharge { reserved, target })))
        }
        None => match unavailable(c)? {
            Some(()) => Ok(None),
            None => Ok(Some(local(bucket))),
        },
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
    fn token_bucket_reserves_and_reconciles() {
        let b = TokenBucket::new(1000);
        assert!(b.reserve(600).retry_after.is_none());
        assert!(b.reserve(600).retry_after.is_some(), "only ~400 left");
        b.adjust(500); // the first request used 100 of its 600
        let i = b.reserve(600);
        assert!(i.retry_after.is_none(), "{i:?}");
        b.adjust(-2000); // far more than reserved: the balance goes negative
        assert!(b.reserve(1).retry_after.is_some());
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
