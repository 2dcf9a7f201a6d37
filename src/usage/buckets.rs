//! File mode's usage store, in memory: hourly buckets per key and model, and each key's
//! quota counts for the current UTC day and month. The flusher adds to it every second, the
//! state file (`ops::usage_state`) saves it every 10 s and at shutdown in the `Saved` form, and
//! queries and `keygate usage` read it.

use crate::keys::entry::KeyId;
use crate::keys::usage::{Counter, Counts};
use crate::limit::quota::Used;
use crate::time::Timestamp;
use crate::usage::window::{hour_label, hour_of, Window};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

/// One hour's buckets: per key, per model.
type Hour = HashMap<KeyId, HashMap<Arc<str>, Counts>>;

#[derive(Debug, Default)]
pub struct Buckets {
    hours: BTreeMap<u32, Hour>,
    quota: BTreeMap<Window, HashMap<KeyId, Used>>,
    /// Model names, stored once.
    models: HashSet<Arc<str>>,
}

impl Buckets {
    fn model(&mut self, name: &str) -> Arc<str> {
        if let Some(m) = self.models.get(name) {
            return Arc::clone(m);
        }
        let m: Arc<str> = Arc::from(name);
        self.models.insert(Arc::clone(&m));
        m
    }

    /// Adds `c` to the bucket of (`hour`, `key`, `model`).
    pub fn add(&mut self, hour: u32, key: KeyId, model: &str, c: &Counts) {
        if c.is_zero() {
            return;
        }
        let model = self.model(model);
        self.hours
            .entry(hour)
            .or_default()
            .entry(key)
            .or_default()
            .entry(model)
            .or_default()
            .add(c);
    }

    /// Adds to a key's quota count in window `w`.
    pub fn add_quota(&mut self, w: Window, key: KeyId, u: Used) {
        if u == Used::default() {
            return;
        }
        let e = self.quota.entry(w).or_default().entry(key).or_default();
        e.requests = e.requests.saturating_add(u.requests);
        e.tokens = e.tokens.saturating_add(u.tokens);
    }

    /// A key's quota count in window `w`.
    pub fn quota(&self, w: Window, key: &KeyId) -> Used {
        self.quota
            .get(&w)
            .and_then(|m| m.get(key))
            .copied()
            .unwrap_or_default()
    }

    /// Drops the hours before `oldest` and the quota windows other than `keep`. Returns
    /// whether anything was dropped.
    pub fn prune(&mut self, oldest: u32, keep: [Window; 2]) -> bool {
        let before = self.hours.len() + self.quota.len();
        self.hours = self.hours.split_off(&oldest);
        self.quota.retain(|w, _| keep.contains(w));
        let dropped = self.hours.len() + self.quota.len() != before;
        if dropped {
            let used: HashSet<&Arc<str>> = self
                .hours
                .values()
                .flat_map(|h| h.values().flat_map(|m| m.keys()))
                .collect();
            let keep: HashSet<Arc<str>> = used.into_iter().cloned().collect();
            self.models = keep;
        }
        dropped
    }

    /// Every bucket of the hours in `hours`.
    pub fn rows(&self, hours: Range<u32>, mut f: impl FnMut(u32, KeyId, &str, &Counts)) {
        for (h, keys) in self.hours.range(hours) {
            for (k, models) in keys {
                for (m, c) in models {
                    f(*h, *k, m, c);
                }
            }
        }
    }

    /// The state file's form.
    pub fn saved(&self) -> Saved {
        let mut hours = BTreeMap::new();
        for (h, keys) in &self.hours {
            let mut by_key = BTreeMap::new();
            for (k, models) in keys {
                let by_model: BTreeMap<String, Vec<u64>> = models
                    .iter()
                    .map(|(m, c)| {
                        let mut a = c.to_array().to_vec();
                        while a.last() == Some(&0) {
                            a.pop();
                        }
                        (m.to_string(), a)
                    })
                    .collect();
                by_key.insert(k.to_string(), by_model);
            }
            hours.insert(hour_label(*h), by_key);
        }
        let quota = self
            .quota
            .iter()
            .map(|(w, keys)| {
                let keys = keys
                    .iter()
                    .map(|(k, u)| {
                        let q = SavedQuota {
                            requests: u.requests,
                            tokens: u.tokens,
                        };
                        (k.to_string(), q)
                    })
                    .collect();
                (w.label(), keys)
            })
            .collect();
        Saved {
            counters: Counter::ALL.iter().map(|c| c.name().to_string()).collect(),
            hours,
            quota,
        }
    }

    /// Adds what a state file saved. Entries it cannot read (a hand-edited hour, key id or
    /// window) are skipped and counted in the result.
    pub fn merge(&mut self, s: &Saved) -> usize {
        let mut skipped = 0;
        // Counters by name, so a file with more, fewer or reordered counters reads right.
        let order: Vec<Option<Counter>> = if s.counters.is_empty() {
            Counter::ALL.iter().copied().map(Some).collect()
        } else {
            s.counters.iter().map(|n| Counter::from_name(n)).collect()
        };
        for (label, keys) in &s.hours {
            let Some(hour) = Timestamp::parse(label)
                .ok()
                .filter(|t| t.0 % 3600 == 0)
                .map(hour_of)
            else {
                skipped += 1;
                continue;
            };
            for (k, models) in keys {
                let Some(id) = KeyId::new(k) else {
                    skipped += 1;
                    continue;
                };
                for (m, values) in models {
                    let mut a = [0u64; 8];
                    for (slot, v) in order.iter().zip(values) {
                        if let Some(c) = slot {
                            a[*c as usize] = *v;
                        }
                    }
                    self.add(hour, id, m, &Counts::from_array(a));
                }
            }
        }
        for (label, keys) in &s.quota {
            let Some(w) = Window::parse(label) else {
                skipped += 1;
                continue;
            };
            for (k, q) in keys {
                match KeyId::new(k) {
                    Some(id) => self.add_quota(
                        w,
                        id,
                        Used {
                            requests: q.requests,
                            tokens: q.tokens,
                        },
                    ),
                    None => skipped += 1,
                }
            }
        }
        skipped
    }
}

/// The buckets as the state file holds them: the counters named once (`counters`), each
/// bucket an array of their values in that order (trailing zeros left out), by hour (RFC
/// 3339), key id and model; quota counts by window (`2026-11-30`, `2026-11`) and key id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hours: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<u64>>>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota: BTreeMap<String, BTreeMap<String, SavedQuota>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedQuota {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::window::{day_of, month_of};

    #[test]
    fn saved_and_merged_back_prune_by_hour() {
        let t = Timestamp::parse("2026-11-30T12:34:00Z").unwrap();
        let h = hour_of(t);
        let (a, b) = (
            KeyId::new("key_aaaaaaaaaaaaaaaa").unwrap(),
            KeyId::new("key_bbbbbbbbbbbbbbbb").unwrap(),
        );
        let c = Counts {
            requests: 2,
            prompt_tokens: 5,
            ..Default::default()
        };
        let mut x = Buckets::default();
        x.add(h, a, "m1", &c);
        x.add(h, a, "m1", &c);
        x.add(h - 5, b, "", &c);
        let day = Window::Day(day_of(t));
        let month = Window::Month(month_of(t));
        x.add_quota(
            day,
            a,
            Used {
                requests: 3,
                tokens: 9,
            },
        );
        let text = serde_json::to_string(&x.saved()).unwrap();
        assert!(
            text.contains(r#""2026-11-30T12:00:00Z":{"key_aaaaaaaaaaaaaaaa":{"m1":[4,10]}}"#),
            "{text}"
        );
        let mut y = Buckets::default();
        assert_eq!(y.merge(&serde_json::from_str(&text).unwrap()), 0);
        let mut rows = Vec::new();
        y.rows(h - 10..h + 1, |h, k, m, c| {
            rows.push((h, k, m.to_string(), *c))
        });
        rows.sort_by_key(|r| r.0);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].3.requests, 4);
        assert_eq!(rows[0].2, "");
        assert_eq!(y.quota(day, &a).tokens, 9);
        assert!(y.prune(h - 2, [day, month]));
        let mut n = 0;
        y.rows(0..u32::MAX, |_, _, _, _| n += 1);
        assert_eq!(n, 1, "the hour before the retention is gone");
        assert_eq!(y.quota(day, &a).requests, 3, "the current windows stay");
        assert!(y.prune(h - 2, [Window::Day(day_of(t) + 1), month]));
        assert_eq!(
            y.quota(day, &a).requests,
            0,
            "yesterday's quota count is dropped"
        );
    }
}
