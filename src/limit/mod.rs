//! Stage 4 of a request: limits. Per key: request rate (GCRA), quotas per UTC day and month
//! (`quota`), tokens per minute and requests in flight; gateway-wide: requests in flight (`Capacity`); per client address: failed
//! authentications (`FailedAuthGuard`). `check_rate`, `acquire_slot` and `reserve_tokens` are
//! what the pipeline calls: they use this process's limiters, or in cluster mode the shared
//! ones in Redis (`redis`), with its failure policy. `answer` writes what an answer reports
//! about them.
//!
//! The local request limiters are lock-free on the path of an allowed request: a GCRA cell
//! is one atomic compare-and-swap and an in-flight slot one atomic add (a token bucket, only
//! for keys with a token limit, takes a short per-key lock). A key's cells live in its
//! `keys::state::KeyState`, created on first use and shared across reloads, so editing the key
//! file does not hand every key a fresh burst.

pub mod answer;
pub mod failed_auth;
pub mod inflight;
pub mod quota;
pub mod rate;
pub mod redis;
pub mod tokens;

use crate::config::cluster::OnBackendError;
use crate::error::GatewayError;
use crate::keys::index::KeyRef;
use crate::keys::state::KeyState;
use crate::limit::answer::LimitHeaders;
use crate::limit::rate::{RateClock, RateInfo, Verdict};
use crate::limit::redis::{Acquired, RedisBackend, SlotLease};
use crate::limit::tokens::TokenInfo;
use crate::time::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The retry hint of a `deny` refusal while the shared backend cannot answer (the same as
/// the 503's `retry-after`).
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// Takes one request cell of the key's rate, for a request that began at `at`: shared in
/// cluster mode (on Redis's clock), else this process's. When Redis cannot answer, the
/// policy decides; a `deny` refusal still reports the key's limit (`rate_verdict` turns it
/// into the 503).
pub async fn check_rate(
    redis: Option<&Arc<RedisBackend>>,
    clock: &RateClock,
    at: Instant,
    key: &KeyRef,
) -> Result<RateInfo, GatewayError> {
    let local = || key.state().rate.check_at(clock.at(at), &key.rate);
    let Some(r) = redis else {
        return Ok(local());
    };
    // Redis calls are boxed: their futures are large, and every request's future (Redis or
    // not) would be as large as they are and moved whole.
    if let Some(info) = Box::pin(r.check_rate(&key.id, key.rate.per_minute, key.rate.burst)).await {
        return Ok(info);
    }
    Ok(match r.config.on_backend_error {
        OnBackendError::Allow => RateInfo {
            limit: key.rate.per_minute,
            remaining: key.rate.burst,
            reset: Duration::ZERO,
            verdict: Verdict::Allowed,
        },
        // Nothing left, retry when the policy's own hint says.
        OnBackendError::Deny => RateInfo {
            limit: key.rate.per_minute,
            remaining: 0,
            reset: UNAVAILABLE_RETRY,
            verdict: Verdict::BackendDown,
        },
        OnBackendError::Local => local(),
    })
}

/// The refusal a rate check calls for, if any.
pub fn rate_verdict(info: &RateInfo) -> Result<(), GatewayError> {
    match info.verdict {
        Verdict::Allowed => Ok(()),
        Verdict::BackendDown => Err(GatewayError::LimiterUnavailable),
        Verdict::Limited { retry_after } => Err(GatewayError::RateLimited {
            limit: info.limit,
            retry_after,
        }),
    }
}

/// Admits the request against its key's daily and monthly quotas (`quota`), at `now` of the
/// usage clock: counts in memory, no store is asked. A refusal is 429 `insufficient_quota`,
/// and its answer says when the quota resets (`limits`).
pub fn check_quota(
    key: &KeyRef,
    now: Timestamp,
    limits: &mut LimitHeaders,
) -> Result<(), GatewayError> {
    quota::check(key.quotas.as_deref(), &key.state().quota, now).map_err(|r| {
        limits.quota = Some(r.reset_in);
        GatewayError::InsufficientQuota(r)
    })
}

/// Holds a request's token `estimate` against its key's token quotas while it runs
/// (`quota::hold_tokens`); what is held, for the request's record to give back.
pub fn hold_quota_tokens(
    key: &KeyRef,
    now: Timestamp,
    estimate: u64,
    limits: &mut LimitHeaders,
) -> Result<u64, GatewayError> {
    quota::hold_tokens(key.quotas.as_deref(), &key.state().quota, now, estimate).map_err(|r| {
        match r {
            quota::HoldRefusal::UsedUp(r) => {
                limits.quota = Some(r.reset_in);
                GatewayError::InsufficientQuota(r)
            }
            // Not the quota's answer (no `x-should-retry: false`, no reset): a retry helps.
            quota::HoldRefusal::Held {
                kind,
                limit,
                used,
                held,
            } => GatewayError::QuotaHeld {
                limit,
                words: kind.words(),
                used,
                held,
            },
        }
    })
}

/// The refusal a token reservation calls for, if any.
pub fn token_verdict(info: &TokenInfo) -> Result<(), GatewayError> {
    match info.verdict {
        Verdict::Allowed => Ok(()),
        Verdict::BackendDown => Err(GatewayError::LimiterUnavailable),
        Verdict::Limited { retry_after } => Err(GatewayError::TokenRateLimited {
            limit: info.limit,
            retry_after,
        }),
    }
}

/// A held in-flight slot: this process's or a lease in Redis. Gives the slot back on drop.
#[allow(dead_code)] // each variant is held for its `Drop`
pub enum Slot {
    Local(LocalSlot),
    Shared(SlotLease),
    /// Redis could not answer and the policy let the request through.
    Unlimited,
}

/// One of a key's in-flight slots in this process; given back when dropped.
pub struct LocalSlot(Arc<KeyState>);

impl LocalSlot {
    pub fn acquire(state: &Arc<KeyState>, cap: u32) -> Option<LocalSlot> {
        state
            .in_flight
            .try_take(cap)
            .then(|| LocalSlot(Arc::clone(state)))
    }
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.0.in_flight.release();
    }
}

/// Takes one of the key's in-flight slots; the returned guard gives it back when dropped.
pub async fn acquire_slot(
    redis: Option<&Arc<RedisBackend>>,
    key: &KeyRef,
) -> Result<Slot, GatewayError> {
    let refused = || GatewayError::ConcurrencyLimited(key.max_in_flight);
    if let Some(r) = redis {
        match Box::pin(r.acquire_slot(&key.id, key.max_in_flight)).await {
            Acquired::Slot(lease) => return Ok(Slot::Shared(lease)),
            Acquired::Full => return Err(refused()),
            Acquired::Unavailable => match r.config.on_backend_error {
                OnBackendError::Allow => return Ok(Slot::Unlimited),
                OnBackendError::Deny => return Err(GatewayError::LimiterUnavailable),
                OnBackendError::Local => {}
            },
        }
    }
    LocalSlot::acquire(key.state(), key.max_in_flight)
        .map(Slot::Local)
        .ok_or_else(refused)
}

/// Tokens reserved for one request, settled against real usage when it ends.
pub struct TokenCharge {
    reserved: u64,
    per_minute: u64,
    target: ChargeTarget,
}

/// Where a reservation was taken, so it is settled there.
enum ChargeTarget {
    Local(Arc<KeyState>),
    Shared(Arc<RedisBackend>, Arc<str>),
    /// Nothing was taken (the reservation was refused): nothing to settle.
    Unreserved,
}

/// What a finished request used, as far as the gateway knows; what its reservation is
/// settled against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// The upstream's own usage (prompt + completion).
    Reported(u64),
    /// The gateway's estimate for a request that ended before the upstream reported usage
    /// (`account::RequestRecord`): charged like a report, so never refunded to zero.
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
            ChargeTarget::Shared(r, id) => r.adjust_tokens(&id, self.per_minute, refund),
            ChargeTarget::Unreserved => {}
        }
    }
}

/// The outcome of a token reservation.
pub enum Reservation {
    /// No token limit applies: the key has none, or Redis could not answer and the policy
    /// is `allow`.
    Unlimited,
    /// Checked against the key's bucket: what the headers report, and what to settle when
    /// the request ends (nothing, if it was refused).
    Checked(TokenInfo, TokenCharge),
}

/// Reserves `estimate` tokens from the key's bucket, if it has a token limit.
pub async fn reserve_tokens(
    redis: Option<&Arc<RedisBackend>>,
    key: &KeyRef,
    estimate: u64,
) -> Reservation {
    let Some(per_minute) = key.tokens_per_minute() else {
        return Reservation::Unlimited;
    };
    let reserved = estimate.min(per_minute);
    let checked = |info: TokenInfo, target: ChargeTarget| {
        let target = if info.verdict.is_allowed() {
            target
        } else {
            ChargeTarget::Unreserved
        };
        let charge = TokenCharge {
            reserved,
            per_minute,
            target,
        };
        Reservation::Checked(info, charge)
    };
    let local = || {
        let state = key.state();
        let info = state.tokens.reserve(per_minute, reserved);
        checked(info, ChargeTarget::Local(Arc::clone(state)))
    };
    let Some(r) = redis else {
        return local();
    };
    match Box::pin(r.reserve_tokens(&key.id, per_minute, reserved)).await {
        Some(info) => {
            let target = ChargeTarget::Shared(Arc::clone(r), Arc::from(key.id.as_str()));
            checked(info, target)
        }
        None => match r.config.on_backend_error {
            OnBackendError::Allow => Reservation::Unlimited,
            OnBackendError::Deny => {
                let info = TokenInfo {
                    limit: per_minute,
                    remaining: 0,
                    reset: UNAVAILABLE_RETRY,
                    verdict: Verdict::BackendDown,
                };
                checked(info, ChargeTarget::Unreserved)
            }
            OnBackendError::Local => local(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_charges_reports_and_estimates_refunds_failures() {
        let state = Arc::new(KeyState::default());
        let remaining = || state.tokens.reserve(1000, 0).remaining;
        let charge = |reserved: u64| {
            assert!(state.tokens.reserve(1000, reserved).verdict.is_allowed());
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
        let a = LocalSlot::acquire(&s, 1).unwrap();
        assert!(LocalSlot::acquire(&s, 1).is_none());
        drop(a);
        assert!(LocalSlot::acquire(&s, 1).is_some());
    }
}
