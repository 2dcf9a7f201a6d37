//! Cluster mode: limits shared by every replica through Redis (`[cluster] backend = "redis"`).
//!
//! Each check is one round trip running one Lua script, and every script reads the time from
//! Redis (`TIME`), so replicas with skewed clocks still agree. Request rate is GCRA (the same
//! algorithm as the local limiter), in-flight caps are leases in a sorted set (a crashed
//! replica's slots expire with their lease), and token limits are a bucket that requests
//! reserve from and are reconciled against.
//!
//! Redis being slow or down must not take the gateway down: every call has a short timeout,
//! consecutive failures open a circuit breaker (calls are skipped, not waited on), and the
//! configured policy decides: `allow` (no limit), `deny` (503), or `local` (this replica's own
//! limiters). The connection is made and remade in the background; recovery is automatic.

use crate::limit::{RateInfo, TokenInfo};
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
    Local,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub on_backend_error: OnError,
    pub timeout: Duration,
    pub key_prefix: String,
    /// How long an in-flight slot is held if its replica never releases it.
    pub lease: Duration,
}

/// Consecutive failures that open the breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_OPEN: Duration = Duration::from_secs(2);

static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now_t = redis.call('TIME')
local now = now_t[1] * 1000000 + now_t[2]
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + t
if new_tat - tau > now then
  return {0, 0, new_tat - tau - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now + tau - new_tat) / t), 0}
",
    )
});

static SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now_t = redis.call('TIME')
local now = now_t[1] * 1000 + math.floor(now_t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
",
    )
});

static TOKENS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = tonumber(ARGV[1])
local now_t = redis.call('TIME')
local now = now_t[1] * 1000 + now_t[2] / 1000
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(st[1]) or cap
local ts = tonumber(st[2]) or now
tokens = math.min(cap, tokens + (now - ts) * cap / 60000)
local ok, wait = 1, 0
if ARGV[2] == 'reserve' then
  local cost = math.min(tonumber(ARGV[3]), cap)
  if tokens >= cost then tokens = tokens - cost else ok = 0; wait = math.ceil((cost - tokens) * 60000 / cap) end
else
  tokens = math.min(cap, tokens + tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.3f', tokens), 'ts', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {ok, math.floor(tokens), wait}
",
    )
});

pub struct Cluster {
    pub config: ClusterConfig,
    conn: ArcSwapOption<ConnectionManager>,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    epoch: Instant,
    pub errors: AtomicU64,
    lease_seq: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .finish()
    }
}

impl Cluster {
    /// Creates the backend and starts connecting in the background. Needs a Tokio runtime.
    pub fn start(config: ClusterConfig) -> Result<Arc<Cluster>, String> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| format!("`cluster.redis_url`: {e}"))?;
        let cluster = Arc::new(Cluster {
            config,
            conn: ArcSwapOption::empty(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            errors: AtomicU64::new(0),
            lease_seq: AtomicU64::new(0),
        });
        let c = Arc::clone(&cluster);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { c.connect(client).await });
        }
        Ok(cluster)
    }

    async fn connect(self: Arc<Self>, client: redis::Client) {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        loop {
            match ConnectionManager::new_with_config(client.clone(), cfg.clone()).await {
                Ok(m) => {
                    tracing::info!("connected to the Redis limit backend");
                    self.conn.store(Some(Arc::new(m)));
                    return;
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot reach the Redis limit backend; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub fn breaker_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until != 0 && (self.epoch.elapsed().as_millis() as u64) < until
    }

    fn record(&self, ok: bool) {
        if ok {
            if self.failures.swap(0, Ordering::Relaxed) >= BREAKER_THRESHOLD {
                tracing::info!("Redis limit backend answers again; circuit breaker closed");
            }
            self.open_until.store(0, Ordering::Relaxed);
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_THRESHOLD {
            let until = self.epoch.elapsed() + BREAKER_OPEN;
            self.open_until
                .store(until.as_millis() as u64, Ordering::Relaxed);
            if n == BREAKER_THRESHOLD {
                tracing::error!(
                    policy = ?self.config.on_backend_error,
                    "Redis limit backend failing; circuit breaker open, applying the failure policy"
                );
            }
        }
    }

    /// Runs one script; `None` when Redis is unavailable (no connection, error, timeout,
    /// or the breaker is open).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[String],
    ) -> Option<T> {
        if self.breaker_open() {
            return None;
        }
        let Some(conn) = self.conn.load_full() else {
            self.record(false);
            return None;
        };
        let mut conn = (*conn).clone();
        let mut inv = script.key(key);
        for a in args {
            inv.arg(a);
        }
        let result =
            tokio::time::timeout(self.config.timeout, inv.invoke_async::<T>(&mut conn)).await;
        match result {
            Ok(Ok(v)) => {
                self.record(true);
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis limit call failed");
                self.record(false);
                None
            }
            Err(_) => {
                self.record(false);
                None
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
                &RATE,
                &self.key("rate", id),
                &[t.to_string(), tau.to_string()],
            )
            .await?;
        let interval = Duration::from_micros(t);
        let remaining = remaining.max(0) as u32;
        Some(RateInfo {
            limit: per_minute,
            remaining,
            reset: interval * burst.saturating_sub(remaining),
            retry_after: (ok == 0).then(|| Duration::from_micros(wait_us.max(1000) as u64)),
        })
    }

    /// Leases one of key `id`'s `cap` shared in-flight slots. `Some(None)`: all taken.
    pub async fn acquire_slot(self: &Arc<Self>, id: &str, cap: u32) -> Option<Option<SlotLease>> {
        let member = format!(
            "{}-{}-{}",
            std::process::id(),
            self.epoch.elapsed().as_nanos(),
            self.lease_seq.fetch_add(1, Ordering::Relaxed)
        );
        let key = self.key("inflight", id);
        let lease_ms = self.config.lease.as_millis().max(1) as u64;
        let got: i64 = self
            .eval(
                &SLOT,
                &key,
                &[cap.to_string(), lease_ms.to_string(), member.clone()],
            )
            .await?;
        Some((got == 1).then(|| SlotLease {
            cluster: Arc::clone(self),
            key,
            member,
        }))
    }

    /// Reserves `cost` tokens of key `id`'s shared bucket.
    pub async fn reserve_tokens(&self, id: &str, per_minute: u64, cost: u64) -> Option<TokenInfo> {
        let (ok, tokens, wait_ms): (i64, i64, i64) = self
            .eval(
                &TOKENS,
                &self.key("tokens", id),
                &[per_minute.to_string(), "reserve".into(), cost.to_string()],
            )
            .await?;
        let rate = per_minute as f64 / 60.0;
        Some(TokenInfo {
            limit: per_minute,
            remaining: tokens.max(0) as u64,
            reset: Duration::from_secs_f64((per_minute as f64 - tokens as f64).max(0.0) / rate),
            retry_after: (ok == 0).then(|| Duration::from_millis(wait_ms.max(1) as u64)),
        })
    }

    /// Gives back (or charges) tokens after a response, in the background.
    pub fn adjust_tokens(self: &Arc<Self>, id: &str, per_minute: u64, refund: i64) {
        let c = Arc::clone(self);
        let key = self.key("tokens", id);
        tokio::spawn(async move {
            let _: Option<(i64, i64, i64)> = c
                .eval(
                    &TOKENS,
                    &key,
                    &[per_minute.to_string(), "adjust".into(), refund.to_string()],
                )
                .await;
        });
    }
}

/// A held shared in-flight slot; released (in the background) when dropped.
pub struct SlotLease {
    cluster: Arc<Cluster>,
    key: String,
    member: String,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let Some(conn) = self.cluster.conn.load_full() else {
            return; // the lease expires by itself
        };
        let (key, member) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        let timeout = self.cluster.config.timeout;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut conn = (*conn).clone();
                let cmd = redis::cmd("ZREM").arg(&key).arg(&member).to_owned();
                let _ = tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await;
            });
        }
    }
}
