//! Key lists at any size: the filters the management API's list and `keygate keys list`
//! share, and the page the API answers — chosen in one pass over the index with a heap of
//! at most `limit + 1` keys (O(n log limit)), never a copy or a sort of the key set.

use crate::keys::entry::{KeyEntry, KeyId};
use crate::keys::index::KeyIndex;
use crate::keys::record::{KeyRecord, Status};
use crate::time::Timestamp;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Which statuses a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statuses(u8);

impl Statuses {
    pub const ALL: Statuses = Statuses(0b1111);
    /// Every key but revoked ones (as OpenAI's key page: a revoked key is gone from it).
    pub const NOT_REVOKED: Statuses = Statuses(0b0111);

    fn bit(s: Status) -> u8 {
        match s {
            Status::Active => 1,
            Status::Disabled => 2,
            Status::Expired => 4,
            Status::Revoked => 8,
        }
    }

    pub fn contains(self, s: Status) -> bool {
        self.0 & Statuses::bit(s) != 0
    }

    /// `active`, `disabled`, `expired`, `revoked` or `all`, several separated by commas.
    pub fn parse(s: &str) -> Result<Statuses, String> {
        s.split(',').try_fold(Statuses(0), |acc, name| {
            let bits = match name.trim() {
                "active" => Statuses::bit(Status::Active),
                "disabled" => Statuses::bit(Status::Disabled),
                "expired" => Statuses::bit(Status::Expired),
                "revoked" => Statuses::bit(Status::Revoked),
                "all" => Statuses::ALL.0,
                other => {
                    return Err(format!(
                        "`{}` is not a status: use active, disabled, expired, revoked or all",
                        crate::text::escape(other)
                    ))
                }
            };
            Ok(Statuses(acc.0 | bits))
        })
    }
}

/// A `meta` filter, `name:value` (API) or `name=value` (CLI): the key has that label with
/// that value.
pub fn parse_label(s: &str, separator: char) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(separator)
        .ok_or_else(|| format!("must be `name{separator}value`"))?;
    if !crate::keys::annotations::is_label_name(k) {
        return Err(format!(
            "has a label name `{}` that is not 1–63 of a-z, 0-9, `_`, `.`, `-`",
            crate::text::escape(k)
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// What a key must be to be listed. `Filter::default()` lists every key but revoked ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub name_prefix: Option<String>,
    pub statuses: Statuses,
    /// Labels the key must all have, with these values.
    pub meta: Vec<(String, String)>,
    /// Expires after now and at most this long from now.
    pub expiring_within: Option<Duration>,
    /// Last used before this time, or never used.
    pub last_used_before: Option<Timestamp>,
    /// Last used at or after this time.
    pub last_used_after: Option<Timestamp>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            name_prefix: None,
            statuses: Statuses::NOT_REVOKED,
            meta: Vec::new(),
            expiring_within: None,
            last_used_before: None,
            last_used_after: None,
        }
    }
}

/// What a filter reads of a key, from an index entry or a record.
pub trait Listed {
    fn name(&self) -> &str;
    fn status(&self, now: Timestamp) -> Status;
    fn expires_at(&self) -> Option<Timestamp>;
    fn label(&self, name: &str) -> Option<&str>;
}

impl Listed for KeyEntry {
    fn name(&self) -> &str {
        &self.name
    }
    fn status(&self, now: Timestamp) -> Status {
        KeyEntry::status(self, now)
    }
    fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }
    fn label(&self, name: &str) -> Option<&str> {
        KeyEntry::label(self, name)
    }
}

impl Listed for KeyRecord {
    fn name(&self) -> &str {
        &self.name
    }
    fn status(&self, now: Timestamp) -> Status {
        KeyRecord::status(self, now)
    }
    fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }
    fn label(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).map(String::as_str)
    }
}

impl Filter {
    /// Whether `key` is listed; `last_used` is asked only when a last-used filter is set.
    pub fn matches(
        &self,
        key: &impl Listed,
        now: Timestamp,
        last_used: impl FnOnce() -> Option<Timestamp>,
    ) -> bool {
        if !self.statuses.contains(key.status(now)) {
            return false;
        }
        if let Some(p) = &self.name_prefix {
            if !key.name().starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(d) = self.expiring_within {
            if !key
                .expires_at()
                .is_some_and(|e| e > now && e <= now.plus(d))
            {
                return false;
            }
        }
        if !self
            .meta
            .iter()
            .all(|(k, v)| key.label(k) == Some(v.as_str()))
        {
            return false;
        }
        if self.last_used_before.is_none() && self.last_used_after.is_none() {
            return true;
        }
        let used = last_used();
        self.last_used_before
            .is_none_or(|t| used.is_none_or(|u| u < t))
            && self
                .last_used_after
                .is_none_or(|t| used.is_some_and(|u| u >= t))
    }
}

/// The field a list is sorted by; ties are broken by key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    CreatedAt,
    Name,
    /// Never used sorts as the oldest.
    LastUsedAt,
    /// Never expiring sorts as the latest.
    ExpiresAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// One page of a list: what to show, and from where.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: Filter,
    pub sort: SortBy,
    pub order: Order,
    /// At most this many keys.
    pub limit: usize,
    /// The keys after this one in the list's order (whether or not it matches the filter).
    pub after: Option<KeyId>,
}

/// A key's place in a sort: the field, then the id. Compared a million times a page, so
/// cheaply: no name unless sorting by name, the id as one integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place<'a> {
    time: u64,
    name: Option<&'a str>,
    id: u128,
}

/// The page `query` asks for: its keys in order, and whether more follow.
#[derive(Debug)]
pub struct Page<'a> {
    pub keys: Vec<&'a KeyEntry>,
    pub has_more: bool,
}

/// The `after` key of a query is not in the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("there is no key `{0}` to list after")]
pub struct UnknownAfter(pub KeyId);

/// One pass over `index`: the keys `query` selects, at most `limit + 1` held at a time.
pub fn page<'a>(
    index: &'a KeyIndex,
    query: &ListQuery,
    now: Timestamp,
) -> Result<Page<'a>, UnknownAfter> {
    let last_used = |e: &KeyEntry| index.last_used(e);
    let place = |e: &'a KeyEntry| Place {
        time: match query.sort {
            SortBy::CreatedAt => e.created_at.0,
            SortBy::Name => 0,
            SortBy::LastUsedAt => last_used(e).map_or(0, |t| t.0),
            SortBy::ExpiresAt => e.expires_at.map_or(u64::MAX, |t| t.0),
        },
        name: (query.sort == SortBy::Name).then_some(&*e.name),
        id: e.id.sort_key(),
    };
    let after = match query.after {
        None => None,
        Some(id) => Some(place(index.entry(&id).ok_or(UnknownAfter(id))?)),
    };
    let listed = index
        .entries()
        .filter(|e| query.filter.matches(*e, now, || last_used(e)))
        .map(|e| (place(e), e));
    let (keys, has_more) = match query.order {
        Order::Asc => top(listed, after, query.limit),
        Order::Desc => top(
            listed.map(|(p, e)| (Reverse(p), e)),
            after.map(Reverse),
            query.limit,
        ),
    };
    Ok(Page { keys, has_more })
}

/// The `limit` smallest items by key, of those whose key is above `after`, smallest first,
/// and whether there were more. Holds at most `limit + 1` items.
fn top<K: Ord, T>(
    items: impl Iterator<Item = (K, T)>,
    after: Option<K>,
    limit: usize,
) -> (Vec<T>, bool) {
    /// Ordered by its key alone.
    struct Item<K, T>(K, T);
    impl<K: Ord, T> PartialEq for Item<K, T> {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl<K: Ord, T> Eq for Item<K, T> {}
    impl<K: Ord, T> PartialOrd for Item<K, T> {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl<K: Ord, T> Ord for Item<K, T> {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.cmp(&other.0)
        }
    }
    let keep = limit + 1;
    // A max-heap: its top is the item that would leave the page first.
    let mut heap: BinaryHeap<Item<K, T>> = BinaryHeap::with_capacity(keep);
    for (k, t) in items {
        if after.as_ref().is_some_and(|a| k <= *a) {
            continue;
        }
        if heap.len() < keep {
            heap.push(Item(k, t));
        } else if let Some(mut worst) = heap.peek_mut() {
            if k < worst.0 {
                // Replaced in place: one sift down instead of a pop and a push.
                *worst = Item(k, t);
            }
        }
    }
    let mut items: Vec<T> = heap.into_sorted_vec().into_iter().map(|i| i.1).collect();
    let has_more = items.len() > limit;
    items.truncate(limit);
    (items, has_more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_smallest_after_the_cursor_in_order() {
        let items = [5, 3, 9, 1, 7, 3, 8].map(|k| (k, k * 10));
        assert_eq!(top(items.into_iter(), None, 3), (vec![10, 30, 30], true));
        assert_eq!(top(items.into_iter(), Some(3), 3), (vec![50, 70, 80], true));
        assert_eq!(top(items.into_iter(), Some(7), 3), (vec![80, 90], false));
        assert_eq!(top(items.into_iter(), Some(9), 3), (vec![], false));
        assert!(!top(items.into_iter(), None, 7).1);
    }

    #[test]
    fn statuses_and_labels_parse_or_say_why_not() {
        assert_eq!(Statuses::parse("all"), Ok(Statuses::ALL));
        let s = Statuses::parse("active,revoked").unwrap();
        assert!(s.contains(Status::Active) && s.contains(Status::Revoked));
        assert!(!s.contains(Status::Disabled));
        assert!(Statuses::parse("gone").unwrap_err().contains("`gone`"));
        assert!(Statuses::parse("").is_err());
        assert_eq!(
            parse_label("team:search:x", ':'),
            Ok(("team".into(), "search:x".into()))
        );
        assert!(parse_label("team", ':').is_err());
        assert!(parse_label("Team:x", ':').is_err());
    }
}
