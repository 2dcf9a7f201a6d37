//! The in-memory key index: SHA-256 → key, built off the request path and published whole
//! (see `gateway::Live`), so a request sees the old index or the new one, never a mix.
//!
//! Sized for a million keys, and for a key set that changes a key at a time. A *base* holds
//! a whole key file: the hashes in one sorted array with a directory on their leading bits
//! (36 bytes a key and 2–4 of directory, about one cache line a lookup), each key's facts in
//! one flat record. An *overlay* of persistent maps (`overlay.rs`) holds the keys changed since:
//! applying a change builds a new overlay in O(log n) and leaves the base as it is, so a
//! revoke is live in microseconds at any size. A lookup asks the overlay first; a base hit
//! on a key the overlay replaced or removed is no hit. Once the overlay holds
//! `overlay_cap` versions, the gateway folds it into a new base on a thread of its own
//! (`compact`, then `rebase` for the changes applied meanwhile). A key-file reload applies
//! only the records whose digest changed (`reload.rs`), unless so many did that a rebuild
//! is as cheap.
//!
//! Nothing a key does at runtime — its rate cell, in-flight count, token bucket and usage
//! counters (`KeyState`) — is allocated until the key is first used. That state lives in a
//! registry keyed by key id that every index of this gateway shares, so neither a change
//! nor a rebuild resets limits or loses usage, and old and new index agree on one state per
//! key even while requests on both are running.

mod base;
mod compact;
mod overlay;
pub mod reload;

pub use overlay::{ApplyError, KeyChange};

use crate::config::LimitDefaults;
use crate::keys::entry::{KeyEntry, KeyId, Secret};
use crate::keys::error::StoreError;
use crate::keys::source::Source;
use crate::keys::state::{Ended, KeyState};
use crate::keys::token::KeyHash;
use crate::keys::usage::UsageSnapshot;
use crate::time::Timestamp;
use base::{Base, Builder};
use overlay::{overlay_cap, Changed, Overlay, Slot};
use std::sync::Arc;

/// Every used key's runtime state, shared by successive indexes.
type Registry = dashmap::DashMap<KeyId, Arc<KeyState>, ahash::RandomState>;

/// A key set: a base and the changes applied to it since it was built. Cloning one is cheap
/// (the base is shared, the overlay's maps are persistent).
#[derive(Debug, Clone)]
pub struct KeyIndex {
    base: Arc<Base>,
    overlay: Overlay,
    states: Arc<Registry>,
    /// The `[limits]` its entries' effective limits were worked out with.
    limits: LimitDefaults,
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
        self.index.entry_at(self.pos)
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
        let entry = self.index.entry_at(self.pos);
        entry
            .state
            .get_or_init(|| self.index.states.entry(entry.id).or_default().clone())
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
        KeyIndex::load_from(Source::Text { path, text }, limits, previous)
    }

    /// [`KeyIndex::load`] from a `Source`: the key file itself is read a line at a time.
    pub fn load_from(
        source: Source<'_>,
        limits: &LimitDefaults,
        previous: Option<&KeyIndex>,
    ) -> Result<KeyIndex, StoreError> {
        let records = base::records_at_most(source.len_hint());
        let builder = source.read_with(|| Builder::new(limits, records))?;
        let base = builder.finish().map_err(|problem| StoreError::Invalid {
            path: source.path().to_path_buf(),
            problem,
        })?;
        Ok(KeyIndex::from_base(base, limits, previous))
    }

    /// An index of no keys (a key store's start, before its first change).
    pub fn empty(limits: &LimitDefaults) -> KeyIndex {
        KeyIndex::from_base(Base::default(), limits, None)
    }

    fn from_base(base: Base, limits: &LimitDefaults, previous: Option<&KeyIndex>) -> KeyIndex {
        let states = previous.map_or_else(Default::default, |p| Arc::clone(&p.states));
        let index = KeyIndex {
            base: Arc::new(base),
            overlay: Overlay::default(),
            states,
            limits: *limits,
        };
        // End the running requests of keys revoked or gone, and forget the state of keys
        // that left the file. (Only keys that have been used have state: this visits those.)
        let now = Timestamp::now();
        index.states.retain(|id, state| match index.position(id) {
            None => {
                state.revocation.revoke(Ended::Revoked);
                false
            }
            Some(pos) => {
                let entry = index.entry_at(pos);
                match entry.ended(now) {
                    Some(why) => state.revocation.revoke(why),
                    None => state.revocation.restore(),
                }
                let _ = entry.state.set(Arc::clone(state));
                true
            }
        });
        index
    }

    #[inline]
    fn entry_at(&self, pos: u32) -> &KeyEntry {
        match pos.checked_sub(self.base.len()) {
            None => &self.base.entries[pos as usize],
            Some(version) => &self.overlay.entries[version as usize].entry,
        }
    }

    #[inline]
    pub fn lookup(self: &Arc<Self>, hash: &KeyHash) -> Option<(KeyRef, Secret)> {
        let (pos, secret) = match self.overlay.find(hash) {
            Some((version, secret)) => (self.base.len() + version, secret),
            None => {
                let (pos, secret) = self.base.find(hash)?;
                // A secret the key had before a change the overlay holds.
                if self.overlay.shadows(pos) {
                    return None;
                }
                (pos, secret)
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

    fn position(&self, id: &KeyId) -> Option<u32> {
        match self.overlay.by_id.get(id) {
            Some(Slot::Present { pos, .. }) => Some(self.base.len() + pos),
            Some(Slot::Removed { .. }) => None,
            None => self.base.position(id),
        }
    }

    pub fn by_id(self: &Arc<Self>, id: &str) -> Option<KeyRef> {
        Some(KeyRef {
            index: Arc::clone(self),
            pos: self.position(&KeyId::new(id)?)?,
        })
    }

    /// The key `id` as it is in this index.
    pub fn entry(&self, id: &str) -> Option<&KeyEntry> {
        Some(self.entry_at(self.position(&KeyId::new(id)?)?))
    }

    /// The key's runtime state if it has been used.
    pub fn state_of(&self, id: &str) -> Option<Arc<KeyState>> {
        let id = KeyId::new(id)?;
        self.states.get(&id).map(|s| Arc::clone(&s))
    }

    /// The runtime state of `id`, created if the key has none yet.
    pub fn state_for(&self, id: &str) -> Option<Arc<KeyState>> {
        let id = KeyId::new(id)?;
        let pos = self.position(&id)?;
        let state = Arc::clone(&self.states.entry(id).or_default());
        // As `KeyRef::state` does: the entry holds the state it has (see `last_used`).
        Some(Arc::clone(self.entry_at(pos).state.get_or_init(|| state)))
    }

    /// A key's usage as the key list shows it: from the state its entry holds, else from
    /// the registry (a key first used through an older index), else none.
    pub fn usage(&self, entry: &KeyEntry) -> Option<UsageSnapshot> {
        match entry.state.get() {
            Some(state) => Some(state.usage.snapshot()),
            None => self.states.get(&entry.id).map(|s| s.usage.snapshot()),
        }
    }

    /// When the key was last used, as its entry's state says — one load, no registry lookup,
    /// for sorting and filtering a million keys. Every way a state is made (a request, a
    /// restore, a rebuild, a change applied) gives the entry it, but one: a key first used
    /// through the index before this one, while this one was being swapped in, has it only
    /// once it is used through this one.
    pub fn last_used(&self, entry: &KeyEntry) -> Option<Timestamp> {
        let at = entry
            .state
            .get()?
            .usage
            .last_used
            .load(std::sync::atomic::Ordering::Relaxed);
        (at > 0).then_some(Timestamp(at))
    }

    /// Every key that has runtime state (has been used since start or restore).
    pub fn used(&self) -> Vec<(KeyId, Arc<KeyState>)> {
        self.states
            .iter()
            .map(|r| (*r.key(), Arc::clone(r.value())))
            .collect()
    }

    pub fn len(&self) -> usize {
        (self.base.entries.len() as isize + self.overlay.net()).max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key, once: the base's in key-file order (a changed key in its place), then
    /// keys added since the base was built, by id. One pass, no copy of the key set.
    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        let n = self.base.len();
        let mut shadowed = self.overlay.shadowed().peekable();
        let base = self
            .base
            .entries
            .iter()
            .enumerate()
            .filter_map(move |(p, e)| {
                if shadowed.peek() != Some(&(p as u32)) {
                    return Some(e);
                }
                shadowed.next();
                match self.overlay.by_id.get(&e.id) {
                    Some(Slot::Present { pos, .. }) => Some(self.entry_at(n + pos)),
                    _ => None,
                }
            });
        let added = self
            .overlay
            .by_id
            .values()
            .filter_map(move |slot| match slot {
                Slot::Present {
                    pos,
                    in_base: false,
                } => Some(self.entry_at(n + pos)),
                _ => None,
            });
        base.chain(added)
    }

    /// This index with `changes` applied — all or nothing, checked as a key file is (each
    /// record by the one validator; no id twice in `changes`, no secret held by two keys).
    /// The base is shared, not copied: O(changes × log n). Running requests of keys
    /// revoked, disabled or removed are ended; a key enabled again runs again.
    pub fn apply(&self, changes: Vec<KeyChange>) -> Result<KeyIndex, ApplyError> {
        let versions = changes
            .into_iter()
            .map(|c| match c {
                KeyChange::Put(rec) => {
                    let id = KeyId::new(&rec.id)
                        .ok_or_else(|| ApplyError::Invalid("a key id is invalid".into()))?;
                    Ok((id, Some(Arc::new(Changed::new(&rec, &self.limits)?))))
                }
                KeyChange::Remove(id) => Ok((id, None)),
            })
            .collect::<Result<Vec<_>, ApplyError>>()?;
        let touched: Vec<KeyId> = versions.iter().map(|(id, _)| *id).collect();
        let overlay = self.overlay.apply(&self.base, versions)?;
        let next = KeyIndex {
            overlay,
            ..self.clone()
        };
        next.wake(&touched);
        Ok(next)
    }

    /// Brings the runtime state of the keys `ids` in line with this index: requests of a
    /// key revoked, disabled or gone end, a key enabled again runs again.
    fn wake(&self, ids: &[KeyId]) {
        let now = Timestamp::now();
        for id in ids {
            match self.position(id) {
                None => {
                    if let Some((_, state)) = self.states.remove(id) {
                        state.revocation.revoke(Ended::Revoked);
                    }
                }
                Some(pos) => {
                    let Some(state) = self.states.get(id).map(|s| Arc::clone(&s)) else {
                        continue;
                    };
                    let entry = self.entry_at(pos);
                    match entry.ended(now) {
                        Some(why) => state.revocation.revoke(why),
                        None => state.revocation.restore(),
                    }
                    let _ = entry.state.set(state);
                }
            }
        }
    }

    /// Whether the overlay has grown enough to fold into a new base (`compact`).
    pub fn wants_compaction(&self) -> bool {
        self.overlay.versions() >= overlay_cap(self.base.entries.len())
    }

    /// Key versions in the overlay (superseded ones included).
    pub fn overlay_len(&self) -> usize {
        self.overlay.versions()
    }

    /// The same key set with the overlay folded into a new base. As costly as indexing the
    /// key set less the parse and the sorts: call it off the request path.
    pub fn compact(&self) -> KeyIndex {
        if self.overlay.is_empty() {
            return self.clone();
        }
        KeyIndex {
            base: Arc::new(compact::merge(&self.base, &self.overlay)),
            overlay: Overlay::default(),
            ..self.clone()
        }
    }

    /// This compaction of `from`, with the changes applied to `from` since — which made
    /// `now` — applied to it too. `None` when `now` does not descend from `from` by changes
    /// alone (it was rebuilt meanwhile): the compaction is then of no use.
    pub fn rebase(&self, from: &KeyIndex, now: &KeyIndex) -> Option<KeyIndex> {
        if !Arc::ptr_eq(&from.base, &now.base) || from.limits != now.limits {
            return None;
        }
        let changes = now
            .overlay
            .since(&from.overlay)
            .into_iter()
            // A key added and removed again since: nothing to do.
            .filter(|(id, version)| version.is_some() || self.position(id).is_some())
            .collect();
        let overlay = self.overlay.apply(&self.base, changes).ok()?;
        Some(KeyIndex {
            overlay,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod overlay_tests;

#[cfg(test)]
mod overlay_props;
