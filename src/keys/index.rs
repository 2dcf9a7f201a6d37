//! The in-memory key index: SHA-256 → key, built off the request path from a validated key
//! file and published whole (see `state::Live`), so a request sees the old index or the new
//! one, never a mix.
//!
//! Sized for a million keys: the hashes sit in one sorted array with a small directory on
//! their leading bits (32 bytes a key, one or two cache lines a lookup), each key's static
//! facts in one flat record, and nothing a key does at runtime — its rate cell, in-flight
//! count, token bucket and usage counters (`KeyState`) — is allocated until the key is first
//! used. That state lives in a registry keyed by key id that every index of this gateway
//! shares, so a reload neither resets limits nor loses usage, and old and new index agree on
//! one state per key even while requests on both are running.

use crate::account::KeyUsage;
use crate::config::LimitDefaults;
use crate::keys::scope::Scopes;
use crate::keys::store::{self, KeyFile, KeyRecord};
use crate::keys::token::KeyHash;
use crate::limit::{InFlight, RateCell, TokenBucket};
use crate::time::Timestamp;
use ahash::AHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// A key id (`key_` + 16 letters or digits, checked when the file is validated), stored
/// inline so a million of them need no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 20]);

impl KeyId {
    pub fn new(id: &str) -> Option<KeyId> {
        let b: [u8; 20] = id.as_bytes().try_into().ok()?;
        b.is_ascii().then_some(KeyId(b))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("key_invalid")
    }
}

impl std::ops::Deref for KeyId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's name: up to 23 bytes inline, longer ones on the heap. Most names fit, so an
/// index of a million keys is a few large arrays, not a million small allocations.
#[derive(Clone)]
pub enum KeyName {
    Inline { len: u8, bytes: [u8; 23] },
    Heap(Box<str>),
}

impl KeyName {
    pub fn new(name: &str) -> KeyName {
        let mut bytes = [0u8; 23];
        match bytes.get_mut(..name.len()) {
            Some(dst) => {
                dst.copy_from_slice(name.as_bytes());
                KeyName::Inline {
                    len: name.len() as u8,
                    bytes,
                }
            }
            None => KeyName::Heap(name.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` at a char boundary (the whole string).
            KeyName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or("?")
            }
            KeyName::Heap(s) => s,
        }
    }
}

impl std::ops::Deref for KeyName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a key does at runtime. Created on the key's first request.
#[derive(Debug, Default)]
pub struct KeyState {
    pub rate: RateCell,
    pub in_flight: InFlight,
    pub tokens: TokenBucket,
    pub usage: KeyUsage,
    pub revocation: Revocation,
}

/// Ends a key's running requests when a reload finds it revoked or gone from the file.
///
/// A flag every response body checks on each poll (one atomic load), and a `Notify` that
/// wakes the requests that are waiting (for the upstream's head, or for the next frame of a
/// stream), created the first time someone needs it. A request registers only while it
/// waits, so the cost on the request path is a load, and a lock of this key's list of
/// waiters when a request first waits and when it ends.
#[derive(Debug, Default)]
pub struct Revocation {
    revoked: AtomicBool,
    notify: OnceLock<Arc<Notify>>,
}

impl Revocation {
    fn notify(&self) -> &Arc<Notify> {
        self.notify.get_or_init(Default::default)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Marks the key revoked and wakes everything waiting on it. The flag is stored before
    /// the wake-up and read after a waiter registered (both sequentially consistent, as are
    /// `Notify`'s own counters), so a request registering at the same moment either sees the
    /// flag or is woken.
    fn revoke(&self) {
        if !self.revoked.swap(true, Ordering::SeqCst) {
            self.notify().notify_waiters();
        }
    }

    /// The key is active again (its `revoked_at` was removed by hand): new requests run.
    fn restore(&self) {
        if self.revoked.load(Ordering::Relaxed) {
            self.revoked.store(false, Ordering::SeqCst);
        }
    }

    /// Completes once the key is revoked.
    pub async fn revoked(&self) {
        loop {
            let woken = self.notify().notified();
            if self.is_revoked() {
                return;
            }
            woken.await;
        }
    }

    /// A wake-up for a response body to hold (and poll while it waits); it fires on the
    /// next `revoke`.
    pub fn watch(&self) -> OwnedNotified {
        Arc::clone(self.notify()).notified_owned()
    }
}

/// One key as the request path needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: KeyId,
    pub scopes: Scopes,
    pub name: KeyName,
    pub models: Option<Box<globset::GlobSet>>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub max_in_flight: u32,
    pub rate: crate::limit::Quota,
    /// Tokens per minute, 0 when neither the key nor `[limits]` sets one.
    tokens_per_minute: u64,
    state: OnceLock<Arc<KeyState>>,
}

impl KeyEntry {
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(model))
    }

    /// Tokens per minute, when the key or `[limits]` sets one.
    pub fn tokens_per_minute(&self) -> Option<u64> {
        (self.tokens_per_minute > 0).then_some(self.tokens_per_minute)
    }
}

/// Which of a key's secrets a hash is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    Current,
    /// Replaced by a rotation; works until the end of its grace period.
    Retired {
        valid_until: Timestamp,
    },
}

/// Every used key's runtime state, shared by successive indexes.
type Registry = dashmap::DashMap<KeyId, Arc<KeyState>, ahash::RandomState>;

#[derive(Debug, Default)]
pub struct KeyIndex {
    /// Current secrets, sorted; `hash_pos[i]` is where the key of `hashes[i]` is.
    hashes: Vec<KeyHash>,
    hash_pos: Vec<u32>,
    /// `dir[j]..dir[j + 1]`: where hashes whose top `dir_bits` bits are `j` sit.
    dir: Vec<u32>,
    dir_bits: u32,
    /// In key-file order.
    entries: Vec<KeyEntry>,
    /// Secrets replaced by rotation and still in their grace period (few), sorted;
    /// `retired_at[i]` is the key and end of grace of `retired[i]`.
    retired: Vec<KeyHash>,
    retired_at: Vec<(u32, Timestamp)>,
    /// Positions sorted by key id.
    by_id: Vec<u32>,
    states: Arc<Registry>,
}

/// A key found in an index; keeps that index alive while the request runs.
#[derive(Clone)]
pub struct KeyRef {
    index: Arc<KeyIndex>,
    pos: u32,
}

impl std::ops::Deref for KeyRef {
    type Target = KeyEntry;
    fn deref(&self) -> &KeyEntry {
        &self.index.entries[self.pos as usize]
    }
}

impl std::fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyRef").field(&self.id).finish()
    }
}

impl KeyRef {
    /// The key's runtime state, created on first use.
    pub fn state(&self) -> &Arc<KeyState> {
        let entry = &self.index.entries[self.pos as usize];
        entry
            .state
            .get_or_init(|| self.index.states.entry(entry.id).or_default().clone())
    }
}

/// How many leading hash bits the directory uses: about 8 keys a bucket.
fn dir_bits(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()).saturating_sub(3).min(24)
}

fn bucket(hash: &KeyHash, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    (u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) >> (32 - bits)) as usize
}

/// Where `hash` is in `sorted`, the final equality compared in constant time
/// (`subtle::ConstantTimeEq`).
///
/// The search before it (directory bucket, then `partition_point`) compares in variable
/// time, which is safe: what it compares are SHA-256 digests, and a caller chooses only the
/// preimage. Its timing can tell at most how the digest of a guess orders against stored
/// digests, and that says nothing about any key's text; a guess only gets in by hashing to a
/// stored digest exactly, which no ordering information helps to aim at. The one comparison
/// that decides "this is the key" is the one kept free of data-dependent timing.
fn ct_position(sorted: &[KeyHash], hash: &KeyHash) -> Option<usize> {
    use subtle::ConstantTimeEq;
    let i = sorted.partition_point(|h| h < hash);
    let candidate = sorted.get(i)?;
    bool::from(candidate.ct_eq(hash)).then_some(i)
}

/// Collects keys one record at a time, so a large file never exists as parsed records.
struct Builder<'a> {
    limits: &'a LimitDefaults,
    current: Vec<(KeyHash, u32)>,
    retired: Vec<(KeyHash, u32, Timestamp)>,
    entries: Vec<KeyEntry>,
}

impl<'a> Builder<'a> {
    fn new(limits: &'a LimitDefaults, capacity: usize) -> Builder<'a> {
        Builder {
            limits,
            current: Vec::with_capacity(capacity),
            retired: Vec::new(),
            entries: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, rec: &KeyRecord) {
        if KeyId::new(&rec.id).is_none() {
            return; // validation refuses such a file; never index what it would refuse
        }
        let pos = self.entries.len() as u32;
        if let Some(h) = store::parse_hash(&rec.sha256) {
            self.current.push((h, pos));
        }
        for p in &rec.previous {
            if let Some(h) = store::parse_hash(&p.sha256) {
                self.retired.push((h, pos, p.valid_until));
            }
        }
        self.entries.push(entry(rec, self.limits));
    }

    /// Sorts and cross-checks. `Err` names a secret or id that appears twice.
    fn finish(self, previous: Option<&KeyIndex>) -> Result<KeyIndex, String> {
        let Builder {
            mut current,
            retired,
            mut entries,
            ..
        } = self;
        entries.shrink_to_fit();
        current.sort_unstable_by_key(|c| c.0);
        let twice = |pos: u32, problem: &str| {
            let id = entries.get(pos as usize).map_or("?", |e| e.id.as_str());
            format!("key #{} ({id}): {problem}", pos + 1)
        };
        if let Some(w) = current.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(twice(w[0].1.max(w[1].1), store::DUPLICATE_HASH));
        }
        let find = |h: &KeyHash| current.binary_search_by(|c| c.0.cmp(h)).ok();
        let mut retired_map = AHashMap::with_capacity(retired.len());
        for (h, pos, until) in retired {
            if find(&h).is_some() || retired_map.insert(h, (pos, until)).is_some() {
                return Err(twice(pos, store::DUPLICATE_HASH));
            }
        }
        let mut retired: Vec<(KeyHash, (u32, Timestamp))> = retired_map.into_iter().collect();
        retired.sort_unstable_by_key(|r| r.0);
        let (retired, retired_at): (Vec<KeyHash>, Vec<(u32, Timestamp)>) =
            retired.into_iter().unzip();
        let mut by_id: Vec<u32> = (0..entries.len() as u32).collect();
        by_id.sort_unstable_by(|a, b| entries[*a as usize].id.cmp(&entries[*b as usize].id));
        if let Some(w) = by_id
            .windows(2)
            .find(|w| entries[w[0] as usize].id == entries[w[1] as usize].id)
        {
            return Err(twice(w[0].max(w[1]), "duplicate `id`"));
        }
        let (hashes, hash_pos): (Vec<KeyHash>, Vec<u32>) = current.into_iter().unzip();
        let bits = dir_bits(hashes.len());
        let mut dir = vec![0u32; (1usize << bits) + 1];
        for h in &hashes {
            dir[bucket(h, bits) + 1] += 1;
        }
        for j in 1..dir.len() {
            dir[j] += dir[j - 1];
        }
        let states = previous.map_or_else(Default::default, |p| Arc::clone(&p.states));
        let index = KeyIndex {
            hashes,
            hash_pos,
            dir,
            dir_bits: bits,
            entries,
            retired,
            retired_at,
            by_id,
            states,
        };
        // End the running requests of keys revoked or gone, and forget the state of keys
        // that left the file. (Only keys that have been used have state: this visits those.)
        let now = Timestamp::now();
        index
            .states
            .retain(|id, state| match index.position(id.as_str()) {
                None => {
                    state.revocation.revoke();
                    false
                }
                Some(pos) => {
                    let revoked = index.entries[pos as usize]
                        .revoked_at
                        .is_some_and(|t| t <= now);
                    if revoked {
                        state.revocation.revoke();
                    } else {
                        state.revocation.restore();
                    }
                    true
                }
            });
        Ok(index)
    }
}

impl KeyIndex {
    /// Builds the index of a validated file; `previous` lends its runtime-state registry,
    /// so keys still in the file keep their limits and usage.
    pub fn build(file: &KeyFile, limits: &LimitDefaults, previous: Option<&KeyIndex>) -> KeyIndex {
        let mut b = Builder::new(limits, file.keys.len());
        for rec in &file.keys {
            b.push(rec);
        }
        // A validated file has no duplicates; should one slip through, index without them.
        b.finish(previous).unwrap_or_else(|problem| {
            tracing::error!(problem, "key index built empty");
            KeyIndex {
                states: previous.map_or_else(Default::default, |p| Arc::clone(&p.states)),
                ..KeyIndex::default()
            }
        })
    }

    /// Reads, validates and indexes the key file in one pass, holding one parsed record at
    /// a time: loading a million keys costs the file's text plus the index, not the several
    /// times more that a whole parsed `KeyFile` would allocate (and leave fragmented).
    pub fn load(
        path: &std::path::Path,
        text: &str,
        limits: &LimitDefaults,
        previous: Option<&KeyIndex>,
    ) -> Result<KeyIndex, store::StoreError> {
        use serde::de::DeserializeSeed;
        let estimate = text.len() / 300;
        let mut state = Streaming {
            builder: Builder::new(limits, estimate),
            problem: None,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = FileSeed(&mut state)
            .deserialize(&mut de)
            .and_then(|version| de.end().map(|()| version));
        let invalid = |problem: String| store::StoreError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        if let Some(problem) = state.problem.take() {
            return Err(invalid(problem));
        }
        let version = parsed.map_err(|e| store::syntax_error(path, &e))?;
        if version != store::FILE_VERSION {
            return Err(invalid(format!(
                "unsupported version {version} (this keygate reads version {})",
                store::FILE_VERSION
            )));
        }
        state.builder.finish(previous).map_err(invalid)
    }

    fn find(&self, hash: &KeyHash) -> Option<u32> {
        let b = bucket(hash, self.dir_bits);
        let (lo, hi) = (*self.dir.get(b)? as usize, *self.dir.get(b + 1)? as usize);
        let i = ct_position(self.hashes.get(lo..hi)?, hash)?;
        self.hash_pos.get(lo + i).copied()
    }

    pub fn lookup(self: &Arc<Self>, hash: &KeyHash) -> Option<(KeyRef, Secret)> {
        let (pos, secret) = match self.find(hash) {
            Some(pos) => (pos, Secret::Current),
            None => {
                let i = ct_position(&self.retired, hash)?;
                let (pos, valid_until) = *self.retired_at.get(i)?;
                (pos, Secret::Retired { valid_until })
            }
        };
        Some((
            KeyRef {
                index: Arc::clone(self),
                pos,
            },
            secret,
        ))
    }

    fn position(&self, id: &str) -> Option<u32> {
        let i = self
            .by_id
            .binary_search_by(|p| self.entries[*p as usize].id.as_str().cmp(id))
            .ok()?;
        Some(self.by_id[i])
    }

    pub fn by_id(self: &Arc<Self>, id: &str) -> Option<KeyRef> {
        Some(KeyRef {
            index: Arc::clone(self),
            pos: self.position(id)?,
        })
    }

    /// The key's runtime state if it has been used.
    pub fn state_of(&self, id: &str) -> Option<Arc<KeyState>> {
        let id = KeyId::new(id)?;
        self.states.get(&id).map(|s| Arc::clone(&s))
    }

    /// The runtime state of `id`, created if the key has none yet.
    pub fn state_for(&self, id: &str) -> Option<Arc<KeyState>> {
        self.position(id)?;
        let id = KeyId::new(id)?;
        Some(Arc::clone(&self.states.entry(id).or_default()))
    }

    /// Every key that has runtime state (has been used since start or restore).
    pub fn used(&self) -> Vec<(KeyId, Arc<KeyState>)> {
        self.states
            .iter()
            .map(|r| (*r.key(), Arc::clone(r.value())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter()
    }
}

/// The streaming parse: `{"version": N, "keys": [record, ...]}`, each record validated and
/// indexed as it is read, then dropped.
struct Streaming<'a> {
    builder: Builder<'a>,
    /// A record that parsed but is invalid: reported as such, not as a syntax error.
    problem: Option<String>,
}

struct FileSeed<'s, 'a>(&'s mut Streaming<'a>);
struct KeysSeed<'s, 'a>(&'s mut Streaming<'a>);

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
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*field {
                "version" => version = Some(map.next_value::<u32>()?),
                "keys" => map.next_value_seed(KeysSeed(&mut *self.0))?,
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
        let mut i = 0;
        while let Some(rec) = seq.next_element::<KeyRecord>()? {
            if let Err(problem) = store::validate_record(i, &rec) {
                self.0.problem = Some(problem);
                return Err(A::Error::custom("invalid key record"));
            }
            self.0.builder.push(&rec);
            i += 1;
        }
        Ok(())
    }
}

fn entry(rec: &KeyRecord, limits: &LimitDefaults) -> KeyEntry {
    let per_minute = rec
        .limits
        .requests_per_minute
        .unwrap_or(limits.requests_per_minute);
    let burst = rec
        .limits
        .burst
        .or(rec.limits.requests_per_minute)
        .unwrap_or(limits.burst);
    KeyEntry {
        id: KeyId::new(&rec.id).unwrap_or(KeyId([b'?'; 20])),
        scopes: rec.scopes(),
        name: KeyName::new(&rec.name),
        // Validated on load; a pattern that fails to compile here allows nothing.
        models: crate::authorize::compile_allowlist(&rec.models)
            .unwrap_or_else(|_| Some(globset::GlobSet::empty()))
            .map(Box::new),
        expires_at: rec.expires_at,
        revoked_at: rec.revoked_at,
        max_in_flight: rec.limits.max_in_flight.unwrap_or(limits.max_in_flight),
        rate: crate::limit::Quota::new(per_minute, burst),
        tokens_per_minute: rec
            .limits
            .tokens_per_minute
            .or(limits.tokens_per_minute)
            .unwrap_or(0),
        state: OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::store::NewKey;

    fn limits() -> LimitDefaults {
        crate::config::Config::parse("", None).unwrap().limits
    }

    #[test]
    fn finds_every_key_and_nothing_else() {
        let mut file = KeyFile::empty();
        let now = Timestamp::now();
        let mut tokens = Vec::new();
        for i in 0..300 {
            let (rec, token) = file
                .create(
                    NewKey {
                        name: format!("k{i}"),
                        ..Default::default()
                    },
                    "sk_kg",
                    now,
                )
                .unwrap();
            tokens.push((rec.id.clone(), token));
        }
        let idx = Arc::new(KeyIndex::build(&file, &limits(), None));
        assert_eq!(idx.len(), 300);
        for (id, token) in &tokens {
            let t = crate::keys::token::Token::parse(&token.plaintext, "sk_kg").unwrap();
            let (k, secret) = idx.lookup(&t.hash()).expect("indexed");
            assert_eq!(k.id.as_str(), id);
            assert_eq!(secret, Secret::Current);
            assert_eq!(idx.by_id(id).unwrap().id.as_str(), id);
        }
        assert!(idx.lookup(&[0u8; 32]).is_none());
        for name in [
            "",
            "k",
            "exactly-23-bytes-long-x",
            "twenty-four-bytes-long-x",
            "ünïcödé-ünïcödé-ü",
        ] {
            assert_eq!(KeyName::new(name).as_str(), name);
        }
        assert!(idx.lookup(&[0xff; 32]).is_none());
        assert!(idx.by_id("key_0000000000000000").is_none());
    }

    #[test]
    fn constant_time_final_match() {
        let mut sorted: Vec<KeyHash> = (0u8..40).map(|i| [i.wrapping_mul(7); 32]).collect();
        sorted.sort_unstable();
        for (i, h) in sorted.iter().enumerate() {
            assert_eq!(ct_position(&sorted, h), Some(i));
            // One bit off in the last byte, or past either end: no match.
            let mut near = *h;
            near[31] ^= 1;
            assert_eq!(ct_position(&sorted, &near), None);
        }
        assert_eq!(ct_position(&sorted, &[0xff; 32]), None);
        assert_eq!(ct_position(&[], &[0; 32]), None);
    }

    #[test]
    fn retired_secrets_are_found_until_replaced() {
        let mut file = KeyFile::empty();
        let now = Timestamp::now();
        let mut old = Vec::new();
        let mut ids = Vec::new();
        for i in 0..5 {
            let new = NewKey {
                name: format!("r{i}"),
                ..Default::default()
            };
            let (rec, tok) = file.create(new, "sk_kg", now).unwrap();
            old.push(tok);
            ids.push(rec.id);
        }
        let mut new = Vec::new();
        for id in &ids {
            let (_, tok) = file.rotate(id, 3600, "sk_kg", now).unwrap();
            new.push(tok);
        }
        let idx = Arc::new(KeyIndex::build(&file, &limits(), None));
        for ((id, old), new) in ids.iter().zip(&old).zip(&new) {
            let (k, s) = idx.lookup(&old.hash).expect("retired secret");
            assert_eq!(
                (k.id.as_str(), matches!(s, Secret::Retired { .. })),
                (id.as_str(), true)
            );
            let (k, s) = idx.lookup(&new.hash).expect("current secret");
            assert_eq!((k.id.as_str(), s), (id.as_str(), Secret::Current));
            let mut near = old.hash;
            near[31] ^= 0x80;
            assert!(idx.lookup(&near).is_none());
        }
    }

    #[test]
    fn state_is_created_on_use_and_survives_a_rebuild() {
        let mut file = KeyFile::empty();
        let now = Timestamp::now();
        let new = |name: &str| NewKey {
            name: name.into(),
            ..Default::default()
        };
        let (a, _) = file.create(new("a"), "sk_kg", now).unwrap();
        let (b, _) = file.create(new("b"), "sk_kg", now).unwrap();
        let idx = Arc::new(KeyIndex::build(&file, &limits(), None));
        assert!(idx.used().is_empty(), "nothing allocated before use");
        let ka = idx.by_id(&a.id).unwrap();
        ka.state().usage.record_status(200);
        let next = Arc::new(KeyIndex::build(&file, &limits(), Some(&idx)));
        let again = next.by_id(&a.id).unwrap();
        assert!(Arc::ptr_eq(ka.state(), again.state()), "one state per key");
        file.revoke(&b.id, now).unwrap();
        let mut smaller = file.clone();
        smaller.keys.retain(|k| k.id != a.id);
        let last = KeyIndex::build(&smaller, &limits(), Some(&next));
        assert!(last.state_of(&a.id).is_none(), "a removed key's state goes");
    }

    #[tokio::test]
    async fn a_rebuild_ends_the_requests_of_keys_revoked_or_removed() {
        let mut file = KeyFile::empty();
        let now = Timestamp::now();
        let new = |name: &str| NewKey {
            name: name.into(),
            ..Default::default()
        };
        let (a, _) = file.create(new("a"), "sk_kg", now).unwrap();
        let (b, _) = file.create(new("b"), "sk_kg", now).unwrap();
        let idx = Arc::new(KeyIndex::build(&file, &limits(), None));
        let (sa, sb) = (
            Arc::clone(idx.by_id(&a.id).unwrap().state()),
            Arc::clone(idx.by_id(&b.id).unwrap().state()),
        );
        let waiting = tokio::spawn({
            let sa = Arc::clone(&sa);
            async move { sa.revocation.revoked().await }
        });
        tokio::task::yield_now().await;
        file.revoke(&a.id, now).unwrap();
        let idx = Arc::new(KeyIndex::build(&file, &limits(), Some(&idx)));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("a request waiting on the revoked key was not woken")
            .unwrap();
        assert!(sa.revocation.is_revoked());
        assert!(!sb.revocation.is_revoked(), "only the revoked key");
        // Revoked by hand-editing `revoked_at` away: the key works again.
        file.keys[0].revoked_at = None;
        let idx = Arc::new(KeyIndex::build(&file, &limits(), Some(&idx)));
        assert!(!sa.revocation.is_revoked());
        // Removed from the file: its running requests end too.
        file.keys.retain(|k| k.id != b.id);
        KeyIndex::build(&file, &limits(), Some(&idx));
        assert!(sb.revocation.is_revoked());
    }

    #[test]
    fn streaming_load_refuses_what_validation_refuses() {
        let mut file = KeyFile::empty();
        let now = Timestamp::now();
        for name in ["a", "b"] {
            let new = NewKey {
                name: name.into(),
                ..Default::default()
            };
            file.create(new, "sk_kg", now).unwrap();
        }
        let path = std::path::Path::new("keys.json");
        let load = |f: &KeyFile| {
            let text = serde_json::to_string(f).unwrap();
            KeyIndex::load(path, &text, &limits(), None)
        };
        assert_eq!(load(&file).unwrap().len(), 2);
        let invalid = |r: Result<KeyIndex, store::StoreError>| match r {
            Err(store::StoreError::Invalid { problem, .. }) => problem,
            other => panic!("{:?}", other.map(|i| i.len())),
        };
        let mut dup_id = file.clone();
        dup_id.keys[1].id = dup_id.keys[0].id.clone();
        assert!(
            invalid(load(&dup_id)).starts_with("key #2 ("),
            "the later one"
        );
        let mut dup_hash = file.clone();
        dup_hash.keys[1].sha256 = dup_hash.keys[0].sha256.clone();
        assert!(invalid(load(&dup_hash)).contains("appears twice"));
        let mut retired_copy = file.clone();
        retired_copy.keys[1].previous.push(store::RetiredSecret {
            sha256: file.keys[0].sha256.clone(),
            last4: "abcd".into(),
            valid_until: now,
        });
        assert!(invalid(load(&retired_copy)).contains("appears twice"));
        let mut empty_name = file.clone();
        empty_name.keys[0].name = " ".into();
        assert!(invalid(load(&empty_name)).contains("`name` is empty"));
        let mut version = file.clone();
        version.version = 9;
        assert!(invalid(load(&version)).contains("unsupported version 9"));
        for bad in [
            "{\"version\":1,\"keys\":[",
            "{\"version\":1,\"extra\":0}",
            "{\"keys\":[]}",
        ] {
            assert!(
                matches!(
                    KeyIndex::load(path, bad, &limits(), None),
                    Err(store::StoreError::Syntax { .. })
                ),
                "{bad}"
            );
        }
        // The whole-file validator agrees on every case.
        for f in [&dup_id, &dup_hash, &retired_copy, &empty_name, &version] {
            assert!(f.validate().is_err());
        }
    }
}
