//! A replica's snapshot of the shared key store: the key file (`[keys] file`, the same
//! hash-only format, written atomically) plus a journal beside it (`<file>.journal`).
//!
//! Rewriting a million-key file per change would cost seconds, so a change from the store is
//! appended to the journal (one JSON line per record, fsynced per batch) before it is put in
//! force, and the file is rewritten with the journal folded in (`fold`) in the background at
//! most every `[keys] snapshot_interval`, at start and at shutdown. The journal then keeps
//! only a first line with the store position reached and what was appended meanwhile. A
//! revoke a replica has seen thus survives its crash, and a start is the snapshot with its
//! journal folded in.
//!
//! Merging is monotonic (`wins`): a record replaces the one held only when its `rev` is
//! higher, and never un-revokes. A snapshot the disk stops taking changes for is set aside
//! (`aside`) until it does.

use crate::keys::error::StoreError;
use crate::keys::file;
use crate::keys::record::{self, KeyRecord};
use crate::keys::replace;
use crate::keys::store::{beside, KeyStore};
use crate::keys::writer::Writer;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod aside;
mod claim;

pub use claim::Claim;

/// The suffix of a snapshot's file and journal while they are set aside (`aside`).
const ASIDE: &str = ".aside";

/// What a replica holds of a key, for merging: its revision and whether it is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub rev: u64,
    pub revoked: bool,
}

impl Seen {
    pub fn of(rec: &KeyRecord) -> Seen {
        Seen {
            rev: rec.rev,
            revoked: rec.revoked_at.is_some(),
        }
    }
}

/// Whether `rec` replaces what is held (`held`): a key not held, or a higher revision — but
/// a revoked key is never replaced by an unrevoked version, whatever its revision (a store
/// restored from an old backup must not bring a revoked key back).
pub fn wins(held: Option<Seen>, rec: &KeyRecord) -> bool {
    match held {
        None => true,
        Some(h) if h.revoked && rec.revoked_at.is_none() => false,
        Some(h) => rec.rev > h.rev || (rec.revoked_at.is_some() && !h.revoked),
    }
}

/// Where a store (or a replica's snapshot of it) is: the store's epoch and the version of
/// the last change applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: String,
    pub version: u64,
}

/// One journal line: the store position after it, and the record it brings (none for a
/// position alone).
#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    #[serde(flatten)]
    position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<KeyRecord>,
}

/// The snapshot file and its journal.
#[derive(Debug)]
pub struct Snapshot {
    file: KeyStore,
    journal: PathBuf,
    /// Held while appending, and by `fold` while it reads and trims the journal.
    append: Mutex<()>,
    /// One fold at a time.
    folding: Mutex<()>,
}

/// The journal as read: its records (in order), the last position, its length in bytes.
struct Journal {
    records: Vec<KeyRecord>,
    position: Option<Position>,
    len: usize,
    /// A last line cut by a crash follows (dropped at the next trim).
    torn: bool,
}

impl Snapshot {
    pub fn new(file: &Path) -> Snapshot {
        Snapshot {
            file: KeyStore::new(file),
            journal: beside(file, ".journal"),
            append: Mutex::new(()),
            folding: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file and the journal while set aside (`aside`).
    fn aside(&self) -> (PathBuf, PathBuf) {
        (beside(self.path(), ASIDE), beside(&self.journal, ASIDE))
    }

    /// Whether there is a snapshot to serve from (the file, or a journal).
    pub fn exists(&self) -> bool {
        self.file.path().exists() || self.journal.exists()
    }

    /// Appends `records` (none: the position alone) and syncs: durable before it returns.
    pub fn append(&self, records: &[KeyRecord], position: &Position) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.journal.clone(),
            source,
        };
        let mut text = Vec::new();
        push_lines(&mut text, records, position).map_err(err)?;
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .map_err(err)?;
        f.write_all(&text).and_then(|_| f.sync_data()).map_err(err)
    }

    fn read_journal(&self) -> Result<Journal, StoreError> {
        let bytes = match fs::read(&self.journal) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.journal.clone(),
                    source,
                })
            }
        };
        let mut j = Journal {
            records: Vec::new(),
            position: None,
            len: 0,
            torn: false,
        };
        // Only whole lines count: a line cut by a crash was never acknowledged as durable.
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                j.torn = true;
                break;
            }
            let parsed: Line = serde_json::from_slice(line).map_err(|e| StoreError::Invalid {
                path: self.journal.clone(),
                problem: format!("a journal line is invalid: {e}"),
            })?;
            j.len += line.len();
            j.position = Some(parsed.position);
            j.records.extend(parsed.record);
        }
        Ok(j)
    }

    /// The store position the snapshot and its journal reach (`None`: never synced).
    pub fn position(&self) -> Result<Option<Position>, StoreError> {
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read_journal()?.position)
    }

    /// Rewrites the file with the journal folded in (streaming, atomically), then trims the
    /// journal to the position reached and what was appended meanwhile (a restore cut short
    /// is finished first: `finish_restore`). Returns the position (`None`: never synced).
    pub fn fold(&self) -> Result<Option<Position>, StoreError> {
        let _one = self.folding.lock().unwrap_or_else(|e| e.into_inner());
        self.finish_restore().map_err(|source| StoreError::Write {
            path: self.file.path().to_path_buf(),
            source,
        })?;
        let journal = {
            let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
            self.read_journal()?
        };
        if journal.records.is_empty() {
            if journal.torn {
                self.trim(journal.len, journal.position.as_ref())?;
            }
            return Ok(journal.position);
        }
        let mut changed = latest(journal.records);
        let werr = |source| StoreError::Write {
            path: self.file.path().to_path_buf(),
            source,
        };
        let mut tmp = replace::temp_file(self.file.path()).map_err(werr)?;
        let mut out =
            Writer::new(BufWriter::with_capacity(1 << 20, tmp.as_file_mut())).map_err(werr)?;
        let mut failed = None;
        if let Some(text) = self.file.read_text()? {
            file::read(self.file.path(), &text, &mut |rec| {
                if let Err(e) = out.record(&merged(rec, &mut changed)) {
                    failed.get_or_insert(e);
                }
            })?;
        }
        for rec in &added(changed) {
            out.record(rec).map_err(werr)?;
        }
        if let Some(e) = failed {
            return Err(werr(e));
        }
        out.finish()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .map_err(werr)?;
        replace::commit(self.file.path(), tmp).map_err(werr)?;
        self.trim(journal.len, journal.position.as_ref())?;
        Ok(journal.position)
    }

    /// Finishes a restore that a crash cut short between its two renames: the journal is
    /// back, the file still set aside. A fold would otherwise make a snapshot of the journal
    /// alone, and the start then remove the file set aside, with every other key. The
    /// caller holds `folding`.
    fn finish_restore(&self) -> io::Result<()> {
        let (file, journal) = self.aside();
        if self.path().exists() || !self.journal.exists() || !file.exists() {
            return Ok(());
        }
        fs::rename(&file, self.path())?;
        match fs::remove_file(&journal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        replace::sync_dir(self.path())?;
        tracing::warn!(snapshot = %self.path().display(), "finished putting back a key snapshot an earlier run stopped restoring");
        Ok(())
    }

    /// The journal without its first `len` bytes (folded into the file), behind a line with
    /// `position`; replaced atomically.
    fn trim(&self, len: usize, position: Option<&Position>) -> Result<(), StoreError> {
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let err = |source| StoreError::Write {
            path: self.journal.clone(),
            source,
        };
        let bytes = fs::read(&self.journal).unwrap_or_default();
        let mut text = Vec::new();
        if let Some(p) = position {
            push_lines(&mut text, &[], p).map_err(err)?;
        }
        // What was appended meanwhile: whole lines only (a line cut by a crash is dropped).
        text.extend_from_slice(whole_lines(bytes.get(len..).unwrap_or_default()));
        self.replace_journal(&text)
    }

    /// `text` as the whole journal: a temp file beside it, synced and renamed over it
    /// (`keys::replace`). The caller holds `append`.
    fn replace_journal(&self, text: &[u8]) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.journal.clone(),
            source,
        };
        let mut tmp = replace::create_temp(&self.journal).map_err(err)?;
        tmp.write_all(text).map_err(err)?;
        replace::commit(&self.journal, tmp).map_err(err)
    }

    /// Every record of the snapshot as it now is (journal folded in first; when the fold
    /// cannot write, the file and journal merged in memory: `read_records`). For the replica
    /// that owns the snapshot only: another process reads it with `read_records`.
    pub fn records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        if let Err(e) = self.fold() {
            tracing::error!(error = %e, "key snapshot not rewritten (the journal keeps every change): read as it is, its journal merged in memory");
            return self.read_records();
        }
        let mut all = Vec::new();
        if let Some(text) = self.file.read_text()? {
            file::read(self.file.path(), &text, &mut |r| all.push(r))?;
        }
        Ok(all)
    }

    /// Every record of the snapshot as it now is, the journal merged in memory: nothing is
    /// written. For a process other than the replica that owns the snapshot (`keys push`):
    /// its fold, racing the replica's, would remove the replica's temporary file (and the
    /// replica its), and each would trim the journal by the length it had read, dropping
    /// lines the other appended meanwhile. The journal is read before the file, so a fold by
    /// the replica in between only means reading its changes twice (merging is idempotent).
    pub fn read_records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let journal = {
            let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
            self.read_journal()?
        };
        let mut changed = latest(journal.records);
        let mut all = Vec::new();
        if let Some(text) = self.file.read_text()? {
            file::read(self.file.path(), &text, &mut |r| {
                all.push(merged(r, &mut changed));
            })?;
        }
        all.extend(added(changed));
        Ok(all)
    }
}

/// Journal lines for `records` at `position` (none: the position alone), appended to `text`.
fn push_lines(text: &mut Vec<u8>, records: &[KeyRecord], position: &Position) -> io::Result<()> {
    let mut line = |record: Option<&KeyRecord>| {
        let l = Line {
            position: position.clone(),
            record: record.cloned(),
        };
        serde_json::to_writer(&mut *text, &l)?;
        text.push(b'\n');
        Ok::<(), io::Error>(())
    };
    match records {
        [] => line(None),
        _ => records.iter().try_for_each(|r| line(Some(r))),
    }
}

/// `bytes` up to the end of its last whole line (a line cut by a crash, or by a full disk,
/// is no line).
fn whole_lines(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)]
}

/// The journal's records, the one that wins for each key. An invalid one (journaled by an
/// earlier version, which did not check) is left out, logged by id: in the file it would
/// make the file unreadable, every later fold and every start from it failing.
fn latest(records: Vec<KeyRecord>) -> HashMap<String, KeyRecord> {
    let mut changed: HashMap<String, KeyRecord> = HashMap::new();
    for rec in records {
        if record::validate_record(0, &rec).is_err() {
            tracing::error!(key_id = ?rec.id, "an invalid record in the key snapshot's journal is left out (what the snapshot holds for that key stays)");
            continue;
        }
        let held = changed.get(&rec.id).map(Seen::of);
        if wins(held, &rec) {
            changed.insert(rec.id.clone(), rec);
        }
    }
    changed
}

/// A record of the file, or the journal's record of the same key if that one wins (taken out
/// of `changed`).
fn merged(rec: KeyRecord, changed: &mut HashMap<String, KeyRecord>) -> KeyRecord {
    match changed.remove(&rec.id) {
        Some(j) if wins(Some(Seen::of(&rec)), &j) => j,
        _ => rec,
    }
}

/// The journal's records of keys the file lacks, oldest first (as the file orders them).
fn added(changed: HashMap<String, KeyRecord>) -> Vec<KeyRecord> {
    let mut added: Vec<KeyRecord> = changed.into_values().collect();
    added.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    added
}

#[cfg(test)]
mod tests;
