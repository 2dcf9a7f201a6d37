//! The index's base: the sorted arrays a whole key file is indexed into, built in one
//! streaming pass of the key-file reader, and rebuilt from an older base and its overlay when
//! the overlay has grown (compaction) without reading the file again.

use crate::config::LimitDefaults;
use crate::keys::entry::{entry, KeyEntry, KeyId, Secret};
use crate::keys::extra::Interner;
use crate::keys::file::{Secrets, Uniqueness};
use crate::keys::record::KeyRecord;
use crate::keys::token::KeyHash;
use crate::time::Timestamp;

/// A whole key set, immutable once built.
#[derive(Debug, Default)]
pub(super) struct Base {
    /// Current secrets, sorted, each beside where its key is: a lookup reads one array,
    /// the position in the same cache line as the hash it matched (at 1M keys a second
    /// array cost a lookup one more cache and TLB miss).
    pub(super) current: Vec<(KeyHash, u32)>,
    /// `dir[j]..dir[j + 1]`: where hashes whose top `dir_bits` bits are `j` sit.
    dir: Vec<u32>,
    dir_bits: u32,
    /// In key-file order.
    pub(super) entries: Vec<KeyEntry>,
    /// `digests[p]`: the digest of the record `entries[p]` was built from (`super::digest`).
    pub(super) digests: Vec<u64>,
    /// Secrets replaced by rotation and still in their grace period (few), sorted, each
    /// with its key's position and the end of its grace.
    pub(super) retired: Vec<(KeyHash, (u32, Timestamp))>,
    /// Positions sorted by key id.
    pub(super) by_id: Vec<u32>,
}

/// How many leading hash bits the directory uses: one or two keys a bucket (a 4-byte
/// directory entry per one or two keys), so that a lookup reads about one cache line of the
/// array after the directory's. With about 8 a bucket (a quarter of the directory) the search
/// read three to five lines: at 1M keys, more memory and TLB misses than the larger directory
/// costs (`cargo bench --bench keycheck`).
fn dir_bits(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()).saturating_sub(1).min(24)
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
/// The search before it (directory bucket, then `partition_point`; in the overlay, its
/// tree's descent) compares in variable time, which is safe: what it compares are SHA-256
/// digests, and a caller chooses only the preimage. Its timing can tell at most how the
/// digest of a guess orders against stored digests, and that says nothing about any key's
/// text; a guess only gets in by hashing to a stored digest exactly, which no ordering
/// information helps to aim at. The one comparison that decides "this is the key" is the one
/// kept free of data-dependent timing.
pub(super) fn ct_position<T>(sorted: &[(KeyHash, T)], hash: &KeyHash) -> Option<usize> {
    // The leading 8 bytes first, as one number (the same order as the bytes'): digests are
    // uniform, so that decides all but equal ones without a call to `memcmp`.
    let lead = leading(hash);
    let i = sorted.partition_point(|(d, _)| {
        let l = leading(d);
        l < lead || (l == lead && d < hash)
    });
    let (candidate, _) = sorted.get(i)?;
    bool::from(ct_same(candidate, hash)).then_some(i)
}

/// Whether two digests are equal, in time independent of their bytes: compared as four
/// 64-bit words (`subtle` makes each word's comparison opaque to the optimiser; byte by
/// byte it was 32 such barriers, most of a lookup's time).
pub(super) fn ct_same(a: &KeyHash, b: &KeyHash) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    words(a).ct_eq(&words(b))
}

fn words(hash: &KeyHash) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (word, bytes) in w.iter_mut().zip(hash.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        *word = u64::from_ne_bytes(b);
    }
    w
}

fn leading(hash: &KeyHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

/// A record's digest, of its text: equal digests, same text, same record (64 bits: a
/// changed record passing for unchanged has odds of 2^-64). A reload compares digests of the
/// file's text before parsing it (`KeyIndex::reload`), so a record read from the file is
/// digested as the file has it, and one that arrives parsed (a change applied from the API or
/// a shared store) as the key-file writer writes it (`keys::writer`): the same text when the
/// file is keygate's. Different text for the same record (a hand-formatted file) costs a
/// needless change, never a missed one. Seeds are fixed so that digests are comparable across
/// indexes; they need not be secret, whoever can write records needs no collision.
pub(super) fn digest_text(text: &str) -> u64 {
    ahash::RandomState::with_seeds(
        0x6b65_7967_6174_6531,
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
    )
    .hash_one(text.as_bytes())
}

/// The digest of a record that has no text of its own: that of the text the writer gives it.
pub(super) fn digest(rec: &KeyRecord) -> u64 {
    digest_text(&serde_json::to_string(rec).unwrap_or_default())
}

impl Base {
    pub(super) fn new(entries: Vec<KeyEntry>, digests: Vec<u64>, secrets: Secrets) -> Base {
        let Secrets {
            current,
            retired,
            by_id,
        } = secrets;
        let bits = dir_bits(current.len());
        let mut dir = vec![0u32; (1usize << bits) + 1];
        for (h, _) in &current {
            dir[bucket(h, bits) + 1] += 1;
        }
        for j in 1..dir.len() {
            dir[j] += dir[j - 1];
        }
        Base {
            current,
            dir,
            dir_bits: bits,
            entries,
            digests,
            retired,
            by_id,
        }
    }

    pub(super) fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The key a secret belongs to, and which of its secrets it is.
    #[inline]
    pub(super) fn find(&self, hash: &KeyHash) -> Option<(u32, Secret)> {
        let b = bucket(hash, self.dir_bits);
        let current = (|| {
            let (lo, hi) = (*self.dir.get(b)? as usize, *self.dir.get(b + 1)? as usize);
            let candidates = self.current.get(lo..hi)?;
            Some(candidates.get(ct_position(candidates, hash)?)?.1)
        })();
        if let Some(pos) = current {
            return Some((pos, Secret::Current));
        }
        let (_, (pos, valid_until)) = *self.retired.get(ct_position(&self.retired, hash)?)?;
        Some((pos, Secret::Retired { valid_until }))
    }

    pub(super) fn position(&self, id: &KeyId) -> Option<u32> {
        let i = self
            .by_id
            .binary_search_by(|p| self.entries[*p as usize].id.cmp(id))
            .ok()?;
        Some(self.by_id[i])
    }

    /// `position`, trying `*cursor` first: a key file read in the order the base was built
    /// from finds each key there, without a search. Moves the cursor past the key found.
    pub(super) fn position_from(&self, id: &KeyId, cursor: &mut usize) -> Option<u32> {
        let pos = match self.entries.get(*cursor) {
            Some(e) if e.id == *id => *cursor as u32,
            _ => self.position(id)?,
        };
        *cursor = pos as usize + 1;
        Some(pos)
    }
}

impl crate::keys::file::Visit for Builder<'_> {
    fn record(&mut self, rec: KeyRecord, text: &str) {
        self.push(&rec, digest_text(text));
    }
}

/// The fewest bytes a record takes in a key file the writer wrote (an id, a hash, `last4`,
/// the scopes and a creation time; `records_are_never_fewer_bytes_than_the_estimate_assumes`
/// checks it).
const RECORD_BYTES_AT_LEAST: usize = 160;

/// How many records a key file of `len` bytes can hold, to size the index before reading
/// it. It errs high on purpose: room never used is address space the kernel never backs,
/// while a guess too low regrows the index's largest vectors at the end of the file, and
/// jemalloc (which has no `mremap`) copies them, doubling the peak of a million-key load.
pub(super) fn records_at_most(len: usize) -> usize {
    len / RECORD_BYTES_AT_LEAST
}

/// Collects keys one record at a time as the reader hands them over, so a large file never
/// exists as parsed records.
pub(super) struct Builder<'a> {
    limits: &'a LimitDefaults,
    unique: Uniqueness,
    entries: Vec<KeyEntry>,
    digests: Vec<u64>,
    extras: Interner,
}

impl<'a> Builder<'a> {
    pub(super) fn new(limits: &'a LimitDefaults, capacity: usize) -> Builder<'a> {
        Builder {
            limits,
            unique: Uniqueness::with_capacity(capacity),
            entries: Vec::with_capacity(capacity),
            digests: Vec::with_capacity(capacity),
            extras: Interner::default(),
        }
    }

    /// Adds a record read from a file, with its text's `digest_text`.
    pub(super) fn push(&mut self, rec: &KeyRecord, digest: u64) {
        if KeyId::new(&rec.id).is_none() {
            return; // the reader refuses such a file; never index what it would refuse
        }
        let pos = self.entries.len() as u32;
        self.unique.add(pos, rec);
        let mut e = entry(rec, self.limits);
        e.extra = e.extra.map(|x| self.extras.share(x));
        self.entries.push(e);
        self.digests.push(digest);
    }

    /// Sorts and cross-checks (`Uniqueness`). `Err` names a secret or id that appears twice.
    pub(super) fn finish(self) -> Result<Base, String> {
        let Builder {
            unique,
            mut entries,
            mut digests,
            ..
        } = self;
        entries.shrink_to_fit();
        digests.shrink_to_fit();
        let secrets = unique.check(entries.len() as u32, |p| entries[p as usize].id.as_str())?;
        Ok(Base::new(entries, digests, secrets))
    }
}
