//! A key-file reload that costs what changed: the file is read through the one reader, each
//! record's digest compared with the digest of the record its key was built from, and only
//! the records that differ — with the keys no longer in the file — applied to the overlay.
//! Unchanged records cost their parse and a digest; no entry is built for them. When more
//! changed than the overlay is meant to hold, or the file is one that only a whole load can
//! judge (an id twice, a secret two keys share), the index is rebuilt as a first load
//! builds it, and that load reports what is wrong.

use super::base::digest_text;
use super::overlay::{overlay_cap, KeyChange, Located, Slot};
use super::KeyIndex;
use crate::config::LimitDefaults;
use crate::keys::entry::KeyId;
use crate::keys::error::StoreError;
use crate::keys::file::{self, Raw};
use crate::keys::record::KeyRecord;
use crate::keys::source::Source;
use std::path::Path;

/// How a reload made its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// Indexed from scratch (first load, many changes, changed `[limits]`).
    Rebuilt,
    /// This many keys changed, were added or removed, and only they were applied.
    Applied { changes: usize },
    /// The file holds what the index holds: the same index serves on.
    Unchanged,
}

impl KeyIndex {
    /// Indexes key-file text, applying only what changed since `previous` where that is
    /// cheaper than a rebuild (see the module doc). `previous` lends its runtime state
    /// either way.
    pub fn reload(
        path: &Path,
        text: &str,
        limits: &LimitDefaults,
        previous: Option<&KeyIndex>,
    ) -> Result<(KeyIndex, Reloaded), StoreError> {
        KeyIndex::reload_from(Source::Text { path, text }, limits, previous)
    }

    /// [`KeyIndex::reload`] from a `Source`: the key file itself is read a line at a time.
    pub fn reload_from(
        source: Source<'_>,
        limits: &LimitDefaults,
        previous: Option<&KeyIndex>,
    ) -> Result<(KeyIndex, Reloaded), StoreError> {
        let rebuild = || {
            KeyIndex::load_from(source, limits, previous).map(|index| (index, Reloaded::Rebuilt))
        };
        let Some(prev) = previous.filter(|p| p.limits == *limits) else {
            return rebuild();
        };
        let Some(changes) = prev.diff(source)? else {
            return rebuild();
        };
        if changes.is_empty() {
            return Ok((prev.clone(), Reloaded::Unchanged));
        }
        let n = changes.len();
        match prev.apply(changes) {
            Ok(next) => Ok((next, Reloaded::Applied { changes: n })),
            Err(_) => rebuild(),
        }
    }

    /// The digest of the record the key `id` was built from, and its base position (`None`
    /// for a key the base lacks), looking at base position `*cursor` first (see
    /// `Base::position_from`). `None` for a key this index does not have.
    fn digest_of(&self, id: &KeyId, cursor: &mut usize) -> Option<(Option<u32>, u64)> {
        match self.base.position_from(id, cursor) {
            Some(p) => match self.overlay.locate(p, id) {
                Located::Base(p) => Some((Some(p), self.base.digests[p as usize])),
                Located::Overlay(v) => Some((Some(p), self.overlay.entries[v as usize].digest)),
                Located::Gone => None,
            },
            None => match self.overlay.by_id.get(id) {
                Some(Slot::Present { pos, .. }) => {
                    Some((None, self.overlay.entries[*pos as usize].digest))
                }
                _ => None,
            },
        }
    }

    /// The changes that make this index into the key file `text`; `None` when a rebuild is
    /// due instead (too many, or an id twice). A file the reader refuses is `Err`.
    fn diff(&self, source: Source<'_>) -> Result<Option<Vec<KeyChange>>, StoreError> {
        let d = source.read_with(|| Diff {
            index: self,
            cap: overlay_cap(self.base.entries.len()),
            seen: Bits::new(self.base.entries.len()),
            seen_added: ahash::AHashSet::new(),
            new_ids: ahash::AHashSet::new(),
            changes: Vec::new(),
            rebuild: false,
            cursor: 0,
        })?;
        let Diff {
            seen,
            seen_added,
            mut changes,
            rebuild,
            cap,
            ..
        } = d;
        if rebuild {
            return Ok(None);
        }
        // Keys no longer in the file.
        for p in seen.unset() {
            let id = self.base.entries[p as usize].id;
            if !matches!(self.overlay.locate(p, &id), Located::Gone) {
                changes.push(KeyChange::Remove(id));
            }
        }
        for (id, slot) in self.overlay.by_id.iter() {
            if matches!(slot, Slot::Present { in_base: false, .. }) && !seen_added.contains(id) {
                changes.push(KeyChange::Remove(*id));
            }
        }
        Ok((changes.len() <= cap).then_some(changes))
    }
}

/// A diff as the reader goes: which keys the file has, and the records that changed.
struct Diff<'a> {
    index: &'a KeyIndex,
    cap: usize,
    seen: Bits,
    seen_added: ahash::AHashSet<KeyId>,
    new_ids: ahash::AHashSet<KeyId>,
    changes: Vec<KeyChange>,
    /// Decided: a whole load follows, which reads (and judges) the file itself.
    rebuild: bool,
    cursor: usize,
}

impl Diff<'_> {
    /// Marks a key the file has; false for an id the file had already (then a whole load
    /// says where).
    fn mark(&mut self, id: KeyId, known: Option<(Option<u32>, u64)>) -> bool {
        let first = match known {
            Some((Some(p), _)) => self.seen.set(p),
            Some((None, _)) => self.seen_added.insert(id),
            None => self.new_ids.insert(id),
        };
        self.rebuild |= !first;
        first
    }
}

impl file::Visit for Diff<'_> {
    /// A record with the text its key was indexed from is unchanged: marked, not parsed.
    /// (The writer puts `id` first; a record whose text does not start so is parsed.)
    fn text(&mut self, text: &str) -> Raw {
        if self.rebuild {
            return Raw::Stop;
        }
        let known = text
            .strip_prefix(r#"{"id":""#)
            .and_then(|t| KeyId::new(t.split_once('"')?.0))
            .and_then(|id| Some((id, self.index.digest_of(&id, &mut self.cursor)?)));
        match known {
            Some((id, known)) if known.1 == digest_text(text) => {
                if self.mark(id, Some(known)) {
                    Raw::Skip
                } else {
                    Raw::Stop
                }
            }
            _ => Raw::Parse,
        }
    }

    fn record(&mut self, rec: KeyRecord, text: &str) {
        let Some(id) = KeyId::new(&rec.id) else {
            self.rebuild = true;
            return;
        };
        let known = self.index.digest_of(&id, &mut self.cursor);
        if self.mark(id, known) && known.is_none_or(|(_, d)| d != digest_text(text)) {
            self.changes.push(KeyChange::Put(rec));
            self.rebuild |= self.changes.len() > self.cap;
        }
    }
}

/// One bit per base position: which keys the file still has.
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Sets bit `i`; whether it was clear.
    fn set(&mut self, i: u32) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        match self.words.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    /// The clear bits, in order.
    fn unset(&self) -> impl Iterator<Item = u32> + '_ {
        let len = self.len as u32;
        self.words
            .iter()
            .enumerate()
            .filter(|(_, word)| **word != u64::MAX)
            .flat_map(|(w, word)| {
                (0..64u32)
                    .filter(move |b| word & (1 << b) == 0)
                    .map(move |b| w as u32 * 64 + b)
            })
            .take_while(move |i| *i < len)
    }
}
