//! Quotas: a key's tokens and requests per UTC calendar day and month (`KeyQuotas`), checked
//! in the limit stage without a round trip to any store.
//!
//! What a key has used in a window is the usage store's total (the state file's counts, or
//! Redis's summed over every replica), as the flusher last read it — every second — plus what
//! this process has counted and not written yet. A request is admitted while every quota has
//! something left; the tokens it uses are only known when it ends, so the last admitted
//! request can take a token quota past its limit, and replicas can overshoot together by about
//! a second of traffic. Requests are counted when admitted, tokens when the request ends;
//! while it runs, its token estimate is held (`hold_tokens`): requests admitted together
//! cannot all pass a token quota, as each sees the others' estimates.

use crate::keys::annotations::KeyQuotas;
use crate::time::Timestamp;
use crate::usage::window::{day_of, month_of, Window};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests and tokens used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    pub requests: u64,
    pub tokens: u64,
}

/// The usage store's totals for one key, as last read, with the windows they are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub day: u32,
    pub month: u32,
    pub in_day: Used,
    pub in_month: Used,
}

/// A key's quota counts in its runtime state (`KeyState`).
#[derive(Debug, Default)]
pub struct QuotaState {
    /// Admitted requests not yet written to the usage store.
    pending_requests: AtomicU64,
    /// The token estimates of admitted requests that have not ended (`hold_tokens`).
    held_tokens: AtomicU64,
    /// Tokens of ended requests not yet written to the usage store.
    pending_tokens: AtomicU64,
    stored: ArcSwapOption<Stored>,
}

impl QuotaState {
    /// Counts the tokens of an ended request.
    pub fn add_tokens(&self, n: u64) {
        if n > 0 {
            self.pending_tokens.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Gives back what `hold_tokens` held for a request that ended.
    pub fn release(&self, held: u64) {
        if held > 0 {
            self.held_tokens.fetch_sub(held, Ordering::Relaxed);
        }
    }

    /// What has not been written to the store yet.
    pub fn pending(&self) -> Used {
        Used {
            requests: self.pending_requests.load(Ordering::Relaxed),
            tokens: self.pending_tokens.load(Ordering::Relaxed),
        }
    }

    /// Takes `written` (read by `pending` earlier) off, once the store has it.
    pub fn drained(&self, written: Used) {
        self.pending_requests
            .fetch_sub(written.requests, Ordering::Relaxed);
        self.pending_tokens
            .fetch_sub(written.tokens, Ordering::Relaxed);
    }

    /// The store's totals as just read (replaced only when they changed). Whether they went
    /// backwards within the same window: the store lost counts it had (a Redis restarted
    /// without persistence, or restored from a backup), as nothing else lowers them.
    pub fn set_stored(&self, s: Stored) -> bool {
        let old = self.stored.load();
        if old.as_deref() == Some(&s) {
            return false;
        }
        let lower = |a: Used, b: Used| a.requests < b.requests || a.tokens < b.tokens;
        let back = old.as_deref().is_some_and(|o| {
            (o.day == s.day && lower(s.in_day, o.in_day))
                || (o.month == s.month && lower(s.in_month, o.in_month))
        });
        self.stored.store(Some(Arc::new(s)));
        back
    }

    /// Used in `w` as far as this process knows: the store's total when it was read for
    /// that window, plus what is pending (which the next write puts in the current window).
    pub fn used(&self, w: Window) -> Used {
        let pending = self.pending();
        let stored = self.stored.load();
        let base = match (stored.as_deref(), w) {
            (Some(s), Window::Day(d)) if s.day == d => s.in_day,
            (Some(s), Window::Month(m)) if s.month == m => s.in_month,
            _ => Used::default(),
        };
        Used {
            requests: base.requests.saturating_add(pending.requests),
            tokens: base.tokens.saturating_add(pending.tokens),
        }
    }
}

/// One of a key's four quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    TokensPerDay,
    TokensPerMonth,
    RequestsPerDay,
    RequestsPerMonth,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::TokensPerDay,
        QuotaKind::TokensPerMonth,
        QuotaKind::RequestsPerDay,
        QuotaKind::RequestsPerMonth,
    ];

    /// As `quotas` and `quota` name it.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::TokensPerDay => "tokens_per_day",
            QuotaKind::TokensPerMonth => "tokens_per_month",
            QuotaKind::RequestsPerDay => "requests_per_day",
            QuotaKind::RequestsPerMonth => "requests_per_month",
        }
    }

    /// `tokens per day`, for a message.
    pub fn words(self) -> &'static str {
        match self {
            QuotaKind::TokensPerDay => "tokens per day",
            QuotaKind::TokensPerMonth => "tokens per month",
            QuotaKind::RequestsPerDay => "requests per day",
            QuotaKind::RequestsPerMonth => "requests per month",
        }
    }

    pub fn limit(self, q: &KeyQuotas) -> Option<u64> {
        match self {
            QuotaKind::TokensPerDay => q.tokens_per_day,
            QuotaKind::TokensPerMonth => q.tokens_per_month,
            QuotaKind::RequestsPerDay => q.requests_per_day,
            QuotaKind::RequestsPerMonth => q.requests_per_month,
        }
    }

    /// The window it counts in at `now`.
    pub fn window(self, now: Timestamp) -> Window {
        match self {
            QuotaKind::TokensPerDay | QuotaKind::RequestsPerDay => Window::Day(day_of(now)),
            QuotaKind::TokensPerMonth | QuotaKind::RequestsPerMonth => Window::Month(month_of(now)),
        }
    }

    fn of(self, u: Used) -> u64 {
        match self {
            QuotaKind::TokensPerDay | QuotaKind::TokensPerMonth => u.tokens,
            QuotaKind::RequestsPerDay | QuotaKind::RequestsPerMonth => u.requests,
        }
    }
}

/// A request refused because a quota of its key is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub kind: QuotaKind,
    pub limit: u64,
    /// When the quota's window ends: the key may be used again then (unless another quota
    /// is used up too; the refusal names the one that resets last).
    pub resets_at: Timestamp,
    /// From the check to `resets_at`.
    pub reset_in: Duration,
}

impl QuotaRefusal {
    /// `kind`'s quota of `limit` is used up at `now`, until window `w` ends.
    fn until_end(kind: QuotaKind, limit: u64, w: Window, now: Timestamp) -> QuotaRefusal {
        QuotaRefusal {
            kind,
            limit,
            resets_at: w.end(),
            reset_in: Duration::from_secs(now.until(w.end())),
        }
    }
}

/// Admits one request of a key with `quotas` at `now`, counting it, or refuses it (not
/// counted) when a quota is used up: a request quota when this request would pass it, a
/// token quota once it is reached. Keys without quotas are counted too, so a quota set later
/// in a window starts from what the key used in it.
pub fn check(
    quotas: Option<&KeyQuotas>,
    state: &QuotaState,
    now: Timestamp,
) -> Result<(), QuotaRefusal> {
    state.pending_requests.fetch_add(1, Ordering::Relaxed);
    let Some(q) = quotas else { return Ok(()) };
    let mut refusal: Option<QuotaRefusal> = None;
    for kind in QuotaKind::ALL {
        let Some(limit) = kind.limit(q) else { continue };
        let w = kind.window(now);
        let used = kind.of(state.used(w));
        let over = match kind {
            QuotaKind::RequestsPerDay | QuotaKind::RequestsPerMonth => used > limit,
            QuotaKind::TokensPerDay | QuotaKind::TokensPerMonth => used >= limit,
        };
        if over && refusal.is_none_or(|r| r.resets_at < w.end()) {
            refusal = Some(QuotaRefusal::until_end(kind, limit, w, now));
        }
    }
    match refusal {
        None => Ok(()),
        Some(r) => {
            state.pending_requests.fetch_sub(1, Ordering::Relaxed);
            Err(r)
        }
    }
}

/// Why `hold_tokens` refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefusal {
    /// A token quota is used up (since `check`, other requests ended): until its window ends.
    UsedUp(QuotaRefusal),
    /// Not used up, but what running requests hold leaves nothing: until one of them ends.
    Held {
        kind: QuotaKind,
        limit: u64,
        used: u64,
        held: u64,
    },
}

/// Holds a request's token `estimate` against the key's token quotas until it ends
/// (`QuotaState::release`), or refuses it (and takes back the request `check` counted) when
/// what was used plus what running requests hold reaches a token quota. Without a hold, every
/// request admitted while the first ran passed a quota that the first alone used up. Returns
/// what is held: 0 for a key without a token quota.
pub fn hold_tokens(
    quotas: Option<&KeyQuotas>,
    state: &QuotaState,
    now: Timestamp,
    estimate: u64,
) -> Result<u64, HoldRefusal> {
    let Some(q) = quotas.filter(|q| q.tokens_per_day.is_some() || q.tokens_per_month.is_some())
    else {
        return Ok(0);
    };
    let held = state.held_tokens.fetch_add(estimate, Ordering::Relaxed);
    let mut refusal: Option<HoldRefusal> = None;
    for kind in [QuotaKind::TokensPerDay, QuotaKind::TokensPerMonth] {
        let Some(limit) = kind.limit(q) else { continue };
        let w = kind.window(now);
        let used = kind.of(state.used(w));
        if used >= limit {
            // Used up outranks held: it is the refusal that lasts.
            if !matches!(refusal, Some(HoldRefusal::UsedUp(r)) if r.resets_at >= w.end()) {
                refusal = Some(HoldRefusal::UsedUp(QuotaRefusal::until_end(
                    kind, limit, w, now,
                )));
            }
        } else if used.saturating_add(held) >= limit && refusal.is_none() {
            refusal = Some(HoldRefusal::Held {
                kind,
                limit,
                used,
                held,
            });
        }
    }
    match refusal {
        None => Ok(estimate),
        Some(r) => {
            state.held_tokens.fetch_sub(estimate, Ordering::Relaxed);
            state.pending_requests.fetch_sub(1, Ordering::Relaxed);
            Err(r)
        }
    }
}

/// One of a key's quotas used up: the next request is refused until `window` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedUp {
    pub kind: QuotaKind,
    pub window: Window,
    pub limit: u64,
    pub used: u64,
}

/// The quotas of a key with `quotas` that are used up at `now`, as `check` would find them
/// (what this process knows: the store's total as last read, plus what is pending). Here,
/// beside `check`, so the two cannot disagree on what "used up" means: the next request would
/// pass a request quota, or a token quota is reached.
pub fn used_up(quotas: &KeyQuotas, state: &QuotaState, now: Timestamp) -> Vec<UsedUp> {
    QuotaKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let limit = kind.limit(quotas)?;
            let window = kind.window(now);
            let used = kind.of(state.used(window));
            (used >= limit).then_some(UsedUp {
                kind,
                window,
                limit,
                used,
            })
        })
        .collect()
}

/// A key's quotas as the API shows them: per set quota `{limit, used, remaining, resets_at}`,
/// with `used` in a window as `used` says (this process's `QuotaState::used`, or a store's
/// count for the CLI).
pub fn view(
    quotas: Option<&KeyQuotas>,
    used: impl Fn(Window) -> Used,
    now: Timestamp,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let Some(q) = quotas else {
        return out.into();
    };
    for kind in QuotaKind::ALL {
        let Some(limit) = kind.limit(q) else { continue };
        let w = kind.window(now);
        let used = kind.of(used(w));
        out.insert(
            kind.name().into(),
            serde_json::json!({
                "limit": limit,
                "used": used,
                "remaining": limit.saturating_sub(used),
                "resets_at": w.end(),
            }),
        );
    }
    out.into()
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
