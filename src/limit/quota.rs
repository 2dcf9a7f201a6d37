//! Quotas: a key's tokens and requests per UTC calendar day and month (`KeyQuotas`), checked
//! in the limit stage without a round trip to any store.
//!
//! What a key has used in a window is the usage store's total (the state file's counts, or
//! Redis's summed over every replica), as the flusher last read it — every second — plus what
//! this process has counted and not written yet. A request is admitted while every quota has
//! something left; the tokens it uses are only known when it ends, so the last admitted
//! request can take a token quota past its limit, and replicas can overshoot together by about
//! a second of traffic. Requests are counted when admitted, tokens when the request ends.

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
            refusal = Some(QuotaRefusal {
                kind,
                limit,
                resets_at: w.end(),
                reset_in: Duration::from_secs(now.until(w.end())),
            });
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
mod tests {
    use super::*;

    #[test]
    fn requests_and_tokens_per_window() {
        let now = Timestamp::parse("2026-11-29T23:00:00Z").unwrap();
        let q = KeyQuotas {
            requests_per_day: Some(2),
            tokens_per_month: Some(100),
            ..Default::default()
        };
        let s = QuotaState::default();
        assert!(check(Some(&q), &s, now).is_ok());
        assert!(check(Some(&q), &s, now).is_ok());
        let r = check(Some(&q), &s, now).unwrap_err();
        assert_eq!(r.kind, QuotaKind::RequestsPerDay);
        assert_eq!(r.resets_at.to_string(), "2026-11-30T00:00:00Z");
        assert_eq!(r.reset_in, Duration::from_secs(3600));
        assert_eq!(s.pending().requests, 2, "a refusal is not counted");
        // Written to the store: the store's total for today counts, pending is gone.
        let day = day_of(now);
        s.drained(s.pending());
        s.set_stored(Stored {
            day,
            month: month_of(now),
            in_day: Used {
                requests: 2,
                tokens: 0,
            },
            in_month: Used {
                requests: 2,
                tokens: 100,
            },
        });
        // Both used up: the month's, which resets last, is named.
        let r = check(Some(&q), &s, now).unwrap_err();
        assert_eq!(r.kind, QuotaKind::TokensPerMonth);
        // The next day the daily quota starts again, the monthly one not.
        let tomorrow = Timestamp(now.0 + 3600);
        let r = check(Some(&q), &s, tomorrow).unwrap_err();
        assert_eq!(r.kind, QuotaKind::TokensPerMonth);
        assert_eq!(r.resets_at.to_string(), "2026-12-01T00:00:00Z");
        let v = view(Some(&q), |w| s.used(w), now);
        assert_eq!(v["tokens_per_month"]["remaining"], 0);
        assert_eq!(v["requests_per_day"]["used"], 2);
        assert_eq!(v["requests_per_day"]["resets_at"], "2026-11-30T00:00:00Z");
        // A new month starts from nothing.
        let december = Timestamp::parse("2026-12-01T00:00:00Z").unwrap();
        assert!(check(Some(&q), &s, december).is_ok());
        assert!(v.get("tokens_per_day").is_none());
    }

    #[test]
    fn used_up_agrees_with_check() {
        let now = Timestamp::parse("2026-11-29T23:00:00Z").unwrap();
        let q = KeyQuotas {
            requests_per_day: Some(2),
            tokens_per_month: Some(100),
            ..Default::default()
        };
        let s = QuotaState::default();
        assert!(used_up(&q, &s, now).is_empty());
        assert!(check(Some(&q), &s, now).is_ok());
        assert!(used_up(&q, &s, now).is_empty(), "one request of two left");
        assert!(check(Some(&q), &s, now).is_ok());
        let up = used_up(&q, &s, now);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].kind, QuotaKind::RequestsPerDay);
        assert_eq!((up[0].limit, up[0].used), (2, 2));
        assert_eq!(up[0].window, Window::Day(day_of(now)));
        assert!(
            check(Some(&q), &s, now).is_err(),
            "and check refuses the next"
        );
        s.add_tokens(100);
        assert_eq!(used_up(&q, &s, now).len(), 2, "tokens per month reached");
        // Written to the store for today and this month; the next day has a fresh day.
        s.drained(s.pending());
        s.set_stored(Stored {
            day: day_of(now),
            month: month_of(now),
            in_day: Used {
                requests: 2,
                tokens: 100,
            },
            in_month: Used {
                requests: 2,
                tokens: 100,
            },
        });
        assert_eq!(used_up(&q, &s, now).len(), 2);
        let tomorrow = Timestamp(now.0 + 3600);
        let up = used_up(&q, &s, tomorrow);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].kind, QuotaKind::TokensPerMonth);
    }
}
