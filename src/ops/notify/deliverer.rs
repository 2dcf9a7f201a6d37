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

/// The deliverer: the earliest due notification, when it is due.
pub(super) async fn deliver(shared: Arc<Shared>) {
    // After a failure nothing is tried before this (Unix ms): the receiver is what fails.
    let mut gate = 0u64;
    loop {
        let config = shared.gw.config();
        let (Some(cfg), Some(next)) = (config.notify.as_ref(), shared.ledger.next()) else {
            shared.wake_deliverer.notified().await;
            continue;
        };
        let due = next.next_ms.max(gate);
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
    async fn attempt(&self, cfg: &NotifyConfig, p: Pending, gate: &mut u64) {
        let id = p.event.id.clone();
        let event = p.event.event.name();
        let now = now_ms();
        let queued_for = Duration::from_millis(now.saturating_sub(p.queued_ms));
        if queued_for >= GIVE_UP {
            tracing::warn!(event, key_id = %p.event.key.id, attempts = p.attempts, "notification given up: not delivered within a day of attempts");
            self.settle(&id, Settled::GaveUp, Delivery::GaveUp).await;
            return;
        }
        if let (Some(claims), Some(backend)) = (&self.claims, &self.gw.redis) {
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
                *gate = 0;
                if self.delivery_failures.succeeded() {
                    tracing::info!(receiver = %cfg.url.shown(), "notifications are delivered again");
                }
                tracing::debug!(event, key_id = %p.event.key.id, "notification sent");
                self.settle(&id, Settled::Sent, Delivery::Sent).await;
            }
            Outcome::Refused(status) => {
                tracing::warn!(event, key_id = %p.event.key.id, status = status.as_u16(), receiver = %cfg.url.shown(), "the webhook refused a notification; not retried");
                self.settle(&id, Settled::Rejected, Delivery::Rejected)
                    .await;
            }
            Outcome::Failed {
                reason,
                retry_after,
            } => {
                let attempts = p.attempts + 1;
                let wait = retry_after
                    .map(|d| d.clamp(Duration::from_secs(1), LONGEST_WAIT_ASKED))
                    .unwrap_or_else(|| backoff(attempts));
                let next = now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                self.ledger.retry_at(&id, next);
                *gate = next;
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
        if let (Some(claims), Some(backend)) = (&self.claims, &self.gw.redis) {
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
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
