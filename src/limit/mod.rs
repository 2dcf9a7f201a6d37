//! Stage 4 of a request: per-key rate (GCRA), tokens per minute, per-key and gateway-wide
//! in-flight caps, and the per-address failed-authentication guard. `check_rate`,
//! `acquire_slot` and `reserve_tokens` are what the pipeline calls: they use this process's
//! limiters, or the shared ones of `cluster` in cluster mode, with its failure policy.
//!
//! The local request limiters are lock-free on the path of an allowed request: a GCRA cell
//! is one atomic compare-and-swap and an in-flight slot one atomic add (a token bucket, only
//! for keys with a token limit, takes a short per-key lock). A key's cells live in its
//! `index::KeyState`, created on first use and shared across reloads, so editing the key file
//! does not hand every key a fresh burst.

pub mod redis;

use crate::error::GatewayError;
use crate::keys::index::{KeyRef, KeyState};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::RateLimiter;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// One key's request-rate cell: GCRA, whose whole state is one "theoretical arrival time".
/// The quota is not part of the state but passed in, so the state is 8 bytes, a changed
/// quota applies at once without handing the key a fresh burst, and the cell needs no
/// allocation of its own (a million keys: see `index`). governor, used for the failed-auth
/// guard, keeps quota, clock and state together in one larger limiter.
#[derive(Debug, Default)]
pub struct RateCell {
    /// Nanoseconds since `EPOCH`; 0 for a cell never used.
    tat: AtomicU64,
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
    /// Set when the shared backend could not answer and the `deny` policy refuses: the
    /// answer is then 503, not 429, with the same headers.
    pub unavailable: bool,
}

/// One clock for every limiter. Creating a `quanta` clock calibrates it (CPUID, slow in a
/// VM: ~20 µs), so it is done once, not per refused request.
static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// The origin of the rate cells' monotonic time.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
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
    /// Takes one request's cell under `quota`.
    pub fn check(&self, quota: &Quota) -> RateInfo {
        let now = EPOCH.elapsed().as_nanos() as u64;
        self.check_at(now, quota)
    }

    fn check_at(&self, now: u64, q: &Quota) -> RateInfo {
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
                    retry_after: Some(
                        Duration::from_nanos(ahead - tolerance).max(Duration::from_millis(1)),
                    ),
                    unavailable: false,
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
                        retry_after: None,
                        unavailable: false,
                    }
                }
                Err(v) => cur = v,
            }
        }
    }
}

impl RateInfo {
    /// What the `deny` policy reports while the shared backend cannot answer: nothing left,
    /// retry when the policy's own hint says.
    fn backend_down(limit: u32) -> RateInfo {
        RateInfo {
            limit,
            remaining: 0,
            reset: UNAVAILABLE_RETRY,
            retry_after: Some(UNAVAILABLE_RETRY),
            unavailable: true,
        }
    }

    pub fn into_result(self) -> Result<(), GatewayError> {
        match self.retry_after {
            None => Ok(()),
            Some(_) if self.unavailable => Err(GatewayError::LimiterUnavailable),
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

/// One key's in-flight slot.
pub struct InFlightGuard {
    owner: Arc<KeyState>,
}

impl InFlight {
    fn try_take(&self, cap: u32) -> bool {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= cap {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl InFlightGuard {
    pub fn acquire(state: &Arc<KeyState>, cap: u32) -> Option<InFlightGuard> {
        state.in_flight.try_take(cap).then(|| InFlightGuard {
            owner: Arc::clone(state),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.owner.in_flight.count.fetch_sub(1, Ordering::AcqRel);
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
    pub fn new(per_minute: u32) -> FailedAuthGuard {
        FailedAuthGuard {
            failures: KeyedGcra::new(
                governor::Quota::per_minute(nz(per_minute)),
                governor::state::keyed::DefaultKeyedStateStore::<IpAddr>::default(),
                CLOCK.clone(),
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

    pub fn tracked(&self) -> usize {
        self.failures.len() + self.blocked.len()
    }
}

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
    pub retry_after: Option<Duration>,
    /// As `RateInfo`'s.
    pub unavailable: bool,
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

    fn info(per_minute: u64, tokens: f64, retry_after: Option<Duration>) -> TokenInfo {
        let rate = per_minute as f64 / 60.0;
        let missing = (per_minute as f64 - tokens).max(0.0);
        TokenInfo {
            limit: per_minute,
            remaining: tokens.max(0.0) as u64,
            reset: Duration::from_secs_f64(missing / rate),
            retry_after,
            unavailable: false,
        }
    }

    /// Takes `cost` tokens (at most the whole bucket) if they are there.
    pub fn reserve(&self, per_minute: u64, cost: u64) -> TokenInfo {
        let per_minute = per_minute.max(1);
        let cost = cost.min(per_minute) as f64;
        self.with(per_minute, |balance| {
            if *balance >= cost {
                *balance -= cost;
                Self::info(per_minute, *balance, None)
            } else {
                let rate = per_minute as f64 / 60.0;
                let wait =
                    Duration::from_secs_f64((cost - *balance) / rate).max(Duration::from_millis(1));
                Self::info(per_minute, *balance, Some(wait))
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

impl TokenInfo {
    pub fn into_result(self) -> Result<(), GatewayError> {
        match self.retry_after {
            None => Ok(()),
            Some(_) if self.unavailable => Err(GatewayError::LimiterUnavailable),
            Some(retry_after) => Err(GatewayError::TokenRateLimited {
                limit: self.limit,
                retry_after,
            }),
        }
    }
}

// ------------------------------------------------------------- the limit stage, local or shared

use crate::limit::redis::{Acquired, Cluster, OnError};

/// The retry hint of a `deny` refusal while the shared backend cannot answer (the same as
/// the 503's `retry-after`).
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// Takes one request cell of the key's rate: shared in cluster mode, else this process's.
/// When Redis cannot answer, the policy decides; a `deny` refusal still reports the key's
/// limit (`RateInfo::into_result` turns it into the 503).
pub async fn check_rate(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyRef,
) -> Result<RateInfo, GatewayError> {
    let local = || key.state().rate.check(&key.rate);
    let Some(c) = cluster else {
        return Ok(local());
    };
    if let Some(info) = c
        .check_rate(&key.id, key.rate.per_minute, key.rate.burst)
        .await
    {
        return Ok(info);
    }
    Ok(match c.config.on_backend_error {
        OnError::Allow => RateInfo {
            limit: key.rate.per_minute,
            remaining: key.rate.burst,
            reset: Duration::ZERO,
            retry_after: None,
            unavailable: false,
        },
        OnError::Deny => RateInfo::backend_down(key.rate.per_minute),
        OnError::Local => local(),
    })
}

/// A held in-flight slot: this process's or a lease in Redis. Gives the slot back on drop.
#[allow(dead_code)] // each variant is held for its `Drop`
pub enum Slot {
    Local(InFlightGuard),
    Shared(crate::limit::redis::SlotLease),
    /// Redis could not answer and the policy let the request through.
    Unlimited,
}

/// Takes one of the key's in-flight slots; the returned guard gives it back when dropped.
pub async fn acquire_slot(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyRef,
) -> Result<Slot, GatewayError> {
    let refused = || GatewayError::ConcurrencyLimited(key.max_in_flight);
    if let Some(c) = cluster {
        match c.acquire_slot(&key.id, key.max_in_flight).await {
            Acquired::Slot(lease) => return Ok(Slot::Shared(lease)),
            Acquired::Full => return Err(refused()),
            Acquired::Unavailable => match c.config.on_backend_error {
                OnError::Allow => return Ok(Slot::Unlimited),
                OnError::Deny => return Err(GatewayError::LimiterUnavailable),
                OnError::Local => {}
            },
        }
    }
    InFlightGuard::acquire(key.state(), key.max_in_flight)
        .map(Slot::Local)
        .ok_or_else(refused)
}

/// Tokens reserved for one request, settled against real usage when it ends.
pub struct TokenCharge {
    reserved: u64,
    per_minute: u64,
    target: ChargeTarget,
}

enum ChargeTarget {
    Local(Arc<KeyState>),
    Shared(Arc<Cluster>, Arc<str>),
    None,
}

/// What a finished request used, as far as the gateway knows; what its reservation is
/// settled against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// The upstream's own usage (prompt + completion).
    Reported(u64),
    /// The gateway's estimate for a request that ended before the upstream reported usage
    /// (`account::Finish::estimate`): charged like a report, so never refunded to zero.
    Estimated(u64),
    /// A successful answer that reported nothing: its reservation stands.
    Reservation,
    /// Nothing was used (an error answer): the reservation is refunded.
    Nothing,
}

impl TokenCharge {
    /// Gives back what was reserved and not used, or charges what was used beyond it, on
    /// this process's bucket or on Redis alike.
    pub fn settle(self, used: Used) {
        let refund = match used {
            Used::Reported(u) | Used::Estimated(u) => self.reserved as i64 - u as i64,
            Used::Reservation => 0,
            Used::Nothing => self.reserved as i64,
        };
        if refund == 0 {
            return;
        }
        match self.target {
            ChargeTarget::Local(s) => s.tokens.adjust(self.per_minute, refund),
            ChargeTarget::Shared(c, id) => c.adjust_tokens(&id, self.per_minute, refund),
            ChargeTarget::None => {}
        }
    }
}

/// Reserves `estimate` tokens from the key's bucket, if it has a token limit.
pub async fn reserve_tokens(
    cluster: Option<&Arc<Cluster>>,
    key: &KeyRef,
    estimate: u64,
) -> Result<Option<(TokenInfo, TokenCharge)>, GatewayError> {
    let Some(per_minute) = key.tokens_per_minute() else {
        return Ok(None);
    };
    let reserved = estimate.min(per_minute);
    let charge = |info: &TokenInfo, target: ChargeTarget| TokenCharge {
        reserved,
        per_minute,
        target: if info.retry_after.is_none() {
            target
        } else {
            ChargeTarget::None
        },
    };
    let local = || {
        let state = key.state();
        let info = state.tokens.reserve(per_minute, reserved);
        let charge = charge(&info, ChargeTarget::Local(Arc::clone(state)));
        (info, charge)
    };
    let Some(c) = cluster else {
        return Ok(Some(local()));
    };
    match c.reserve_tokens(&key.id, per_minute, reserved).await {
        Some(info) => {
            let target = ChargeTarget::Shared(Arc::clone(c), Arc::from(key.id.as_str()));
            Ok(Some((info, charge(&info, target))))
        }
        None => Ok(match c.config.on_backend_error {
            OnError::Allow => None,
            OnError::Deny => {
                let info = TokenInfo {
                    limit: per_minute,
                    remaining: 0,
                    reset: UNAVAILABLE_RETRY,
                    retry_after: Some(UNAVAILABLE_RETRY),
                    unavailable: true,
                };
                Some((info, charge(&info, ChargeTarget::None)))
            }
            OnError::Local => Some(local()),
        }),
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
        assert!(infos[..10].iter().all(|i| i.retry_after.is_none()));
        assert_eq!(infos[9].remaining, 0);
        assert_eq!(infos[0].remaining, 9);
        let refused = infos[10];
        assert_eq!(refused.retry_after, Some(Duration::from_secs(6)));
        // One interval later, one cell is back.
        let later = l.check_at(1_000 + 6_000_000_000, &Quota::new(10, 10));
        assert_eq!((later.retry_after, later.remaining), (None, 0));
        // A changed quota applies to the same state at once.
        assert!(l
            .check_at(1_000 + 6_000_000_000, &Quota::new(600, 1))
            .retry_after
            .is_some());
    }

    #[test]
    fn token_bucket_reserves_and_reconciles() {
        let b = TokenBucket::default();
        assert!(b.reserve(1000, 600).retry_after.is_none());
        assert!(b.reserve(1000, 600).retry_after.is_some(), "only ~400 left");
        b.adjust(1000, 500); // the first request used 100 of its 600
        let i = b.reserve(1000, 600);
        assert!(i.retry_after.is_none(), "{i:?}");
        b.adjust(1000, -2000); // far more than reserved: the balance goes negative
        assert!(b.reserve(1000, 1).retry_after.is_some());
    }

    #[test]
    fn settle_charges_reports_and_estimates_refunds_failures() {
        let state = Arc::new(KeyState::default());
        let remaining = || state.tokens.reserve(1000, 0).remaining;
        let charge = |reserved: u64| {
            assert!(state.tokens.reserve(1000, reserved).retry_after.is_none());
            TokenCharge {
                reserved,
                per_minute: 1000,
                target: ChargeTarget::Local(Arc::clone(&state)),
            }
        };
        let near = |a: u64, b: u64| a.abs_diff(b) <= 2; // the bucket refills as time passes
        charge(300).settle(Used::Estimated(120));
        assert!(near(remaining(), 880), "{}", remaining());
        charge(300).settle(Used::Reported(20));
        assert!(near(remaining(), 860), "{}", remaining());
        charge(300).settle(Used::Nothing);
        assert!(near(remaining(), 860), "{}", remaining());
        charge(300).settle(Used::Reservation);
        assert!(near(remaining(), 560), "{}", remaining());
        // An estimate over the reservation charges the difference.
        charge(100).settle(Used::Estimated(400));
        assert!(near(remaining(), 160), "{}", remaining());
    }

    #[test]
    fn in_flight_caps_and_releases() {
        let s = Arc::new(KeyState::default());
        let a = InFlightGuard::acquire(&s, 1).unwrap();
        assert!(InFlightGuard::acquire(&s, 1).is_none());
        drop(a);
        assert!(InFlightGuard::acquire(&s, 1).is_some());
    }

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
        assert_eq!(g.tracked(), 2, "the failure count and the block");
        std::thread::sleep(Duration::from_millis(20));
        g.sweep();
        assert_eq!(g.tracked(), 1, "the expired block was kept");
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
