//! Compaction: a base with its overlay folded in — what indexing the key set they describe
//! from scratch would build, made from what is already sorted: linear merges, no parse, no
//! sort. Replaced keys keep their place; added keys come last, by id.

use super::base::Base;
use super::overlay::{Located, Overlay, Slot};
use crate::keys::entry::Secret;
use crate::keys::file::Secrets;

/// `base` with `overlay` folded in.
pub(super) fn merge(base: &Base, overlay: &Overlay) -> Base {
    let n = base.entries.len();
    // Where each old position and each overlay version goes (u32::MAX: nowhere).
    let mut moved = vec![u32::MAX; n];
    let mut from_overlay = vec![u32::MAX; overlay.entries.len()];
    let mut entries = Vec::with_capacity(n + overlay.added);
    let mut digests = Vec::with_capacity(n + overlay.added);
    for (p, e) in base.entries.iter().enumerate() {
        match overlay.locate(p as u32, &e.id) {
            Located::Base(_) => {
                moved[p] = entries.len() as u32;
                entries.push(e.clone());
                digests.push(base.digests[p]);
            }
            Located::Overlay(op) => {
                let changed = &overlay.entries[op as usize];
                from_overlay[op as usize] = entries.len() as u32;
                entries.push(changed.entry.clone());
                digests.push(changed.digest);
            }
            Located::Gone => {}
        }
    }
    for slot in overlay.by_id.values() {
        if let Slot::Present {
            pos,
            in_base: false,
        } = *slot
        {
            let changed = &overlay.entries[pos as usize];
            from_overlay[pos as usize] = entries.len() as u32;
            entries.push(changed.entry.clone());
            digests.push(changed.digest);
        }
    }
    let kept = |p: u32| moved.get(p as usize).copied().filter(|q| *q != u32::MAX);
    let added = |op: u32| {
        from_overlay
            .get(op as usize)
            .copied()
            .filter(|q| *q != u32::MAX)
    };
    // Secrets: the base's, of keys kept, and the overlay's, of versions kept; both
    // already sorted.
    let current = merge_sorted(
        base.current
            .iter()
            .filter_map(|(h, p)| Some((*h, kept(*p)?))),
        overlay.by_hash.iter().filter_map(|(h, (op, s))| match s {
            Secret::Current => Some((*h, added(*op)?)),
            Secret::Retired { .. } => None,
        }),
        |a, b| a.0 <= b.0,
    );
    let retired = merge_sorted(
        base.retired
            .iter()
            .filter_map(|(h, (p, until))| Some((*h, (kept(*p)?, *until)))),
        overlay.by_hash.iter().filter_map(|(h, (op, s))| match s {
            Secret::Retired { valid_until } => Some((*h, (added(*op)?, *valid_until))),
            Secret::Current => None,
        }),
        |a, b| a.0 <= b.0,
    );
    let by_id = merge_sorted(
        base.by_id.iter().filter_map(|p| match kept(*p) {
            Some(q) => Some(q),
            // A replaced key keeps its place in id order.
            None => {
                let id = &base.entries[*p as usize].id;
                match overlay.by_id.get(id) {
                    Some(Slot::Present { pos, .. }) => added(*pos),
                    _ => None,
                }
            }
        }),
        overlay.by_id.values().filter_map(|s| match *s {
            Slot::Present {
                pos,
                in_base: false,
            } => added(pos),
            _ => None,
        }),
        |a, b| entries[*a as usize].id <= entries[*b as usize].id,
    );
    Base::new(
        entries,
        digests,
        Secrets {
            current,
            retired,
            by_id,
        },
    )
}

/// Two sorted sequences as one; `first(a, b)`: `a` goes before `b`.
fn merge_sorted<T>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
    first: impl Fn(&T, &T) -> bool,
) -> Vec<T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let mut out = Vec::with_capacity(a.size_hint().0 + b.size_hint().0);
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => first(x, y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}
