//! What a replica reads from the shared store to follow it: where the store is (epoch,
//! version, the diverged marker), the changes after a version, the records they name, and
//! every record (a full resync, `keys pull`).
//!
//! A record this version cannot read (a field a newer keygate wrote, a hand edit) is left
//! out of what is read, logged by id and counted (`readable`): failing the whole read on it
//! held back every other change, revokes included, on every replica.

use super::{unavailable, RedisStore};
use crate::keys::error::StoreError;
use crate::keys::record::{self, KeyRecord};
use std::sync::atomic::Ordering;

/// The store as a replica finds it when it (re)connects.
#[derive(Debug, Clone, Default)]
pub struct StorePosition {
    /// `None`: never written (a new store, or a Redis restarted empty).
    pub epoch: Option<String>,
    pub version: u64,
    /// Why writes are refused, when a replica marked the store as behind.
    pub diverged: Option<String>,
    /// The oldest change the log still holds.
    pub oldest: Option<u64>,
}

impl RedisStore {
    pub fn position(&self, con: &mut redis::Connection) -> Result<StorePosition, StoreError> {
        let n = &self.names;
        let (epoch, version, diverged, first): (
            Option<String>,
            Option<u64>,
            Option<String>,
            Entries,
        ) = redis::pipe()
            .get(&n.epoch)
            .get(&n.ver)
            .get(&n.diverged)
            .cmd("XRANGE")
            .arg(&n.log)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query(con)
            .map_err(unavailable)?;
        Ok(StorePosition {
            epoch,
            version: version.unwrap_or(0),
            diverged,
            oldest: first.first().map(|(id, _)| version_of(id)),
        })
    }

    /// Up to `count` changes after `after`: (version, key id), oldest first.
    pub fn changes(
        &self,
        con: &mut redis::Connection,
        after: u64,
        count: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let entries: Entries = redis::cmd("XRANGE")
            .arg(&self.names.log)
            .arg(format!("{}-0", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query(con)
            .map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let key = fields
                    .chunks(2)
                    .find(|f| f[0] == "id")
                    .and_then(|f| f.get(1).cloned())
                    .unwrap_or_default();
                (version_of(&id), key)
            })
            .collect())
    }

    /// Waits up to `block_ms` for a change after `after` (the connection's read timeout
    /// must be longer). Whether one came.
    pub fn wait(
        &self,
        con: &mut redis::Connection,
        after: u64,
        block_ms: u64,
    ) -> Result<bool, StoreError> {
        let v: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.names.log)
            .arg(format!("{after}-0"))
            .query(con)
            .map_err(unavailable)?;
        Ok(!matches!(v, redis::Value::Nil))
    }

    /// The records with these ids (missing ones left out, and those `readable` refuses).
    pub fn records(
        &self,
        con: &mut redis::Connection,
        ids: &[String],
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&self.names.rec)
            .arg(ids)
            .query(con)
            .map_err(unavailable)?;
        Ok(ids
            .iter()
            .zip(texts)
            .filter_map(|(id, text)| self.readable(id, &text?))
            .collect())
    }

    /// Every record, a batch at a time (`HSCAN`). Returns the ids of those it left out
    /// (`readable`).
    pub fn scan(
        &self,
        con: &mut redis::Connection,
        each: &mut dyn FnMut(KeyRecord),
    ) -> Result<Vec<String>, StoreError> {
        let mut left_out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&self.names.rec)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(con)
                .map_err(unavailable)?;
            for (id, text) in pairs {
                match self.readable(&id, &text) {
                    Some(rec) => each(rec),
                    None => left_out.push(id),
                }
            }
            if next == 0 {
                return Ok(left_out);
            }
            cursor = next;
        }
    }

    /// Every record, in creation order (as a key file holds them), with the ids of those
    /// left out: that do not parse, or are invalid (a key file holding them would not load).
    pub fn read_all(&self) -> Result<(Vec<KeyRecord>, Vec<String>), StoreError> {
        let mut con = self.connect(std::time::Duration::from_secs(10))?;
        let mut all = Vec::new();
        let mut left_out = self.scan(&mut con, &mut |r| all.push(r))?;
        all.retain(|r| {
            let valid = record::validate_record(0, r).is_ok();
            if !valid {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                left_out.push(r.id.clone());
            }
            valid
        });
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok((all, left_out))
    }

    /// The record stored under `id`; `None` when this version cannot parse it, logged by id
    /// and counted (`keygate_key_store_records_skipped_total`). Its text is never logged: it
    /// holds a key hash, and a hand edit could hold anything. What a replica held for that
    /// key stays in force (a revoke stays revoked).
    fn readable(&self, id: &str, text: &str) -> Option<KeyRecord> {
        match serde_json::from_str(text) {
            Ok(rec) => Some(rec),
            Err(e) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(key_id = ?id, column = e.column(), "a record in the key store does not parse (a field a newer keygate wrote, or a hand edit): left out, and what this replica held for that key stays in force; rewrite it with the version that wrote it, or remove it (redis-cli HDEL)");
                None
            }
        }
    }

    /// Marks the store as behind this replica — writes refuse until `keygate keys push` —
    /// unless its epoch is no longer `epoch` (a push has just restored it).
    pub fn set_diverged(
        &self,
        con: &mut redis::Connection,
        epoch: Option<&str>,
        why: &str,
    ) -> Result<(), StoreError> {
        redis::Script::new(
            "if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then \
               redis.call('SET', KEYS[2], ARGV[2]) end return 0",
        )
        .key(&self.names.epoch)
        .key(&self.names.diverged)
        .arg(epoch.unwrap_or(""))
        .arg(why)
        .invoke::<()>(con)
        .map_err(unavailable)
    }
}

/// Log entries as `XRANGE` answers them: (id, [field, value, …]).
type Entries = Vec<(String, Vec<String>)>;

/// The version in a log entry id `<version>-0`.
fn version_of(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
