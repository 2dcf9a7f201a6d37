//! Cluster mode: one replica sends each notification. Every replica watches the same key set
//! and finds the same events; before queueing one, a replica claims it in Redis
//! (`{<key_prefix>}:notify:<event id>`, `SET NX` with a lease, `claim.lua`), and only the
//! replica holding the claim sends it. The holder renews its lease while the notification
//! waits (at every look at the key set, and before every attempt) and marks it settled when
//! done (`settle.lua`, kept until the event can no longer be found). A replica that dies with
//! a claim loses it when its lease ends, and another replica takes the notification over; a
//! holder that comes back after that finds it is no longer its own and drops it.
//!
//! Every key carries the prefix's hash tag, so one script may claim many (one slot in a Redis
//! Cluster).

use crate::limit::redis::RedisBackend;
use redis::Script;
use std::time::Duration;

/// How long a claim lives unless renewed.
pub const LEASE: Duration = Duration::from_secs(60);
/// Claims asked for in one script call.
const BATCH: usize = 256;

/// Who sends a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica: it claimed it now, or held it already (the lease renewed).
    Mine,
    /// Another replica holds the claim.
    Theirs,
    /// Sent (or refused, or given up) by one of them.
    Settled,
}

/// Why claims could not be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Not connected yet, or the limit backend's breaker is open: it logs why Redis fails.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Redis was asked and did not answer as it should.
    #[error("{0}")]
    Failed(String),
}

pub struct Claims {
    claim: Script,
    settle: Script,
    tag: String,
}

impl Claims {
    pub fn new(key_prefix: &str) -> Claims {
        Claims {
            claim: Script::new(include_str!("claim.lua")),
            settle: Script::new(include_str!("settle.lua")),
            tag: format!("{{{key_prefix}}}"),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:notify:{id}", self.tag)
    }

    fn connection(backend: &RedisBackend) -> Result<redis::aio::ConnectionManager, ClaimError> {
        if backend.breaker_open() {
            return Err(ClaimError::Unavailable(
                "Redis is failing (circuit breaker open)",
            ));
        }
        backend
            .connection()
            .ok_or(ClaimError::Unavailable("not connected to Redis yet"))
    }

    /// Claims (or renews) `ids` for `replica`: one answer per id, in order.
    pub async fn claim(
        &self,
        backend: &RedisBackend,
        ids: &[String],
        replica: &str,
    ) -> Result<Vec<Claim>, ClaimError> {
        let mut conn = Self::connection(backend)?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let mut inv = self.claim.prepare_invoke();
            for id in chunk {
                inv.key(self.key(id));
            }
            inv.arg(replica).arg(LEASE.as_secs());
            let answers: Vec<u8> =
                tokio::time::timeout(backend.background_timeout(), inv.invoke_async(&mut conn))
                    .await
                    .map_err(|_| ClaimError::Failed("Redis did not answer in time".into()))?
                    .map_err(|e| ClaimError::Failed(e.to_string()))?;
            if answers.len() != chunk.len() {
                return Err(ClaimError::Failed(
                    "Redis answered a claim for another number of notifications".into(),
                ));
            }
            out.extend(answers.into_iter().map(|a| match a {
                1 => Claim::Mine,
                2 => Claim::Settled,
                _ => Claim::Theirs,
            }));
        }
        Ok(out)
    }

    /// Marks `id` settled for `remember`, unless another replica holds its claim (then it is
    /// theirs to settle). Whether it was marked.
    pub async fn settle(
        &self,
        backend: &RedisBackend,
        id: &str,
        replica: &str,
        remember: Duration,
    ) -> Result<bool, ClaimError> {
        let mut conn = Self::connection(backend)?;
        let mut inv = self.settle.key(self.key(id));
        inv.arg(replica).arg(remember.as_secs().max(60));
        let marked: u8 =
            tokio::time::timeout(backend.background_timeout(), inv.invoke_async(&mut conn))
                .await
                .map_err(|_| ClaimError::Failed("Redis did not answer in time".into()))?
                .map_err(|e| ClaimError::Failed(e.to_string()))?;
        Ok(marked == 1)
    }
}
