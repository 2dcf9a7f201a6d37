//! What only some keys have — a description, metadata labels, model patterns, edit and
//! rotation times, secrets in their grace period — packed for a million keys: every string
//! in one allocation, and keys with equal extras (the same labels, say) sharing one copy
//! while an index is built (`Interner`).

use crate::keys::record::KeyRecord;
use crate::time::Timestamp;
use std::collections::HashSet;
use std::sync::Arc;

/// A time that may be unset, in 8 bytes (`u64::MAX`, past `Timestamp::MAX`, for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MaybeTime(u64);

impl MaybeTime {
    fn new(t: Option<Timestamp>) -> MaybeTime {
        MaybeTime(t.map_or(u64::MAX, |t| t.0))
    }
    fn get(self) -> Option<Timestamp> {
        (self.0 != u64::MAX).then_some(Timestamp(self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyExtra {
    /// Each string as its length (4 bytes, little-endian) and its bytes: the description if
    /// there is one, each label's name and value, each model pattern.
    text: Box<[u8]>,
    has_description: bool,
    labels: u8,
    models: u32,
    rotated_at: MaybeTime,
    updated_at: MaybeTime,
    /// Secrets replaced by rotation: last four characters and end of grace.
    retired: Box<[([u8; 4], Timestamp)]>,
}

impl KeyExtra {
    /// The extras of `rec`; `None` when it has none.
    pub fn new(rec: &KeyRecord) -> Option<KeyExtra> {
        let mut text = Vec::new();
        let mut put = |s: &str| {
            text.extend_from_slice(&(s.len() as u32).to_le_bytes());
            text.extend_from_slice(s.as_bytes());
        };
        if let Some(d) = &rec.description {
            put(d);
        }
        for (k, v) in &rec.metadata {
            put(k);
            put(v);
        }
        for m in &rec.models {
            put(m);
        }
        let extra = KeyExtra {
            text: text.into(),
            has_description: rec.description.is_some(),
            labels: rec.metadata.len().min(usize::from(u8::MAX)) as u8,
            models: rec.models.len() as u32,
            rotated_at: MaybeTime::new(rec.rotated_at),
            updated_at: MaybeTime::new(rec.updated_at),
            retired: rec
                .previous
                .iter()
                .map(|p| (last4(&p.last4), p.valid_until))
                .collect(),
        };
        let empty = extra.text.is_empty()
            && !extra.has_description
            && extra.retired.is_empty()
            && extra.rotated_at.get().is_none()
            && extra.updated_at.get().is_none();
        (!empty).then_some(extra)
    }

    fn pieces(&self) -> impl Iterator<Item = &str> {
        let mut rest = &self.text[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let (piece, tail) = tail.split_at_checked(len)?;
            rest = tail;
            // Written from `&str`s, whole.
            Some(std::str::from_utf8(piece).unwrap_or(""))
        })
    }

    pub fn description(&self) -> Option<&str> {
        self.has_description.then(|| self.pieces().next()).flatten()
    }

    /// Labels, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut p = self.pieces().skip(usize::from(self.has_description));
        (0..self.labels).map_while(move |_| Some((p.next()?, p.next()?)))
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The model allowlist as written.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        let skip = usize::from(self.has_description) + 2 * usize::from(self.labels);
        self.pieces().skip(skip).take(self.models as usize)
    }

    pub fn rotated_at(&self) -> Option<Timestamp> {
        self.rotated_at.get()
    }

    pub fn updated_at(&self) -> Option<Timestamp> {
        self.updated_at.get()
    }

    /// Secrets replaced by rotation: last four characters and end of grace.
    pub fn retired(&self) -> impl Iterator<Item = (&str, Timestamp)> {
        self.retired
            .iter()
            .map(|(l, t)| (std::str::from_utf8(l).unwrap_or("????"), *t))
    }
}

/// A secret's last four characters, inline.
pub fn last4(s: &str) -> [u8; 4] {
    <[u8; 4]>::try_from(s.as_bytes()).unwrap_or(*b"????")
}

/// Hands out one shared copy of each distinct extra while an index is built.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Arc<KeyExtra>, ahash::RandomState>);

impl Interner {
    pub fn share(&mut self, extra: Arc<KeyExtra>) -> Arc<KeyExtra> {
        if let Some(same) = self.0.get(&*extra) {
            return Arc::clone(same);
        }
        self.0.insert(Arc::clone(&extra));
        extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::record::RetiredSecret;
    use std::collections::BTreeMap;

    #[test]
    fn packs_and_unpacks_every_field_and_shares_equal_ones() {
        assert_eq!(KeyExtra::new(&KeyRecord::default()), None);
        let rec = KeyRecord {
            description: Some("ünïcode and \"quotes\"".into()),
            metadata: BTreeMap::from([("a".into(), "".into()), ("team".into(), "search".into())]),
            models: vec!["llama-*".into(), "".into(), "qwen?".into()],
            rotated_at: Some(Timestamp(5)),
            previous: vec![RetiredSecret {
                sha256: String::new(),
                last4: "Ab12".into(),
                valid_until: Timestamp(9),
            }],
            ..KeyRecord::default()
        };
        let x = KeyExtra::new(&rec).unwrap();
        assert_eq!(x.description(), rec.description.as_deref());
        assert_eq!(
            x.labels().collect::<Vec<_>>(),
            [("a", ""), ("team", "search")]
        );
        assert_eq!((x.label("team"), x.label("x")), (Some("search"), None));
        assert_eq!(x.models().collect::<Vec<_>>(), ["llama-*", "", "qwen?"]);
        assert_eq!((x.rotated_at(), x.updated_at()), (Some(Timestamp(5)), None));
        assert_eq!(x.retired().collect::<Vec<_>>(), [("Ab12", Timestamp(9))]);
        let labels_only = KeyRecord {
            metadata: rec.metadata.clone(),
            ..KeyRecord::default()
        };
        let y = KeyExtra::new(&labels_only).unwrap();
        assert_eq!((y.description(), y.models().count()), (None, 0));
        let mut interner = Interner::default();
        let a = interner.share(Arc::new(y.clone()));
        let b = interner.share(Arc::new(y));
        assert!(Arc::ptr_eq(&a, &b), "equal extras share one copy");
    }
}
