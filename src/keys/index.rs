//! The in-memory key index: SHA-256 → key, built off the request path from a validated key
//! file and published whole (see `gateway::Live`), so a request sees the old index or the new
//! one, never a mix.
//!
//! Sized for a million keys: the hashes sit in one sorted array with a small directory on
//! their leading bits (32 bytes a key, one or two cache lines a lookup), each key's static
//! facts in one flat record, and nothing a key does at runtime — its rate cell, in-flight
//! count, token bucket and usage counters (`KeyState`) — is allocated until the key is first
//! used. That state lives in a registry keyed by key id that every index of this gateway
//! shares, so a reload neither resets limits nor loses usage, and old and new index agree on
//! one state per key even while requests on both are running.

use crate::config::LimitDefaults;
use crate::keys::entry::{entry, KeyEntry, KeyId, Secret};
use crate::keys::error::StoreError;
use crate::keys::file::{self, Secrets, Uniqueness};
use crate::keys::record::KeyRecord;
use crate::keys::state::{Ended, KeyState};
use crate::keys::token::KeyHash;
use crate::time::Timestamp;
use std::sync::Arc;

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

/// Collects keys one record at a time as the reader hands them over, so a large file never
/// exists as parsed records.
struct Builder<'a> {
    limits: &'a LimitDefaults,
    unique: Uniqueness,
    entries: Vec<KeyEntry>,
}

impl<'a> Builder<'a> {
    fn new(limits: &'a LimitDefaults, capacity: usize) -> Builder<'a> {
        Builder {
            limits,
            unique: Uniqueness::with_capacity(capacity),
            entries: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, rec: &KeyRecord) {
        if KeyId::new(&rec.id).is_none() {
            return; // the reader refuses such a file; never index what it would refuse
        }
        let pos = self.entries.len() as u32;
        self.unique.add(pos, rec);
        self.entries.push(entry(rec, self.limits));
    }

    /// Sorts and cross-checks (`Uniqueness`). `Err` names a secret or id that appears twice.
    fn finish(self, previous: Option<&KeyIndex>) -> Result<KeyIndex, String> {
        let Builder {
            unique,
            mut entries,
            ..
        } = self;
        entries.shrink_to_fit();
        let Secrets {
            current,
            retired,
            by_id,
        } = unique.check(entries.len() as u32, |p| entries[p as usize].id.as_str())?;
        let (retired, retired_at): (Vec<KeyHash>, Vec<(u32, Timestamp)>) =
            retired.into_iter().unzip();
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
                    state.revocation.revoke(Ended::Revoked);
                    false
                }
                Some(pos) => {
                    match index.entries[pos as usize].ended(now) {
                        Some(why) => state.revocation.revoke(why),
                        None => state.revocation.restore(),
                    }
                    true
                }
            });
        Ok(index)
    }
}

impl KeyIndex {
    /// Reads, validates and indexes key-file text in one pass of the key-file reader
    /// (`keys::file::read`), holding one parsed record at a time: loading a million keys
    /// costs the file's text plus the index, not the several times more that a whole parsed
    /// `KeyFile` would allocate (and leave fragmented). `previous` lends its runtime-state
    /// registry, so keys still in the file keep their limits and usage.
    pub fn load(
        path: &std::path::Path,
        text: &str,
        limits: &LimitDefaults,
        previous: Option<&KeyIndex>,
    ) -> Result<KeyIndex, StoreError> {
        let mut builder = Builder::new(limits, text.len() / 300);
        file::read(path, text, &mut |rec| builder.push(&rec))?;
        builder
            .finish(previous)
            .map_err(|problem| StoreError::Invalid {
                path: path.to_path_buf(),
                problem,
            })
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

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
