//! The index's overlay: the keys changed since its base was built, in persistent maps
//! (`imbl`), so applying a change copies a few tree nodes — O(log n) — and never the base.
//!
//! For each changed key id the overlay holds its new version, or that it is gone; every
//! secret of every current version is in `by_hash`; and the base position of every key it
//! replaces or removes is in `shadowed`, so a base hit there — a secret the key no longer
//! has — is no hit. A key's old secret therefore stops working the moment a rotation or
//! revocation is applied, while one still in its grace period is found in `by_hash`.

use super::base::{ct_same, digest, Base};
use crate::config::LimitDefaults;
use crate::keys::entry::{entry, KeyEntry, KeyId, Secret};
use crate::keys::record::{self, KeyRecord};
use crate::keys::token::KeyHash;
use std::sync::Arc;

/// One change to a key set: a key as it now is (new or changed), or a key gone.
// A change lives from its read to its apply, a few at a time: not worth a box each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum KeyChange {
    Put(KeyRecord),
    Remove(KeyId),
}

/// Why a set of changes was not applied (the index is then as it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(String),
    #[error("key `{0}` appears twice in one set of changes")]
    DuplicateId(KeyId),
    #[error("key `{0}` has a secret another key has")]
    DuplicateSecret(KeyId),
    #[error("no key `{0}` to remove")]
    UnknownKey(KeyId),
}

/// A key's new version with its secrets, as the overlay keeps it; shared by the indexes
/// that hold it.
#[derive(Debug)]
pub(crate) struct Changed {
    pub(super) entry: KeyEntry,
    current: KeyHash,
    retired: Box<[(KeyHash, crate::time::Timestamp)]>,
    pub(super) digest: u64,
}

impl Changed {
    /// Checks `rec` with the one record validator and builds its version.
    pub(super) fn new(rec: &KeyRecord, limits: &LimitDefaults) -> Result<Changed, ApplyError> {
        record::validate_record(0, rec).map_err(ApplyError::Invalid)?;
        let hash = |s: &str| {
            record::parse_hash(s).ok_or_else(|| ApplyError::Invalid("a `sha256` is invalid".into()))
        };
        Ok(Changed {
            entry: entry(rec, limits),
            current: hash(&rec.sha256)?,
            retired: rec
                .previous
                .iter()
                .map(|p| Ok((hash(&p.sha256)?, p.valid_until)))
                .collect::<Result<_, ApplyError>>()?,
            digest: digest(rec),
        })
    }

    fn secrets(&self) -> impl Iterator<Item = (KeyHash, Secret)> + '_ {
        std::iter::once((self.current, Secret::Current)).chain(self.retired.iter().map(
            |(h, valid_until)| {
                (
                    *h,
                    Secret::Retired {
                        valid_until: *valid_until,
                    },
                )
            },
        ))
    }
}

/// Where a key of the base is now.
pub(super) enum Located {
    /// Unchanged, at this base position.
    Base(u32),
    /// Replaced by this overlay version.
    Overlay(u32),
    Gone,
}

/// Versions the overlay may hold before it is folded into a new base: enough that a burst
/// of edits costs no rebuild, few enough that its maps stay a few levels deep.
pub(super) fn overlay_cap(base_len: usize) -> usize {
    (base_len / 64).clamp(256, 16_384)
}

/// What the overlay says about a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// Its version is `entries[pos]`; `in_base`: it replaces a key of the base.
    Present { pos: u32, in_base: bool },
    /// Removed (a tombstone also for a key added and removed again, so comparing two
    /// overlays tells every change).
    Removed { in_base: bool },
}

#[derive(Debug, Clone, Default)]
pub(super) struct Overlay {
    /// Every version applied, in order: a position stays valid for the overlay's life.
    pub(super) entries: imbl::Vector<Arc<Changed>>,
    pub(super) by_id: imbl::OrdMap<KeyId, Slot>,
    /// Each secret of a current version: its version's position, and which secret it is.
    pub(super) by_hash: imbl::OrdMap<KeyHash, (u32, Secret)>,
    /// Base positions whose key the overlay replaces or removes.
    shadowed: imbl::OrdSet<u32>,
    /// Filters in front of `by_hash` and `shadowed`, so that a lookup of a key the overlay
    /// does not hold — nearly every lookup — costs one bit each, not a tree descent.
    hash_filter: Filter,
    shadow_filter: Filter,
    /// Keys present that the base lacks; keys of the base removed.
    pub(super) added: usize,
    removed: usize,
}

impl Overlay {
    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// How many versions it holds (superseded ones included): what compaction reclaims.
    pub(super) fn versions(&self) -> usize {
        self.entries.len()
    }

    /// How many keys it adds to the base's count (negative: removes).
    pub(super) fn net(&self) -> isize {
        self.added as isize - self.removed as isize
    }

    /// The version and secret `hash` is, the final comparison in constant time (see
    /// `ct_position`).
    #[inline]
    pub(super) fn find(&self, hash: &KeyHash) -> Option<(u32, Secret)> {
        if !self.hash_filter.may_hold(hash_bits(hash)) {
            return None;
        }
        let (candidate, found) = self.by_hash.get_next(hash)?;
        bool::from(ct_same(candidate, hash)).then_some(*found)
    }

    /// Base positions replaced or removed, in order.
    pub(super) fn shadowed(&self) -> impl Iterator<Item = u32> + '_ {
        self.shadowed.iter().copied()
    }

    #[inline]
    pub(super) fn shadows(&self, base_pos: u32) -> bool {
        self.shadow_filter.may_hold(base_pos) && self.shadowed.contains(&base_pos)
    }

    /// Where the key at base position `pos` (with id `id`) is now.
    pub(super) fn locate(&self, pos: u32, id: &KeyId) -> Located {
        if !self.shadows(pos) {
            return Located::Base(pos);
        }
        match self.by_id.get(id) {
            Some(Slot::Present { pos, .. }) => Located::Overlay(*pos),
            _ => Located::Gone,
        }
    }

    /// The overlay with `changes` applied (each id: its new version, or `None`: removed),
    /// all or nothing. The secrets of every version must be unique across the whole key
    /// set, as in a key file.
    pub(super) fn apply(
        &self,
        base: &Base,
        changes: Vec<(KeyId, Option<Arc<Changed>>)>,
    ) -> Result<Overlay, ApplyError> {
        let mut next = self.clone();
        let mut ids = ahash::AHashSet::with_capacity(changes.len());
        let (mut new_hashes, mut new_shadowed) = (Vec::new(), Vec::new());
        let mut in_base = Vec::with_capacity(changes.len());
        // Take every old version out first, so that a secret may move between keys
        // changed together, as it may between two versions of a file.
        for (id, _) in &changes {
            if !ids.insert(*id) {
                return Err(ApplyError::DuplicateId(*id));
            }
            if let Some(Slot::Present { pos, .. }) = next.by_id.get(id).copied() {
                for (h, _) in next.entries[pos as usize].secrets() {
                    next.by_hash.remove(&h);
                }
            }
            let base_pos = base.position(id);
            if let Some(p) = base_pos {
                next.shadowed.insert(p);
                new_shadowed.push(p);
            }
            in_base.push(base_pos.is_some());
        }
        next.shadow_filter = next.shadow_filter.with(&new_shadowed);
        for ((id, change), in_base) in changes.into_iter().zip(in_base) {
            let old = next.by_id.get(&id).copied();
            let slot = match change {
                None => {
                    let exists = match old {
                        Some(Slot::Present { .. }) => true,
                        Some(Slot::Removed { .. }) => false,
                        None => in_base,
                    };
                    if !exists {
                        return Err(ApplyError::UnknownKey(id));
                    }
                    Slot::Removed { in_base }
                }
                Some(version) => {
                    let pos = next.entries.len() as u32;
                    for (h, secret) in version.secrets() {
                        let taken = next.by_hash.contains_key(&h)
                            || base.find(&h).is_some_and(|(p, _)| !next.shadows(p));
                        if taken {
                            return Err(ApplyError::DuplicateSecret(id));
                        }
                        next.by_hash.insert(h, (pos, secret));
                        new_hashes.push(hash_bits(&h));
                    }
                    next.entries.push_back(version);
                    Slot::Present { pos, in_base }
                }
            };
            let present = |s: Option<Slot>| matches!(s, Some(Slot::Present { .. }));
            let gone = |s: Option<Slot>| matches!(s, Some(Slot::Removed { .. }));
            if in_base {
                next.removed =
                    next.removed + usize::from(gone(Some(slot))) - usize::from(gone(old));
            } else {
                next.added =
                    next.added + usize::from(present(Some(slot))) - usize::from(present(old));
            }
            next.by_id.insert(id, slot);
        }
        next.hash_filter = next.hash_filter.with(&new_hashes);
        Ok(next)
    }

    /// What changed from `older` (an ancestor of this overlay) to this one: each id whose
    /// slot differs, with its version now (`None`: removed).
    pub(super) fn since(&self, older: &Overlay) -> Vec<(KeyId, Option<Arc<Changed>>)> {
        self.by_id
            .iter()
            .filter(|(id, slot)| older.by_id.get(*id) != Some(*slot))
            .map(|(id, slot)| {
                let version = match slot {
                    Slot::Present { pos, .. } => Some(Arc::clone(&self.entries[*pos as usize])),
                    Slot::Removed { .. } => None,
                };
                (*id, version)
            })
            .collect()
    }
}

/// A one-hash Bloom filter of 2^18 bits (32 KiB), copied when something is added — one copy a
/// set of changes, a few microseconds — and never cleared: a removed member stays a false
/// positive until compaction starts a new overlay. With the overlay at its largest (16384
/// keys) about 6% of lookups of other keys pass it and search the tree.
#[derive(Debug, Clone, Default)]
struct Filter(Option<Arc<[u64]>>);

const FILTER_WORDS: usize = (1 << 18) / 64;

impl Filter {
    #[inline]
    fn may_hold(&self, x: u32) -> bool {
        let Some(words) = &self.0 else { return false };
        let bit = x as usize % (FILTER_WORDS * 64);
        words
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    fn with(&self, xs: &[u32]) -> Filter {
        if xs.is_empty() {
            return self.clone();
        }
        let mut words = match &self.0 {
            Some(w) => w.to_vec(),
            None => vec![0u64; FILTER_WORDS],
        };
        for x in xs {
            let bit = *x as usize % (FILTER_WORDS * 64);
            if let Some(w) = words.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
        }
        Filter(Some(words.into()))
    }
}

/// The bits of a hash the filter uses: its last four bytes (the base's directory uses the
/// first ones; a SHA-256 is uniform in each).
fn hash_bits(hash: &KeyHash) -> u32 {
    u32::from_le_bytes([hash[28], hash[29], hash[30], hash[31]])
}
