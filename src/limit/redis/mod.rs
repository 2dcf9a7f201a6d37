//! Cluster mode's backend: limits shared by every replica through Redis (`[cluster] backend =
//! "redis"`).
//!
//! Each check is one round trip running one Lua script (`scripts`), and every script reads the
//! time from Redis (`TIME`), so replicas with skewed clocks still agree. Request rate is GCRA
//! (the same algorithm as the local limiter), in-flight caps are leases in a sorted set
//! (`leases`: short, 30 s, and renewed while their request runs), and token limits are a bucket
//! that requests reserve from and are reconciled against.
//!
//! Redis being slow or down must not take the gateway down: every call has a short timeout,
//! consecutive failures open a circuit breaker (`breaker`: calls are skipped, not waited on;
//! one caller per interval probes), and the configured policy decides: `allow` (no limit), `deny` (503),
//! or `local` (this replica's own limiters). The connection is made and remade in the
//! background; recovery is automatic. The reason Redis fails is logged once per change.

mod breaker;
mod connection;
mod leases;
pub mod scripts;

use crate::config::cluster::ClusterConfig;
use crate::limit::rate::{RateInfo, Verdict};
use crate::limit::tokens::TokenInfo;
use connection::Link;
use leases::Leases;
use redis::aio::ConnectionManager;
use redis::Script;
use scripts::Scripts;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The shared limiters of cluster mode: one connection to Redis and its breaker (`Link`),
/// the leases this process holds.
pub struct RedisBackend {
    pub config: ClusterConfig,
    link: Arc<Link>,
    leases: Leases,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .finish()
    }
}

/// The outcome of one call to Redis.
enum Call<T> {
    Answer(T),
    /// Nothing was sent: the breaker is open or there is no connection yet.
    Skipped,
    /// Sent (or maybe sent) without an answer: an error or a timeout. The call may still run.
    Failed,
}

impl<T> Call<T> {
    fn answer(self) -> Option<T> {
        match self {
            Call::Answer(v) => Some(v),
            Call::Skipped | Call::Failed => None,
        }
    }
}

/// The outcome of asking for a shared in-flight slot.
pub enum Acquired {
    Slot(SlotLease),
    /// All of the key's slots are taken.
    Full,
    /// Redis did not answer: the failure policy decides.
    Unavailable,
}

impl RedisBackend {
    /// Creates the backend and starts connecting and keeping leases in the background. Needs
    /// a Tokio runtime. Never falls back silently: until Redis answers, every check gets
    /// the failure policy, and a connection that cannot be made is retried (and logged).
    pub fn start(config: ClusterConfig) -> Arc<RedisBackend> {
        let backend = Arc::new(RedisBackend {
            link: Link::start(config.clone()),
            leases: Leases::new(config.lease),
            scripts: Scripts::new(),
            config,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(keep_leases(
                Arc::downgrade(&backend),
                backend.leases.wake(),
                backend.config.lease / 3,
            ));
        }
        backend
    }

    /// The connection, once made (shared: a clone is a handle to it). Usage (`usage::redis`)
    /// writes and reads through it too, and skips Redis while the breaker is open.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.link.load().map(|c| (*c).clone())
    }

    /// The timeout of background calls (renewals, removals, the connection's own): longer
    /// than a check's, as they carry batches and nobody waits on them.
    pub fn background_timeout(&self) -> Duration {
        connection::background_timeout(&self.config)
    }

    pub fn breaker_open(&self) -> bool {
        self.link.breaker.is_open()
    }

    /// Connected, and the breaker closed (not open, not waiting for its probe): what
    /// `keygate_cluster_backend_up` exports.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Runs one script; once more, within the same `cluster.timeout`, when the connection
    /// turns out dropped (below).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[String],
    ) -> Call<T> {
        self.eval_with(script, key, args, Dropped::RunAgain).await
    }

    async fn eval_with<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[String],
        dropped: Dropped,
    ) -> Call<T> {
        let breaker = &self.link.breaker;
        if !breaker.admit() {
            return Call::Skipped;
        }
        let Some(conn) = self.link.load() else {
            breaker.failed("not connected to Redis");
            return Call::Skipped;
        };
        let mut conn = (*conn).clone();
        let mut inv = script.key(key);
        for a in args {
            inv.arg(a);
        }
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut result = tokio::time::timeout_at(deadline, inv.invoke_async::<T>(&mut conn)).await;
        if let Ok(Err(e)) = &result {
            if dropped == Dropped::RunAgain && (e.is_connection_dropped() || e.is_io_error()) {
                // Redis closed the connection while it sat idle (a restart, `CLIENT KILL`, its
                // own `timeout`): the manager reconnects, and the call runs on the new one.
                tracing::debug!(reason = %e, "Redis limit connection dropped; running the call again");
                result = tokio::time::timeout_at(deadline, inv.invoke_async::<T>(&mut conn)).await;
            }
        }
        match result {
            Ok(Ok(v)) => {
                breaker.succeeded();
                Call::Answer(v)
            }
            Ok(Err(e)) => {
                breaker.failed(&e.to_string());
                if connection::needs_new_connection(&e) {
                    self.link.reconnect(&e);
                }
                Call::Failed
            }
            Err(_) => {
                breaker.failed(&format!(
                    "no answer within {} (`cluster.timeout`)",
                    humantime::format_duration(self.config.timeout)
                ));
                Call::Failed
            }
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{{{id}}}", self.config.key_prefix)
    }

    /// One request's cell of key `id`'s shared request rate.
    pub async fn check_rate(&self, id: &str, per_minute: u32, burst: u32) -> Option<RateInfo> {
        let t = 60_000_000 / u64::from(per_minute.max(1));
        let tau = t * u64::from(burst.max(1));
        let (ok, remaining, wait_us): (i64, i64, i64) = self
            .eval(
                &self.scripts.rate,
                &self.key("rate", id),
                &[t.to_string(), tau.to_string()],
            )
            .await
            .answer()?;
        let interval = Duration::from_micros(t);
        let remaining = remaining.max(0) as u32;
        Some(RateInfo {
            limit: per_minute,
            remaining,
            reset: interval * burst.saturating_sub(remaining),
            verdict: if ok == 0 {
                Verdict::Limited {
                    retry_after: Duration::from_micros(wait_us.max(1000) as u64),
                }
            } else {
                Verdict::Allowed
            },
        })
    }

    /// Leases one of key `id`'s `cap` shared in-flight slots; renewed while held.
    pub async fn acquire_slot(self: &Arc<Self>, id: &str, cap: u32) -> Acquired {
        let (seq, member) = self.leases.next_member();
        let key = self.key("inflight", id);
        let args = [cap.to_string(), self.leases.lease_ms().to_string(), member];
        match self.eval::<i64>(&self.scripts.slot, &key, &args).await {
            Call::Answer(1) => {
                let [_, _, member] = args;
                self.leases.hold(seq, key, member);
                Acquired::Slot(SlotLease {
                    backend: Arc::clone(self),
                    seq,
                })
            }
            Call::Answer(_) => Acquired::Full,
            Call::Skipped => Acquired::Unavailable,
            Call::Failed => {
                // The script may run when Redis catches up and add a slot nobody holds.
                let [_, _, member] = args;
                self.leases.remove_later(key, member);
                Acquired::Unavailable
            }
        }
    }

    /// Reserves `cost` tokens of key `id`'s shared bucket.
    pub async fn reserve_tokens(&self, id: &str, per_minute: u64, cost: u64) -> Option<TokenInfo> {
        let (ok, tokens, wait_ms): (i64, i64, i64) = self
            .eval(
                &self.scripts.tokens,
                &self.key("tokens", id),
                &[per_minute.to_string(), "reserve".into(), cost.to_string()],
            )
            .await
            .answer()?;
        let rate = per_minute as f64 / 60.0;
        Some(TokenInfo {
            limit: per_minute,
            remaining: tokens.max(0) as u64,
            reset: Duration::from_secs_f64((per_minute as f64 - tokens as f64).max(0.0) / rate),
            verdict: if ok == 0 {
                Verdict::Limited {
                    retry_after: Duration::from_millis(wait_ms.max(1) as u64),
                }
            } else {
                Verdict::Allowed
            },
        })
    }

    /// Gives back (or charges) tokens after a response, in the background.
    pub fn adjust_tokens(self: &Arc<Self>, id: &str, per_minute: u64, refund: i64) {
        let r = Arc::clone(self);
        let key = self.key("tokens", id);
        tokio::spawn(async move {
            let _: Option<(i64, i64, i64)> = r
                .eval_with(
                    &r.scripts.tokens,
                    &key,
                    &[per_minute.to_string(), "adjust".into(), refund.to_string()],
                    Dropped::GiveUp,
                )
                .await
                .answer();
        });
    }
}

/// What a call does when its connection turns out dropped. Running it again is safe for the
/// calls on a request's path even if the first run reached Redis before the connection died:
/// a rate cell or a token reservation counted twice only refuses sooner, and a slot is
/// leased under the same member, so twice is once. A refund given twice would hand out
/// tokens never used: an adjustment gives up (as when Redis is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    RunAgain,
    GiveUp,
}

/// The lease keeper, one per process: sends queued removals as soon as they come (retrying
/// with backoff while Redis does not answer), and renews the held slots every `every`.
async fn keep_leases(backend: Weak<RedisBackend>, wake: Arc<Notify>, every: Duration) {
    let mut next_renewal = Instant::now() + every;
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    loop {
        let until = retry_at.map_or(next_renewal, |r| r.min(next_renewal));
        tokio::select! {
            _ = wake.notified(), if retry_at.is_none() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        let Some(b) = backend.upgrade() else { return };
        let timeout = b.background_timeout();
        if retry_at.is_none_or(|r| Instant::now() >= r) {
            if b.leases.flush_removals(b.link.load(), timeout).await {
                (retry_at, backoff) = (None, Duration::ZERO);
            } else {
                backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
                retry_at = Some(Instant::now() + backoff);
            }
        }
        if Instant::now() >= next_renewal {
            b.leases.renew(b.link.load(), timeout).await;
            next_renewal = Instant::now() + every;
        }
    }
}

/// A held shared in-flight slot: renewed while held, released (by the lease keeper) when
/// dropped.
pub struct SlotLease {
    backend: Arc<RedisBackend>,
    seq: u64,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.backend.leases.release(self.seq);
    }
}
