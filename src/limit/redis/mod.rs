//! Cluster mode: limits shared by every replica through Redis (`[cluster] backend = "redis"`).
//!
//! Each check is one round trip running one Lua script, and every script reads the time from
//! Redis (`TIME`), so replicas with skewed clocks still agree. Request rate is GCRA (the same
//! algorithm as the local limiter), in-flight caps are leases in a sorted set, and token
//! limits are a bucket that requests reserve from and are reconciled against.
//!
//! In-flight leases are short (`lease`, 30 s) and running requests keep theirs alive: one task
//! per process renews every slot it holds each third of a lease, in one pipeline. So a crashed
//! replica's slots, and any slot nobody holds, free within a lease, whatever a request's length.
//! A slot whose acquire got no answer in time may still be added when Redis catches up (the
//! call was written): a removal for it is queued and sent on the same connection, after it, so
//! Redis runs it second (it runs one connection's commands in order).
//!
//! Redis being slow or down must not take the gateway down: every call has a short timeout,
//! consecutive failures open a circuit breaker (calls are skipped, not waited on; one caller
//! per interval probes), and the configured policy decides: `allow` (no limit), `deny` (503),
//! or `local` (this replica's own limiters). The connection is made and remade in the
//! background; recovery is automatic. The reason Redis fails is logged once per change.

use crate::limit::{RateInfo, TokenInfo};
use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use redis::Script;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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
    /// How long an in-flight slot lives in Redis unless renewed. Running requests renew theirs
    /// every third of it, so this bounds how long a crashed replica's slots stay taken.
    pub lease: Duration,
    pub tls: RedisTls,
}

/// Files for `rediss://`: a private CA to trust instead of the public roots, and a client
/// certificate for a Redis that asks for one (`tls-auth-clients yes`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Why the Redis client cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Url(String),
    #[error("`#insecure` (no certificate check) is not supported; trust a private CA with `cluster.ca_file`")]
    Insecure,
    #[error("TLS files need a rediss:// URL")]
    TlsWithoutRediss,
    #[error("cannot read {}: {message}", path.display())]
    File {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
}

impl BackendError {
    /// The `[cluster]` field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            BackendError::Url(_) | BackendError::Insecure | BackendError::TlsWithoutRediss => {
                "cluster.redis_url"
            }
            BackendError::File { field, .. } => field,
        }
    }
}

/// Reads a PEM file that must hold at least one certificate (`key`: one private key).
fn read_pem(path: &Path, field: &'static str, key: bool) -> Result<Vec<u8>, BackendError> {
    let err = |message: String| BackendError::File {
        field,
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if key {
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| err(e.to_string()))?;
    } else {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
    }
    Ok(bytes)
}

/// The Redis client for `config`, with its URL checked and TLS files read. Called when the
/// configuration is validated, so `check` and `serve` refuse a backend that cannot be built,
/// and again on each connection attempt (the files are re-read).
pub fn client(config: &ClusterConfig) -> Result<redis::Client, BackendError> {
    let url = config.redis_url.as_str();
    let tls = &config.tls;
    let client = if tls == &RedisTls::default() {
        redis::Client::open(url)
    } else {
        if !url.starts_with("rediss://") {
            return Err(BackendError::TlsWithoutRediss);
        }
        let root_cert = match &tls.ca_file {
            Some(p) => Some(read_pem(p, "cluster.ca_file", false)?),
            None => None,
        };
        let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "cluster.client_cert_file", false)?,
                client_key: read_pem(key, "cluster.client_key_file", true)?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }
    .map_err(|e| BackendError::Url(e.to_string()))?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = client.get_connection_info().addr
    {
        return Err(BackendError::Insecure);
    }
    Ok(client)
}

/// Consecutive failures that open the breaker, and how long it stays open before one caller
/// probes Redis again.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_OPEN: Duration = Duration::from_secs(2);

/// Slots renewed or removed per pipeline: a few hundred commands take Redis well under a
/// millisecond, so a big batch never looks like a stall.
const BATCH: usize = 256;

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
    /// Milliseconds since `epoch` until which the breaker is open (0: closed). Once it has
    /// passed, the one caller that moves it an interval on is the probe; the others keep
    /// getting the policy.
    open_until: AtomicU64,
    epoch: Instant,
    /// The failure reason last logged at warn/error; empty while Redis answers. Touched only
    /// on failures and on recovery, never on the path of a call that succeeds.
    logged: Mutex<String>,
    pub errors: AtomicU64,
    /// This process's part of every slot member, random so replicas (all pid 1 in
    /// containers) never share one.
    instance: String,
    lease_seq: AtomicU64,
    leases: Leases,
}

/// The slots this process holds (renewed while held) and removals still to send.
struct Leases {
    held: DashMap<u64, Held>,
    removals: Mutex<Vec<Removal>>,
    /// Wakes the lease keeper when a removal is queued.
    wake: Arc<Notify>,
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

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
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

impl Cluster {
    /// Creates the backend and starts connecting and keeping leases in the background. Needs
    /// a Tokio runtime. Never falls back silently: until Redis answers, every check gets
    /// the failure policy, and a connection that cannot be made is retried (and logged).
    pub fn start(config: ClusterConfig) -> Arc<Cluster> {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            seed = (u64::from(std::process::id())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        let cluster = Arc::new(Cluster {
            config,
            conn: ArcSwapOption::empty(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            logged: Mutex::new(String::new()),
            errors: AtomicU64::new(0),
            instance: hex::encode(seed),
            lease_seq: AtomicU64::new(0),
            leases: Leases {
                held: DashMap::new(),
                removals: Mutex::new(Vec::new()),
                wake: Arc::new(Notify::new()),
            },
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(connect(Arc::downgrade(&cluster)));
            rt.spawn(keep_leases(
                Arc::downgrade(&cluster),
                Arc::clone(&cluster.leases.wake),
                cluster.config.lease / 3,
            ));
        }
        cluster
    }

    /// The timeout of background calls (renewals, removals, the connection's own): longer
    /// than a check's, as they carry batches and nobody waits on them.
    fn background_timeout(&self) -> Duration {
        (self.config.lease / 3)
            .min(Duration::from_secs(1))
            .max(self.config.timeout)
    }

    fn lease_ms(&self) -> u64 {
        self.config.lease.as_millis().max(1) as u64
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn breaker_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }

    /// May this caller call Redis? Yes while the breaker is closed; while it is open, no,
    /// except for one caller per interval: the probe.
    fn admit(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + BREAKER_OPEN.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        // Both read: a failure racing a success can leave the breaker open with no failures
        // counted, and a successful probe must close it then too.
        if self.failures.load(Ordering::Relaxed) == 0
            && self.open_until.load(Ordering::Relaxed) == 0
        {
            return;
        }
        let was = self.failures.swap(0, Ordering::AcqRel);
        self.open_until.store(0, Ordering::Release);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if was >= BREAKER_THRESHOLD || !logged.is_empty() {
            tracing::info!("Redis limit backend answers again; circuit breaker closed");
        }
        logged.clear();
    }

    fn failed(&self, reason: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < BREAKER_THRESHOLD {
            tracing::debug!(reason, "Redis limit call failed");
            return;
        }
        // Opens the breaker; a failed probe finds it open already (its claim moved it on).
        let _ = self.open_until.compare_exchange(
            0,
            self.now_ms() + BREAKER_OPEN.as_millis() as u64,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if *logged == reason {
            tracing::debug!(reason, "Redis limit backend still failing");
            return;
        }
        if logged.is_empty() {
            tracing::error!(
                reason,
                policy = ?self.config.on_backend_error,
                "Redis limit backend failing; circuit breaker open: the failure policy applies, and one call every {} probes Redis",
                humantime::format_duration(BREAKER_OPEN)
            );
        } else {
            tracing::warn!(
                reason,
                "Redis limit backend still failing, for another reason"
            );
        }
        reason.clone_into(&mut logged);
    }

    /// Runs one script.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[String],
    ) -> Call<T> {
        if !self.admit() {
            return Call::Skipped;
        }
        let Some(conn) = self.conn.load_full() else {
            self.failed("not connected to Redis");
            return Call::Skipped;
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
                self.succeeded();
                Call::Answer(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Call::Failed
            }
            Err(_) => {
                self.failed(&format!(
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
                &RATE,
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
            retry_after: (ok == 0).then(|| Duration::from_micros(wait_us.max(1000) as u64)),
            unavailable: false,
        })
    }

    /// Leases one of key `id`'s `cap` shared in-flight slots; renewed while held.
    pub async fn acquire_slot(self: &Arc<Self>, id: &str, cap: u32) -> Acquired {
        let seq = self.lease_seq.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}-{seq}", self.instance);
        let key = self.key("inflight", id);
        let args = [cap.to_string(), self.lease_ms().to_string(), member];
        match self.eval::<i64>(&SLOT, &key, &args).await {
            Call::Answer(1) => {
                let [_, _, member] = args;
                self.leases.held.insert(seq, Held { key, member });
                Acquired::Slot(SlotLease {
                    cluster: Arc::clone(self),
                    seq,
                })
            }
            Call::Answer(_) => Acquired::Full,
            Call::Skipped => Acquired::Unavailable,
            Call::Failed => {
                // The script may run when Redis catches up and add a slot nobody holds.
                let [_, _, member] = args;
                self.remove_later(key, member);
                Acquired::Unavailable
            }
        }
    }

    /// Queues the removal of a slot for the lease keeper.
    fn remove_later(&self, key: String, member: String) {
        let until = Instant::now() + self.config.lease;
        self.leases
            .removals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Removal { key, member, until });
        self.leases.wake.notify_one();
    }

    /// Sends the queued removals, in order after every call made before they were queued.
    /// False if some could not be sent (they are queued again).
    async fn flush_removals(&self) -> bool {
        let batch = std::mem::take(
            &mut *self
                .leases
                .removals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let now = Instant::now();
        let batch: Vec<Removal> = batch.into_iter().filter(|r| r.until > now).collect();
        if batch.is_empty() {
            return true;
        }
        let mut sent = false;
        if let Some(conn) = self.conn.load_full() {
            let mut conn = (*conn).clone();
            sent = true;
            for chunk in batch.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for r in chunk {
                    pipe.cmd("ZREM").arg(&r.key).arg(&r.member).ignore();
                }
                let done = tokio::time::timeout(
                    self.background_timeout(),
                    pipe.query_async::<()>(&mut conn),
                )
                .await;
                if !matches!(done, Ok(Ok(()))) {
                    sent = false;
                    break;
                }
            }
        }
        if !sent {
            // Removing twice is harmless: all of them go again.
            self.leases
                .removals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
        }
        sent
    }

    /// Moves the expiry of every slot this process holds one lease on (from Redis's clock).
    /// A slot Redis lost (a restart, a failover) is added back: its request still runs.
    async fn renew(&self) {
        if self.leases.held.is_empty() {
            return;
        }
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*conn).clone();
        let mut held: Vec<(String, String)> = self
            .leases
            .held
            .iter()
            .map(|e| (e.key.clone(), e.member.clone()))
            .collect();
        held.sort_unstable();
        let timeout = self.background_timeout();
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

    /// Reserves `cost` tokens of key `id`'s shared bucket.
    pub async fn reserve_tokens(&self, id: &str, per_minute: u64, cost: u64) -> Option<TokenInfo> {
        let (ok, tokens, wait_ms): (i64, i64, i64) = self
            .eval(
                &TOKENS,
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
            retry_after: (ok == 0).then(|| Duration::from_millis(wait_ms.max(1) as u64)),
            unavailable: false,
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
                .await
                .answer();
        });
    }
}

/// Connects in the background, retrying every second; each failure reason is logged once.
async fn connect(cluster: Weak<Cluster>) {
    let mut last = String::new();
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.config.redis_url.starts_with("rediss://") {
            // redis-rs builds its TLS configuration with the process's default provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(c.background_timeout())
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let attempt = match client(&c.config) {
            Ok(client) => ConnectionManager::new_with_config(client, cfg)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("`{}`: {e}", e.field())),
        };
        match attempt {
            Ok(m) => {
                tracing::info!("connected to the Redis limit backend");
                c.conn.store(Some(Arc::new(m)));
                return;
            }
            Err(reason) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if reason != last {
                    tracing::warn!(
                        %reason,
                        policy = ?c.config.on_backend_error,
                        "cannot connect to the Redis limit backend; the failure policy applies, retrying every second"
                    );
                    last = reason;
                } else {
                    tracing::debug!(%reason, "cannot connect to the Redis limit backend");
                }
            }
        }
        drop(c);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The lease keeper, one per process: sends queued removals as soon as they come (retrying
/// with backoff while Redis does not answer), and renews the held slots every `every`.
async fn keep_leases(cluster: Weak<Cluster>, wake: Arc<Notify>, every: Duration) {
    let mut next_renewal = Instant::now() + every;
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    loop {
        let until = retry_at.map_or(next_renewal, |r| r.min(next_renewal));
        tokio::select! {
            _ = wake.notified(), if retry_at.is_none() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        let Some(c) = cluster.upgrade() else { return };
        if retry_at.is_none_or(|r| Instant::now() >= r) {
            if c.flush_removals().await {
                (retry_at, backoff) = (None, Duration::ZERO);
            } else {
                backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
                retry_at = Some(Instant::now() + backoff);
            }
        }
        if Instant::now() >= next_renewal {
            c.renew().await;
            next_renewal = Instant::now() + every;
        }
    }
}

/// A held shared in-flight slot: renewed while held, released (by the lease keeper) when
/// dropped.
pub struct SlotLease {
    cluster: Arc<Cluster>,
    seq: u64,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if let Some((_, held)) = self.cluster.leases.held.remove(&self.seq) {
            self.cluster.remove_later(held.key, held.member);
        }
    }
}
