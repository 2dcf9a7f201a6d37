//! The deliverer: the queue in the ledger, one at a time, earliest due first (`webhook`). A
//! failure is retried with backoff (1 s doubling to 5 min, or the receiver's `Retry-After` up
//! to an hour), holding back the whole queue meanwhile (the receiver is what fails), until a
//! day after the notification was queued; a refusal (4xx) is not retried. A failure is logged
//! once per reason; every outcome is counted in `keygate_notifications_total{event,result}`.

use super::claim::Claim;
use super::ledger::{Pending, Settled};
use super::payload;
use super::shared::{now_ms, Shared};
use super::webhook::{self, Outcome};
use crate::config::notify::NotifyConfig;
use crate::ops::metrics::Delivery;
use std::sync::Arc;
use std::time::Duration;

/// A notification still failing this long after it was queued is given up.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two attempts, unless the receiver asks for more.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest wait a receiver may ask for.
const LONGEST_WAIT_ASKED: Duration = Duration::from_secs(3600);

/// The wait after the `attempts`-th failure in a row: 1 s, doubling, at most 5 minutes.
fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// The receiver's backoff. A failure is the receiver's, not one notification's: after one,
/// nothing is tried before the gate opens, and failures in a row double the wait whatever
/// notification they were of, so a receiver that is down sees one attempt per wait however
/// long the queue. Its first answer (taken or refused) opens the gate and makes the whole
/// queue due.
#[derive(Debug, Default)]
struct Gate {
    /// Unix ms before which nothing is tried.
    until: u64,
    /// Failures in a row.
    streak: u32,
}

impl Gate {
    /// A failed attempt at a notification that had failed `attempts` times before (after a
    /// restart, its count carries the streak on): the wait, and when it ends.
    fn failed(&mut self, attempts: u32, asked: Option<Duration>, now: u64) -> (Duration, u64) {
        self.streak = self.streak.max(attempts).saturating_add(1);
        let wait = asked
            .map(|d| d.clamp(Duration::from_secs(1), LONGEST_WAIT_ASKED))
            .unwrap_or_else(|| backoff(self.streak));
        self.until = now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        (wait, self.until)
    }

    /// The receiver answered: whether it had been failing.
    fn answered(&mut self) -> bool {
        let was = self.streak > 0;
        *self = Gate::default();
        was
    }
}

/// The deliverer: the earliest due notification, when it is due.
pub(super) async fn deliver(shared: Arc<Shared>) {
    let mut gate = Gate::default();
    loop {
        let config = shared.gw.config();
        let (Some(cfg), Some(next)) = (config.notify.as_ref(), shared.ledger.next()) else {
            shared.wake_deliverer.notified().await;
            continue;
        };
        let due = next.next_ms.max(gate.until);
        let now = now_ms();
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(due - now)) => {}
                _ = shared.wake_deliverer.notified() => {}
            }
            continue;
        }
        shared.attempt(cfg, next, &mut gate).await;
    }
}

impl Shared {
    /// One attempt at `p`, settled or rescheduled.
    async fn attempt(&self, cfg: &NotifyConfig, p: Pending, gate: &mut Gate) {
        let id = p.event.id.clone();
        let event = p.event.event.name();
        let now = now_ms();
        let queued_for = Duration::from_millis(now.saturating_sub(p.queued_ms));
        if queued_for >= GIVE_UP {
            tracing::warn!(event, key_id = %p.event.key.id, attempts = p.attempts, "notification given up: not delivered within a day of attempts");
            self.settle(&id, Settled::GaveUp, Delivery::GaveUp).await;
            return;
        }
        if let (Some(claims), Some(backend)) = (&self.claims, &self.gw.shared) {
            // Still this replica's? (Its lease may have ended while it was down.) Without an
            // answer it is sent: it was claimed.
            let replica = self.ledger.replica();
            if let Ok(answer) = claims
                .claim(backend, std::slice::from_ref(&id), &replica)
                .await
            {
                if answer.first() != Some(&Claim::Mine) {
                    if self.drop_taken_over(&id) {
                        self.ledger.save().await;
                    }
                    return;
                }
            }
        }
        let body = payload::body(&p.event, cfg.format, self.host.as_deref());
        match webhook::post(cfg, body).await {
            Outcome::Delivered => {
                if gate.answered() {
                    self.ledger.all_due(now);
                }
                if self.delivery_failures.succeeded() {
                    tracing::info!(receiver = %cfg.url.shown(), "notifications are delivered again");
                }
                tracing::debug!(event, key_id = %p.event.key.id, "notification sent");
                self.settle(&id, Settled::Sent, Delivery::Sent).await;
            }
            Outcome::Refused(status) => {
                if gate.answered() {
                    self.ledger.all_due(now);
                }
                tracing::warn!(event, key_id = %p.event.key.id, status = status.as_u16(), receiver = %cfg.url.shown(), "the webhook refused a notification; not retried");
                self.settle(&id, Settled::Rejected, Delivery::Rejected)
                    .await;
            }
            Outcome::Failed {
                reason,
                retry_after,
            } => {
                let attempts = p.attempts + 1;
                let (wait, next) = gate.failed(p.attempts, retry_after, now);
                self.ledger.retry_at(&id, next);
                self.gw.metrics.notification(event, Delivery::Retry);
                if self.delivery_failures.failed(&reason) {
                    tracing::warn!(event, key_id = %p.event.key.id, attempts, error = %reason, retry_in = %humantime::format_duration(wait), "notification not delivered; retried with backoff for a day (logged once per reason)");
                }
                self.ledger.save().await;
            }
        }
    }

    /// Settles `id` in the ledger (and in Redis), counts it and saves.
    async fn settle(&self, id: &str, result: Settled, counted: Delivery) {
        let now = self.gw.usage.clock.now();
        let Some(p) = self.ledger.settle(id, result, now) else {
            return;
        };
        self.gw.metrics.notification(p.event.event.name(), counted);
        if let (Some(claims), Some(backend)) = (&self.claims, &self.gw.shared) {
            let remember = Duration::from_secs(now.until(p.until));
            if let Err(e) = claims
                .settle(backend, id, &self.ledger.replica(), remember)
                .await
            {
                // Its claim ends with its lease; others then find this ledger's word missing
                // and may send it again. Rare (Redis failing just now), so said.
                tracing::warn!(event = p.event.event.name(), key_id = %p.event.key.id, error = %e, "notification settled here but not in Redis: another replica may send it once more");
            }
        }
        self.ledger.save().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_backs_off_for_the_receiver_not_per_notification() {
        let mut g = Gate::default();
        let s = Duration::from_secs;
        assert_eq!(g.failed(0, None, 1_000), (s(1), 2_000));
        // Another notification fails next: the streak goes on.
        assert_eq!(g.failed(0, None, 2_000), (s(2), 4_000));
        assert_eq!(g.failed(1, None, 4_000), (s(4), 8_000));
        // The receiver's word wins (within 1 s and an hour).
        assert_eq!(g.failed(0, Some(s(30)), 8_000), (s(30), 38_000));
        assert_eq!(g.failed(0, Some(s(0)), 38_000).0, s(1));
        assert_eq!(g.failed(0, Some(s(86_400)), 39_000).0, LONGEST_WAIT_ASKED);
        assert!(g.answered(), "it had been failing");
        assert_eq!((g.until, g.streak), (0, 0));
        assert!(!g.answered());
        // After a restart a notification's own count carries the streak on.
        assert_eq!(g.failed(9, None, 0).0, MAX_BACKOFF);
    }

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
