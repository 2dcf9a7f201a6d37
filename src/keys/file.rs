//! The key file's format, its one reader and its one writer.
//!
//! `{"version": 1, "keys": [record, …]}`: hashes only, one JSON document, written one compact
//! record per line (`keys::writer`). JSON rather than TOML because the file is machine-written
//! (the CLI and the API write it, people read it), parses fast at a million keys, and `jq`
//! works on it in scripts and CI.
//!
//! [`read`] (`keys::reader`) is the only parser of that text. The gateway indexes a million
//! keys holding one parsed record at a time (`KeyIndex::load`), a write (`KeyStore::apply`)
//! passes each record on to the new file as it is read, and the CLI and the management API
//! collect them into a [`KeyFile`] ([`KeyFile::parse`]). What needs the whole file — no id and
//! no secret twice — is [`Uniqueness`], which all of them run on what they read, and whose
//! sorted tables the index is then built from.

use crate::keys::error::StoreError;
use crate::keys::ops::{self, Done, Op};
use crate::keys::record::{self, KeyRecord, NewKey};
use crate::keys::token::{KeyHash, NewToken};
use crate::time::Timestamp;
use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::keys::reader::check_version;
pub use crate::keys::reader::{read, read_with, Raw, Visit, FILE_VERSION};

pub(crate) const DUPLICATE_HASH: &str = "the same `sha256` appears twice in the file";

/// A whole key file in memory: what the CLI, the management API and a write work on. The
/// gateway's own index never builds one (see the module doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub version: u32,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

/// The secrets of a whole file, checked for repeats: no secret (current or retired) and no id
/// may appear twice. Fed one record at a time by whoever reads the file.
#[derive(Debug, Default)]
pub struct Uniqueness {
    current: Vec<(KeyHash, u32)>,
    retired: Vec<(KeyHash, u32, Timestamp)>,
}

/// The secrets of a file without repeats, sorted for lookup.
#[derive(Debug)]
pub struct Secrets {
    /// Current secrets with their record's position, sorted by hash.
    pub current: Vec<(KeyHash, u32)>,
    /// Retired secrets with their record's position and end of grace, sorted by hash.
    pub retired: Vec<(KeyHash, (u32, Timestamp))>,
    /// Record positions sorted by id.
    pub by_id: Vec<u32>,
}

impl Uniqueness {
    pub fn with_capacity(n: usize) -> Uniqueness {
        Uniqueness {
            current: Vec::with_capacity(n),
            retired: Vec::new(),
        }
    }

    /// Adds record number `pos` (from 0, in file order), a validated one.
    pub fn add(&mut self, pos: u32, rec: &KeyRecord) {
        if let Some(h) = record::parse_hash(&rec.sha256) {
            self.current.push((h, pos));
        }
        for p in &rec.previous {
            if let Some(h) = record::parse_hash(&p.sha256) {
                self.retired.push((h, pos, p.valid_until));
            }
        }
    }

    /// Sorts and cross-checks the `count` records added; `id(pos)` is a record's id. `Err`
    /// names a secret or id that appears twice.
    pub fn check<'a>(self, count: u32, id: impl Fn(u32) -> &'a str) -> Result<Secrets, String> {
        let Uniqueness {
            mut current,
            retired,
        } = self;
        current.sort_unstable_by_key(|c| c.0);
        let twice = |pos: u32, problem: &str| {
            let id = if pos < count { id(pos) } else { "?" };
            format!("key #{} ({id}): {problem}", pos + 1)
        };
        if let Some(w) = current.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(twice(w[0].1.max(w[1].1), DUPLICATE_HASH));
        }
        let find = |h: &KeyHash| current.binary_search_by(|c| c.0.cmp(h)).ok();
        let mut retired_map = AHashMap::with_capacity(retired.len());
        for (h, pos, until) in retired {
            if find(&h).is_some() || retired_map.insert(h, (pos, until)).is_some() {
                return Err(twice(pos, DUPLICATE_HASH));
            }
        }
        let mut retired: Vec<(KeyHash, (u32, Timestamp))> = retired_map.into_iter().collect();
        retired.sort_unstable_by_key(|r| r.0);
        let mut by_id: Vec<u32> = (0..count).collect();
        by_id.sort_unstable_by(|a, b| id(*a).cmp(id(*b)));
        if let Some(w) = by_id.windows(2).find(|w| id(w[0]) == id(w[1])) {
            return Err(twice(w[0].max(w[1]), "duplicate `id`"));
        }
        Ok(Secrets {
            current,
            retired,
            by_id,
        })
    }
}

impl KeyFile {
    pub fn empty() -> KeyFile {
        KeyFile {
            version: FILE_VERSION,
            keys: Vec::new(),
        }
    }

    /// Reads and validates key-file text through [`read`]. `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<KeyFile, StoreError> {
        let mut keys = Vec::new();
        read(path, text, &mut |rec| keys.push(rec))?;
        let file = KeyFile {
            version: FILE_VERSION,
            keys,
        };
        file.check_unique().map_err(|problem| StoreError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(file)
    }

    /// Checks every invariant of a file in memory (after a change), as [`read`] checks a
    /// file's text: the message names the key (position and id) and the field.
    pub fn validate(&self) -> Result<(), String> {
        check_version(self.version)?;
        for (i, k) in self.keys.iter().enumerate() {
            record::validate_record(i, k)?;
        }
        self.check_unique()
    }

    fn check_unique(&self) -> Result<(), String> {
        let mut unique = Uniqueness::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            unique.add(i as u32, k);
        }
        let keys = &self.keys;
        unique
            .check(keys.len() as u32, |p| keys[p as usize].id.as_str())
            .map(|_| ())
    }

    pub fn get(&self, id: &str) -> Result<&KeyRecord, StoreError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Runs one operation (`keys::ops`) on the file in memory: a create appends the new key
    /// (with an id no key has), any other op replaces the key it names.
    pub fn apply(&mut self, op: Op, prefix: &str, now: Timestamp) -> Result<Done, StoreError> {
        let Some(id) = op.target() else {
            let Op::Create(new) = op else {
                return Err(StoreError::Rejected("an op without a key to change".into()));
            };
            let mut done = ops::create(new.clone(), prefix, now)?;
            while self.keys.iter().any(|k| k.id == done.record.id) {
                done = ops::create(new.clone(), prefix, now)?;
            }
            self.keys.push(done.record.clone());
            return Ok(done);
        };
        let k = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let done = op.apply_to(k, prefix, now)?;
        *k = done.record.clone();
        Ok(done)
    }

    /// Adds a key and returns it with its plaintext token (shown once by the caller).
    pub fn create(
        &mut self,
        req: NewKey,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(KeyRecord, NewToken), StoreError> {
        let done = self.apply(Op::Create(req), prefix, now)?;
        with_token(done)
    }

    /// Gives key `id` a new secret. The old one works for `grace_secs` more (0: stops now).
    pub fn rotate(
        &mut self,
        id: &str,
        grace_secs: u64,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(KeyRecord, NewToken), StoreError> {
        let op = Op::Rotate {
            id: id.to_string(),
            grace: std::time::Duration::from_secs(grace_secs),
        };
        with_token(self.apply(op, prefix, now)?)
    }

    /// Revokes key `id` at once, with every secret it had.
    pub fn revoke(&mut self, id: &str, now: Timestamp) -> Result<KeyRecord, StoreError> {
        let op = Op::Revoke { id: id.to_string() };
        Ok(self.apply(op, "", now)?.record)
    }
}

/// A created or rotated key with its plaintext.
fn with_token(done: Done) -> Result<(KeyRecord, NewToken), StoreError> {
    match done.token {
        Some(token) => Ok((done.record, token)),
        None => Err(StoreError::Rejected("the operation made no secret".into())),
    }
}
