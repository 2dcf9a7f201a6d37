//! The key file: hashes only, one JSON document, written so that nothing is ever lost.
//!
//! JSON rather than TOML because the file is machine-written (the CLI and the API write it,
//! people read it), parses fast at 100k+ keys, and `jq` works on it in scripts and CI.
//!
//! Every write takes an exclusive lock on a separate, never-renamed lock file, re-reads the
//! key file under that lock, applies one change, and replaces the file by rename after an
//! fsync of the data and then of the directory. Two writers therefore serialise and neither
//! loses the other's change, and a writer killed at any instant leaves the old or the new
//! file, never a torn one. Runtime state (last use, usage) never goes here: the file may be a
//! read-only Kubernetes Secret.

use crate::keys::scope::Scopes;
use crate::keys::token::{self, KeyHash, NewToken};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const FILE_VERSION: u32 = 1;
/// Rotated-out secrets are kept this long after they stop working, so that presenting one
/// gets a precise "rotated" error rather than "unknown key".
const KEEP_RETIRED_SECS: u64 = 30 * 86_400;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub version: u32,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub last4: String,
    pub scopes: Vec<String>,
    /// Glob patterns; empty means every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "KeyLimits::is_empty")]
    pub limits: KeyLimits,
    /// Secrets replaced by rotation, each valid until its grace period ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<RetiredSecret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetiredSecret {
    pub sha256: String,
    pub last4: String,
    pub valid_until: Timestamp,
}

/// Per-key overrides of `[limits]`. Unset fields use the gateway's defaults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    pub fn status(&self, now: Timestamp) -> Status {
        if self.revoked_at.is_some_and(|t| t <= now) {
            Status::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    pub fn scopes(&self) -> Scopes {
        // Validated on load; an unparsable list cannot reach here, but fail closed anyway.
        Scopes::parse_list(&self.scopes).unwrap_or(Scopes::EMPTY)
    }
}

/// What is wrong with a key file or a write to it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("key file {path} is not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("key file {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("key file {path} is read-only ({reason}); manage keys where the file is writable")]
    ReadOnly { path: PathBuf, reason: String },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no key with id `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Rejected(String),
    /// A value given for a new key is invalid; names the field.
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// A value given for one field of a new key is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct FieldError {
    /// As the API names it: `name`, `scopes`, `limits.requests_per_minute`, …
    pub field: &'static str,
    /// A predicate on the field, e.g. "must be at least 1".
    pub problem: String,
}

impl FieldError {
    fn new(field: &'static str, problem: impl Into<String>) -> FieldError {
        FieldError {
            field,
            problem: problem.into(),
        }
    }
}

/// Parses and validates key-file text. `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<KeyFile, StoreError> {
    let file: KeyFile = serde_json::from_str(text).map_err(|e| syntax_error(path, &e))?;
    file.validate().map_err(|problem| StoreError::Invalid {
        path: path.to_path_buf(),
        problem,
    })?;
    Ok(file)
}

pub(crate) fn syntax_error(path: &Path, e: &serde_json::Error) -> StoreError {
    StoreError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

pub(crate) fn strip_position(msg: &str) -> String {
    msg.rsplit_once(" at line ")
        .map_or(msg, |(head, _)| head)
        .to_string()
}

pub(crate) const DUPLICATE_HASH: &str = "the same `sha256` appears twice in the file";

/// Checks one record on its own (`KeyFile::validate` adds what needs the whole file: unique
/// ids and secrets). `i` is its position, for the message.
pub fn validate_record(i: usize, k: &KeyRecord) -> Result<(), String> {
    let at = |problem: String| format!("key #{} ({}): {problem}", i + 1, k.id);
    if !token::is_valid_id(&k.id) {
        return Err(at(
            "`id` must be `key_` followed by 16 letters or digits".into()
        ));
    }
    if k.name.trim().is_empty() {
        return Err(at("`name` is empty".into()));
    }
    let secrets = std::iter::once((&k.sha256, &k.last4))
        .chain(k.previous.iter().map(|p| (&p.sha256, &p.last4)));
    for (sha, last4) in secrets {
        if parse_hash(sha).is_none() {
            return Err(at(format!(
                "`sha256` must be 64 hex digits, got {} characters",
                sha.len()
            )));
        }
        if !is_last4(last4) {
            return Err(at("`last4` must be 4 letters or digits".into()));
        }
    }
    Scopes::parse_list(&k.scopes).map_err(|e| at(format!("`scopes`: {e}")))?;
    for m in &k.models {
        crate::authorize::compile_glob(m).map_err(|e| at(format!("`models`: {e}")))?;
    }
    if k.expires_at.is_some_and(|e| e < k.created_at) {
        return Err(at("`expires_at` is before `created_at`".into()));
    }
    let l = &k.limits;
    if l.requests_per_minute == Some(0)
        || l.burst == Some(0)
        || l.max_in_flight == Some(0)
        || l.tokens_per_minute == Some(0)
    {
        return Err(at(
            "`limits` values must be at least 1 (omit a limit to use the default)".into(),
        ));
    }
    Ok(())
}

/// Hex SHA-256 as stored in the file.
pub fn hash_hex(h: &KeyHash) -> String {
    hex::encode(h)
}

/// Decodes a stored hex hash.
pub fn parse_hash(s: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn is_last4(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl KeyFile {
    pub fn empty() -> KeyFile {
        KeyFile {
            version: FILE_VERSION,
            keys: Vec::new(),
        }
    }

    /// Checks every invariant; the message names the key (position and id) and the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != FILE_VERSION {
            return Err(format!(
                "unsupported version {} (this keygate reads version {FILE_VERSION})",
                self.version
            ));
        }
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            validate_record(i, k)?;
            let at = |problem: &str| format!("key #{} ({}): {problem}", i + 1, k.id);
            if !ids.insert(k.id.as_str()) {
                return Err(at("duplicate `id`"));
            }
            let secrets = std::iter::once(&k.sha256).chain(k.previous.iter().map(|p| &p.sha256));
            for hash in secrets.filter_map(|s| parse_hash(s)) {
                if !hashes.insert(hash) {
                    return Err(at(DUPLICATE_HASH));
                }
            }
        }
        Ok(())
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
            sha256: hash_hex(&token.hash),
            last4: token.last4.clone(),
            scopes: scopes.names(),
            models: req.models,
            created_at: now,
            expires_at: req.expires_at,
            revoked_at: None,
            rotated_at: None,
            limits: req.limits,
            previous: Vec::new(),
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
            sha256: std::mem::replace(&mut k.sha256, hash_hex(&token.hash)),
            last4: std::mem::replace(&mut k.last4, token.last4.clone()),
            valid_until,
        });
        k.rotated_at = Some(now);
        Ok((k.clone(), token))
    }

    /// Revokes key `id` at once, with every secret it had.
    pub fn revoke(&mut self, id: &str, now: Timestamp) -> Result<KeyRecord, StoreError> {
        let k = self.get_mut(id)?;
        if k.revoked_at.is_none() {
            k.revoked_at = Some(now);
        }
        Ok(k.clone())
    }
}

impl KeyRecord {
    /// The public view of a key, shared by the CLI's `--json` and the management API. Never
    /// holds more of the secret than its last four characters.
    pub fn view(
        &self,
        prefix: &str,
        now: Timestamp,
        usage: Option<&crate::account::UsageSnapshot>,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "object": "api_key",
            "id": self.id,
            "name": self.name,
            "masked_key": token::mask(prefix, &self.last4),
            "scopes": self.scopes,
            "models": self.models,
            "status": self.status(now).as_str(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
            "limits": self.limits,
            "last_used_at": usage.and_then(|u| u.last_used),
        });
        let grace: Vec<_> = self
            .previous
            .iter()
            .filter(|p| p.valid_until > now)
            .map(|p| serde_json::json!({"masked_key": token::mask(prefix, &p.last4), "valid_until": p.valid_until}))
            .collect();
        if !grace.is_empty() {
            v["previous_keys_valid"] = serde_json::Value::Array(grace);
        }
        v
    }
}

/// What a new key is made of, from the CLI or the API.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub models: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub limits: KeyLimits,
}

impl NewKey {
    /// Checks every field as the API names it; what the CLI and the API both call before a
    /// key is made, so both refuse the same things with the same words. Returns the scopes.
    pub fn validate(&self, now: Timestamp) -> Result<Scopes, FieldError> {
        let text = |field: &'static str, value: &str| {
            crate::text::check(field, value).map_err(|e| FieldError::new(field, e.problem()))
        };
        text("name", &self.name)?;
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let scopes = Scopes::parse_list(&self.scopes)
            .map_err(|e| FieldError::new("scopes", format!("has an {e}")))?;
        for m in &self.models {
            text("models", m)?;
            crate::authorize::compile_glob(m)
                .map_err(|e| FieldError::new("models", format!("is invalid: {e}")))?;
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err(FieldError::new("expires_at", "must be in the future"));
        }
        let l = &self.limits;
        for (field, zero) in [
            (
                "limits.requests_per_minute",
                l.requests_per_minute == Some(0),
            ),
            ("limits.burst", l.burst == Some(0)),
            ("limits.tokens_per_minute", l.tokens_per_minute == Some(0)),
            ("limits.max_in_flight", l.max_in_flight == Some(0)),
        ] {
            if zero {
                return Err(FieldError::new(
                    field,
                    "must be at least 1 (omit it to use the gateway's default)",
                ));
            }
        }
        Ok(scopes)
    }
}

/// A key file on disk.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    pub fn new(path: impl Into<PathBuf>) -> KeyStore {
        KeyStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file. A missing file is an empty key set.
    pub fn load(&self) -> Result<KeyFile, StoreError> {
        match self.read_text()? {
            Some(text) => parse(&text, &self.path),
            None => Ok(KeyFile::empty()),
        }
    }

    /// Reads and validates the file, which must exist (what a gateway needs to be ready).
    pub fn load_existing(&self) -> Result<KeyFile, StoreError> {
        match self.read_text()? {
            Some(text) => parse(&text, &self.path),
            None => Err(self.not_found()),
        }
    }

    /// The error for a key file that does not exist yet.
    pub fn not_found(&self) -> StoreError {
        StoreError::Read {
            path: self.path.clone(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "the file does not exist yet (create a key with `keygate keys create`)",
            ),
        }
    }

    /// The raw text, `None` when the file does not exist.
    pub fn read_text(&self) -> Result<Option<String>, StoreError> {
        match fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Applies `change` to the current file under the lock and writes the result atomically.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut KeyFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let write_err = |source: io::Error| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let lock = self.open_lock()?;
        lock.lock().map_err(write_err)?;
        let mut file = self.load()?;
        let out = change(&mut file)?;
        file.validate().map_err(StoreError::Rejected)?;
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|e| write_err(io::Error::other(e)))?;
        text.push('\n');
        self.write_atomically(text.as_bytes()).map_err(write_err)?;
        drop(lock); // closing the descriptor releases the lock
        Ok(out)
    }

    fn open_lock(&self) -> Result<File, StoreError> {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink()) {
            // A Kubernetes Secret or ConfigMap mount: replacing the link would break the mount.
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
                reason: "it is a symbolic link, as in a mounted Secret".into(),
            });
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::ReadOnly {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    }
                }
                _ => StoreError::Write {
                    path: self.path.clone(),
                    source: e,
                },
            })?;
        // A lock file first made by root would shut the file's owner (the gateway's user) out
        // of writing through the API: give it the key file's owner. Best effort: only root can.
        if let (Ok(key), Ok(mine)) = (fs::metadata(&self.path), lock.metadata()) {
            if (key.uid(), key.gid()) != (mine.uid(), mine.gid()) {
                let _ = std::os::unix::fs::fchown(&lock, Some(key.uid()), Some(key.gid()));
            }
        }
        Ok(lock)
    }

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir();
        let base = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp_prefix = format!(".{base}.tmp");
        remove_stale_temps(&dir, &tmp_prefix);
        let mut tmp = tempfile::Builder::new()
            .prefix(&tmp_prefix)
            .tempfile_in(&dir)?; // created with mode 0600
        if let Ok(old) = fs::metadata(&self.path) {
            keep_owner_and_mode(tmp.as_file(), &old)?;
        }
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        File::open(&dir)?.sync_all()
    }
}

/// Gives the replacement file the owner and mode of the file it replaces. Without this a
/// rewrite by another user (root running the CLI) leaves a file the gateway's own user cannot
/// read, and every later change, a revoke included, is silently not applied. A writer that may
/// not give the file its owner fails here, before anything is replaced.
fn keep_owner_and_mode(tmp: &File, old: &fs::Metadata) -> io::Result<()> {
    let mine = tmp.metadata()?;
    let uid = (mine.uid() != old.uid()).then_some(old.uid());
    let gid = (mine.gid() != old.gid()).then_some(old.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(tmp, uid, gid).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot keep the file's owner (uid {}, gid {}): {e}; run this as that user",
                    old.uid(),
                    old.gid()
                ),
            )
        })?;
    }
    tmp.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))
}

/// Temp files a killed writer left behind. Only called under the lock, so none is in use.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(name: &str) -> NewKey {
        NewKey {
            name: name.into(),
            ..NewKey::default()
        }
    }

    #[test]
    fn create_rotate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let now = Timestamp::now();
        let (rec, tok) = store
            .update(|f| f.create(new_key("app"), "sk_kg", now))
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(&hash_hex(&tok.hash)));
        assert!(!text.contains(&tok.plaintext));
        let (rotated, tok2) = store
            .update(|f| f.rotate(&rec.id, 3600, "sk_kg", now))
            .unwrap();
        assert_eq!(rotated.previous.len(), 1);
        assert_ne!(tok.hash, tok2.hash);
        store.update(|f| f.revoke(&rec.id, now)).unwrap();
        let file = store.load().unwrap();
        assert_eq!(file.get(&rec.id).unwrap().status(now), Status::Revoked);
    }

    #[test]
    fn validation_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let now = Timestamp::now();
        let (rec, _) = store
            .update(|f| f.create(new_key("app"), "sk_kg", now))
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        fs::write(store.path(), text.replace("\"chat\"", "\"root\"")).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains(&rec.id) && err.contains("root"), "{err}");
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
    }
}
