//! The in-flight slots this process holds in Redis, as leases: each slot is a member of the
//! key's sorted set, scored with the time its lease ends. Running requests keep theirs alive:
//! the lease keeper (`RedisBackend`'s background task) renews every held slot each third of a
//! lease, in pipelines of `BATCH`, so a crashed replica's slots, and any slot nobody holds,
//! free within a lease whatever a request's length. A released slot, or one whose acquire got
//! no answer in time (Redis may still add it), is removed in the background, on the same
//! connection and so after the call that added it.

use dashmap::DashMap;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Slots renewed or removed per pipeline: a few hundred commands take Redis well under a
/// millisecond, so a big batch never looks like a stall.
const BATCH: usize = 256;

/// The slots this process holds (renewed while held) and removals still to send.
pub struct Leases {
    /// This process's part of every slot member, random so replicas (all pid 1 in
    /// containers) never share one.
    instance: String,
    seq: AtomicU64,
    held: DashMap<u64, Held>,
    removals: Mutex<Vec<Removal>>,
    /// Wakes the lease keeper when a removal is queued.
    wake: Arc<Notify>,
    lease: Duration,
}

struct Held {
    key: String,
    member: String,
}

struct Removal {
    key: String,
    member: String,
    /// Past this the slot has expired in Redis anyway (nobody renews it).
    until: Instant,
}

impl Leases {
    pub fn new(lease: Duration) -> Leases {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            seed = (u64::from(std::process::id())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        Leases {
            instance: hex::encode(seed),
            seq: AtomicU64::new(0),
            held: DashMap::new(),
            removals: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            lease,
        }
    }

    /// Signalled when a removal is queued.
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease.as_millis().max(1) as u64
    }

    /// A new slot's number and its member in the sorted set.
    pub fn next_member(&self) -> (u64, String) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        (seq, format!("{}-{seq}", self.instance))
    }

    /// Records slot `seq` as held: renewed until `release`.
    pub fn hold(&self, seq: u64, key: String, member: String) {
        self.held.insert(seq, Held { key, member });
    }

    /// Slot `seq` is given back: it is removed in the background.
    pub fn release(&self, seq: u64) {
        if let Some((_, held)) = self.held.remove(&seq) {
            self.remove_later(held.key, held.member);
        }
    }

    /// Queues the removal of a slot for the lease keeper.
    pub fn remove_later(&self, key: String, member: String) {
        let until = Instant::now() + self.lease;
        self.removals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Removal { key, member, until });
        self.wake.notify_one();
    }

    /// Sends the queued removals on `conn`, in order after every call made before they were
    /// queued. False if some could not be sent (they are queued again).
    pub async fn flush_removals(
        &self,
        conn: Option<Arc<ConnectionManager>>,
        timeout: Duration,
    ) -> bool {
        let batch = std::mem::take(&mut *self.removals.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now();
        let batch: Vec<Removal> = batch.into_iter().filter(|r| r.until > now).collect();
        if batch.is_empty() {
            return true;
        }
        let mut sent = false;
        if let Some(conn) = conn {
            let mut conn = (*conn).clone();
            sent = true;
            for chunk in batch.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for r in chunk {
                    pipe.cmd("ZREM").arg(&r.key).arg(&r.member).ignore();
                }
                let done = tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await;
                if !matches!(done, Ok(Ok(()))) {
                    sent = false;
                    break;
                }
            }
        }
        if !sent {
            // Removing twice is harmless: all of them go again.
            self.removals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
        }
        sent
    }

    /// Moves the expiry of every slot this process holds one lease on (from Redis's clock).
    /// A slot Redis lost (a restart, a failover) is added back: its request still runs.
    pub async fn renew(&self, conn: Option<Arc<ConnectionManager>>, timeout: Duration) {
        if self.held.is_empty() {
            return;
        }
        let Some(conn) = conn else {
            return;
        };
        let mut conn = (*conn).clone();
        let mut held: Vec<(String, String)> = self
            .held
            .iter()
            .map(|e| (e.key.clone(), e.member.clone()))
            .collect();
        held.sort_unstable();
        let now: (u64, u64) =
            match tokio::time::timeout(timeout, redis::cmd("TIME").query_async(&mut conn)).await {
                Ok(Ok(t)) => t,
                _ => {
                    tracing::debug!("in-flight leases not renewed: Redis did not answer");
                    return;
                }
            };
        let lease_ms = self.lease_ms();
        let until = now.0 * 1000 + now.1 / 1000 + lease_ms;
        for chunk in held.chunks(BATCH) {
            let mut pipe = redis::pipe();
            let mut last: Option<&str> = None;
            for (key, member) in chunk {
                pipe.cmd("ZADD").arg(key).arg(until).arg(member).ignore();
                if last != Some(key.as_str()) {
                    pipe.cmd("PEXPIRE").arg(key).arg(lease_ms).ignore();
                    last = Some(key);
                }
            }
            let done = tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await;
            if !matches!(done, Ok(Ok(()))) {
                tracing::debug!("in-flight leases not renewed: Redis did not answer");
                return;
            }
        }
    }
}
