//! The key file's format, and its one reader.
//!
//! `{"version": 1, "keys": [record, …]}`: hashes only, one JSON document. JSON rather than TOML
//! because the file is machine-written (the CLI and the API write it, people read it), parses
//! fast at a million keys, and `jq` works on it in scripts and CI.
//!
//! [`read`] is the only parser of that text. It streams: each record is parsed, validated
//! (`record::validate_record`) and handed on as soon as it is read, so the gateway indexes a
//! million keys holding one parsed record at a time (`KeyIndex::load`), while the CLI, the
//! management API and a write collect them into a [`KeyFile`] ([`KeyFile::parse`]). What needs
//! the whole file — no id and no secret twice — is [`Uniqueness`], which both run on what they
//! read, and whose sorted tables the index is then built from.

use crate::keys::error::StoreError;
use crate::keys::record::{self, KeyRecord, NewKey, RetiredSecret, Status};
use crate::keys::token::{self, KeyHash, NewToken};
use crate::time::Timestamp;
use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE_VERSION: u32 = 1;
/// Rotated-out secrets are kept this long after they stop working, so that presenting one
/// gets a precise "rotated" error rather than "unknown key".
const KEEP_RETIRED_SECS: u64 = 30 * 86_400;

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

/// Reads key-file text, handing each record to `each` once it is read and validated. `path`
/// is only used in messages. A JSON error is reported by line and column; anything else by
/// the key's position and id, or as the version this keygate does not read.
pub fn read(path: &Path, text: &str, each: &mut dyn FnMut(KeyRecord)) -> Result<(), StoreError> {
    use serde::de::DeserializeSeed;
    let mut reader = Reader {
        each,
        problem: None,
        count: 0,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = FileSeed(&mut reader)
        .deserialize(&mut de)
        .and_then(|version| de.end().map(|()| version));
    let invalid = |problem: String| StoreError::Invalid {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(problem) = reader.problem.take() {
        return Err(invalid(problem));
    }
    let version = parsed.map_err(|e| syntax_error(path, &e))?;
    check_version(version).map_err(invalid)
}

fn check_version(version: u32) -> Result<(), String> {
    if version == FILE_VERSION {
        return Ok(());
    }
    Err(format!(
        "unsupported version {version} (this keygate reads version {FILE_VERSION})"
    ))
}

pub(crate) fn syntax_error(path: &Path, e: &serde_json::Error) -> StoreError {
    StoreError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

/// A serde_json message without its " at line L column C" (reported in fields of their own).
pub(crate) fn strip_position(msg: &str) -> String {
    msg.rsplit_once(" at line ")
        .map_or(msg, |(head, _)| head)
        .to_string()
}

/// The streaming parse's state: where records go, and a record that parsed but is invalid
/// (reported as such, not as a syntax error).
struct Reader<'e> {
    each: &'e mut dyn FnMut(KeyRecord),
    problem: Option<String>,
    count: usize,
}

struct FileSeed<'s, 'e>(&'s mut Reader<'e>);
struct KeysSeed<'s, 'e>(&'s mut Reader<'e>);

impl<'de> serde::de::DeserializeSeed<'de> for FileSeed<'_, '_> {
    type Value = u32;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FileSeed<'_, '_> {
    type Value = u32;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key file object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        use serde::de::Error;
        let mut version = None;
        let mut keys = false;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*field {
                // Two of a field: which one counts is anyone's guess, so neither does.
                "version" if version.is_some() => return Err(A::Error::duplicate_field("version")),
                "keys" if keys => return Err(A::Error::duplicate_field("keys")),
                "version" => {
                    let v = map.next_value::<u32>()?;
                    // Written first, as keygate writes it: no record is read in a format
                    // this keygate does not know.
                    if let Err(problem) = check_version(v) {
                        self.0.problem = Some(problem);
                        return Err(A::Error::custom("unsupported version"));
                    }
                    version = Some(v);
                }
                "keys" => {
                    keys = true;
                    map.next_value_seed(KeysSeed(&mut *self.0))?;
                }
                other => return Err(A::Error::unknown_field(other, &["version", "keys"])),
            }
        }
        version.ok_or_else(|| A::Error::missing_field("version"))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for KeysSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeysSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of keys")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(rec) = seq.next_element::<KeyRecord>()? {
            if let Err(problem) = record::validate_record(self.0.count, &rec) {
                self.0.problem = Some(problem);
                return Err(A::Error::custom("invalid key record"));
            }
            (self.0.each)(rec);
            self.0.count += 1;
        }
        Ok(())
    }
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

    fn get_mut(&mut self, id: &str) -> Result<&mut KeyRecord, StoreError> {
        self.keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Adds a key and returns it with its plaintext token (shown once by the caller).
    pub fn create(
        &mut self,
        req: NewKey,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(KeyRecord, NewToken), StoreError> {
        let scopes = req.validate(now)?;
        let token = token::generate(prefix).map_err(|e| StoreError::Random(e.to_string()))?;
        let id = loop {
            let id = token::generate_id().map_err(|e| StoreError::Random(e.to_string()))?;
            if self.keys.iter().all(|k| k.id != id) {
                break id;
            }
        };
        let record = KeyRecord {
            id,
            name: req.name.trim().to_string(),
            sha256: record::hash_hex(&token.hash),
            last4: token.last4.clone(),
            scopes: scopes.names(),
            models: req.models,
            created_at: now,
            expires_at: req.expires_at,
            revoked_at: None,
            rotated_at: None,
            limits: req.limits,
            previous: Vec::new(),
            description: req.description.filter(|d| !d.is_empty()),
            metadata: req.metadata,
            disabled_at: None,
            quotas: req.quotas,
            updated_at: None,
            rev: 1,
        };
        self.keys.push(record.clone());
        Ok((record, token))
    }

    /// Gives key `id` a new secret. The old one works for `grace_secs` more (0: stops now).
    pub fn rotate(
        &mut self,
        id: &str,
        grace_secs: u64,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(KeyRecord, NewToken), StoreError> {
        let valid_until = now
            .checked_plus(std::time::Duration::from_secs(grace_secs))
            .ok_or_else(|| {
                StoreError::Rejected("the grace period must end before the year 10000".into())
            })?;
        let k = self.get_mut(id)?;
        if k.status(now) == Status::Revoked {
            return Err(StoreError::Rejected(format!(
                "key `{id}` is revoked and cannot be rotated"
            )));
        }
        let token = token::generate(prefix).map_err(|e| StoreError::Random(e.to_string()))?;
        k.previous
            .retain(|p| p.valid_until.0 + KEEP_RETIRED_SECS > now.0);
        k.previous.push(RetiredSecret {
            sha256: std::mem::replace(&mut k.sha256, record::hash_hex(&token.hash)),
            last4: std::mem::replace(&mut k.last4, token.last4.clone()),
            valid_until,
        });
        k.rotated_at = Some(now);
        k.touch(now);
        Ok((k.clone(), token))
    }

    /// Revokes key `id` at once, with every secret it had.
    pub fn revoke(&mut self, id: &str, now: Timestamp) -> Result<KeyRecord, StoreError> {
        let k = self.get_mut(id)?;
        if k.revoked_at.is_none() {
            k.revoked_at = Some(now);
            k.touch(now);
        }
        Ok(k.clone())
    }
}
