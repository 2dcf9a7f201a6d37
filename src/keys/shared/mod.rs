//! The shared key store (`[keys] store = "redis"`): every key record in one Redis, every
//! write one atomic Lua script, every write logged in a stream that replicas follow
//! (`ops::key_sync`).
//!
//! Layout (prefix `P`, hash-tagged `{P}` so it fits one Redis Cluster slot): `{P}:rec` HASH
//! id → record JSON (the key file's fields, hash-only), `{P}:sha` HASH secret hash → id (a
//! secret is unique across the store), `{P}:ver` the store version (one more per write),
//! `{P}:epoch` a random id set when the store is first written (a Redis restarted empty has
//! none, or a new one), `{P}:log` STREAM with entry `<version>-0` → `id`, `{P}:diverged` set
//! by a replica that saw the store go backwards: writes refuse until `keygate keys push`.
//!
//! A write reads the record, runs the operation in Rust (`keys::ops`, the one validator),
//! and hands the script the record with the `rev` it read: the script refuses when another
//! writer got there first and the write is retried on the new record (optimistic
//! concurrency), so concurrent writers on different replicas lose nothing.

pub mod read;
pub mod sync;

use crate::config::RedisKeyStore;
use crate::keys::error::StoreError;
use crate::keys::ops::{self, Done, Op};
use crate::keys::record::{self, KeyRecord};
use crate::time::Timestamp;
use redis::Script;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

/// How many changes the log keeps: a replica away for longer resyncs in full.
const LOG_MAXLEN: u64 = 100_000;
/// Writes retried on a conflict before giving up (only a hot key loses this often).
const ATTEMPTS: usize = 20;

/// The Redis key names of one store.
#[derive(Debug, Clone)]
pub struct Names {
    pub rec: String,
    pub sha: String,
    pub ver: String,
    pub epoch: String,
    pub log: String,
    pub diverged: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        let n = |s: &str| format!("{{{prefix}}}:{s}");
        Names {
            rec: n("rec"),
            sha: n("sha"),
            ver: n("ver"),
            epoch: n("epoch"),
            log: n("log"),
            diverged: n("diverged"),
        }
    }
}

/// A connection to the store's Redis, with its scripts. Blocking (the API calls it from a
/// blocking thread, the follower has a thread of its own, the CLI is synchronous).
pub struct RedisStore {
    client: redis::Client,
    pub names: Names,
    timeout: Duration,
    idle: Mutex<Vec<redis::Connection>>,
    write: Script,
    push: Script,
    restore: Script,
    /// Records read and left out, as this version cannot read them (`read`):
    /// `keygate_key_store_records_skipped_total`.
    pub skipped: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("names", &self.names)
            .finish()
    }
}

/// Any Redis failure: the store is unavailable (the message names no secret: Redis is
/// only ever sent hashes).
pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {e}"))
}

impl RedisStore {
    pub fn new(cfg: &RedisKeyStore) -> Result<RedisStore, StoreError> {
        let client = crate::config::cluster::redis_client(&cfg.client)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RedisStore {
            client,
            names: Names::new(&cfg.prefix),
            timeout: cfg.client.timeout,
            idle: Mutex::new(Vec::new()),
            write: Script::new(include_str!("write.lua")),
            push: Script::new(include_str!("push.lua")),
            restore: Script::new(include_str!("restore.lua")),
            skipped: AtomicU64::new(0),
        })
    }

    /// Runs `f` on a connection (an idle one, or a new one), which is kept for reuse only
    /// when `f` succeeded. An idle connection that turns out dead (Redis restarted, or
    /// closed it, while it sat unused) is dropped and `f` runs once more on a new one: the
    /// command never reached a live server. (Every command here is a read, or a script
    /// that checks the revision it changes.)
    pub fn with<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut con, reused) = match taken {
            Some(c) => (c, true),
            None => (self.connect(self.timeout)?, false),
        };
        let out = match f(&mut con) {
            Err(e) if reused && (e.is_io_error() || e.is_connection_dropped()) => {
                con = self.connect(self.timeout)?;
                f(&mut con).map_err(unavailable)?
            }
            r => r.map_err(unavailable)?,
        };
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(con);
        Ok(out)
    }

    /// A new connection whose reads wait at most `read_timeout`.
    pub fn connect(&self, read_timeout: Duration) -> Result<redis::Connection, StoreError> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(unavailable)?;
        con.set_read_timeout(Some(read_timeout))
            .and_then(|_| con.set_write_timeout(Some(self.timeout)))
            .map_err(unavailable)?;
        Ok(con)
    }

    /// One record, `None` when the store has no such key.
    pub fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let text: Option<String> =
            self.with(|c| redis::cmd("HGET").arg(&self.names.rec).arg(id).query(c))?;
        text.map(|t| parse(&t)).transpose()
    }

    /// Runs one operation atomically (see the module doc) and returns what it did, with the
    /// store version of the write (`None` when nothing changed).
    pub fn apply(
        &self,
        op: &Op,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(Done, Option<u64>), StoreError> {
        op.check(now)?;
        for _ in 0..ATTEMPTS {
            let cur = match op.target() {
                Some(id) => Some(
                    self.get(id)?
                        .ok_or_else(|| StoreError::NotFound(id.to_string()))?,
                ),
                None => None,
            };
            let done = match (&cur, op) {
                (Some(rec), _) => op.apply_to(rec, prefix, now)?,
                (None, Op::Create(new)) => ops::create(new.clone(), prefix, now)?,
                (None, _) => return Err(StoreError::NotFound(String::new())),
            };
            if !done.changed {
                return Ok((done, None));
            }
            record::validate_record(0, &done.record).map_err(StoreError::Rejected)?;
            match self.write_record(&done.record, cur.as_ref().map(|r| r.rev))? {
                Written::Ok(v) => return Ok((done, Some(v))),
                // Another writer changed the key (or, for a create, took the id or secret:
                // a new one is drawn): again, from the record as it now is.
                Written::Conflict => continue,
            }
        }
        Err(StoreError::Unavailable(
            "the key changed under every attempt to write it; retry".into(),
        ))
    }

    fn write_record(&self, rec: &KeyRecord, expected: Option<u64>) -> Result<Written, StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let shas: Vec<&str> = std::iter::once(rec.sha256.as_str())
            .chain(rec.previous.iter().map(|p| p.sha256.as_str()))
            .collect();
        let epoch =
            crate::keys::token::generate_id().map_err(|e| StoreError::Random(e.to_string()))?;
        let n = &self.names;
        let answer: (String, String) = self.with(|c| {
            self.write
                .key(&n.rec)
                .key(&n.sha)
                .key(&n.ver)
                .key(&n.epoch)
                .key(&n.log)
                .key(&n.diverged)
                .arg(&rec.id)
                .arg(expected.map(|r| r.to_string()).unwrap_or_default())
                .arg(&json)
                .arg(LOG_MAXLEN)
                .arg(&epoch)
                .arg(shas.len())
                .arg(&shas)
                .invoke(c)
        })?;
        match (answer.0.as_str(), answer.1) {
            ("ok", v) => Ok(Written::Ok(v.parse().unwrap_or(0))),
            ("conflict" | "taken", _) => Ok(Written::Conflict),
            ("missing", _) => Err(StoreError::NotFound(rec.id.clone())),
            ("revoked", _) => Err(StoreError::Revoked {
                id: rec.id.clone(),
                doing: "changed",
            }),
            (_, why) => Err(StoreError::Unavailable(format!(
                "the store refuses writes: {why}"
            ))),
        }
    }

    /// Writes `records` (a replica's snapshot) where the store lacks them or has an older
    /// revision, then gives the store a new epoch and a version above `seen` and allows
    /// writes again: every replica resyncs and merges. Returns (records written, version).
    pub fn push(
        &self,
        records: impl IntoIterator<Item = KeyRecord>,
        seen: u64,
    ) -> Result<(u64, u64), StoreError> {
        let mut written = 0u64;
        let mut batch: Vec<String> = Vec::with_capacity(500);
        let mut flush = |batch: &mut Vec<String>| -> Result<(), StoreError> {
            if batch.is_empty() {
                return Ok(());
            }
            let n: u64 = self.with(|c| {
                self.push
                    .key(&self.names.rec)
                    .key(&self.names.sha)
                    .arg(&*batch)
                    .invoke(c)
            })?;
            written += n;
            batch.clear();
            Ok(())
        };
        for rec in records {
            batch.push(
                serde_json::to_string(&rec).map_err(|e| StoreError::Rejected(e.to_string()))?,
            );
            if batch.len() == 500 {
                flush(&mut batch)?;
            }
        }
        flush(&mut batch)?;
        let epoch =
            crate::keys::token::generate_id().map_err(|e| StoreError::Random(e.to_string()))?;
        let n = &self.names;
        let version: u64 = self.with(|c| {
            self.restore
                .key(&n.ver)
                .key(&n.epoch)
                .key(&n.log)
                .key(&n.diverged)
                .arg(&epoch)
                .arg(seen)
                .invoke(c)
        })?;
        Ok((written, version))
    }
}

enum Written {
    Ok(u64),
    Conflict,
}

/// A record as the store holds it. The error says where the text fails, not what it holds
/// (a key hash, or anything a hand edit put there).
pub fn parse(text: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Rejected(format!(
            "the record in the key store does not parse (column {}): this version of keygate cannot read it; rewrite it with the version that wrote it, or remove it",
            e.column()
        ))
    })
}
