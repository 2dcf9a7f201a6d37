//! The key file on disk: read through the one reader (`keys::file`), written through the one
//! writer (`keys::writer`) so that nothing is ever lost.
//!
//! Every write takes an exclusive lock on a separate, never-renamed lock file, re-reads the
//! key file under that lock, applies one change, and replaces the file by rename after an
//! fsync of the data and then of the directory. Two writers therefore serialise and neither
//! loses the other's change, and a writer killed at any instant leaves the old or the new
//! file, never a torn one. Runtime state (last use, usage) never goes here: the file may be a
//! read-only Kubernetes Secret.
//!
//! A write of one key ([`KeyStore::apply`]) streams: each record goes from the reader to the
//! new file as it is read, the one it changes changed on the way (or the new one appended),
//! so a write at a million keys holds the file's text and its ids and hashes (for the
//! uniqueness check), never a million parsed records.

use crate::keys::entry::KeyId;
use crate::keys::error::StoreError;
use crate::keys::file::{self, KeyFile, Uniqueness};
use crate::keys::ops::{self, Done, Op};
use crate::keys::replace;
use crate::keys::writer::{self, Writer};
use crate::time::Timestamp;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How much of the key file one `read` takes (`read_text`): about 0.1 ms of copying.
const READ_PIECE: u64 = 256 << 10;

/// A key file on disk.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
}

/// The file named as `file` plus `suffix`, in its directory (`keys.json.lock`).
pub(crate) fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    file.with_file_name(name)
}

impl KeyStore {
    pub fn new(path: impl Into<PathBuf>) -> KeyStore {
        KeyStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file. A missing file is an empty key set.
    pub fn load(&self) -> Result<KeyFile, StoreError> {
        match self.read_text()? {
            Some(text) => KeyFile::parse(&text, &self.path),
            None => Ok(KeyFile::empty()),
        }
    }

    /// Reads and validates the file, which must exist (what a gateway needs to be ready).
    pub fn load_existing(&self) -> Result<KeyFile, StoreError> {
        match self.read_text()? {
            Some(text) => KeyFile::parse(&text, &self.path),
            None => Err(self.not_found()),
        }
    }

    /// The error for a key file that does not exist yet.
    pub fn not_found(&self) -> StoreError {
        StoreError::Read {
            path: self.path.clone(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "the file does not exist yet (create a key with `keygate keys create`)",
            ),
        }
    }

    /// The raw text, `None` when the file does not exist. Read a piece at a time, offering the
    /// core to others between pieces (`reader::step_aside` says why): one `read` of a
    /// large file holds the core for milliseconds.
    pub fn read_text(&self) -> Result<Option<String>, StoreError> {
        let err = |source| StoreError::Read {
            path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
        loop {
            let mut piece = io::Read::take(&mut file, READ_PIECE);
            match io::Read::read_to_end(&mut piece, &mut bytes) {
                Ok(0) => break,
                Ok(_) => crate::keys::reader::step_aside(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        String::from_utf8(bytes).map(Some).map_err(|_| {
            err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ))
        })
    }

    /// Whether a write could start now, so a reader can say so up front: the steps a write
    /// takes before it changes anything (not a symbolic link, the lock file opens for writing,
    /// the directory takes a new file), the last one tried for real with a temp file made and
    /// removed. A lock file left by earlier writes opens in a directory that no longer takes
    /// files, so it alone said "writable" where every write would fail.
    pub fn writable(&self) -> Result<(), StoreError> {
        drop(self.open_lock()?);
        replace::probe(&self.path).map_err(|e| self.dir_err(e))
    }

    /// Why the key file is read-only when its directory refused a new file (`e`), else a
    /// write error.
    fn dir_err(&self, e: io::Error) -> StoreError {
        if !replace::refused(&e) {
            return (self.write_err())(e);
        }
        StoreError::ReadOnly {
            path: self.path.clone(),
            reason: format!(
                "its directory {} is not writable: {}",
                self.dir_name(),
                replace::plain(&e)
            ),
        }
    }

    /// A new temp file beside the key file with its owner and mode, under the lock. The
    /// directory's refusal is read-only (409 through the API), as [`KeyStore::writable`] says.
    fn new_temp(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let tmp = replace::create_temp(&self.path).map_err(|e| self.dir_err(e))?;
        replace::keep_owner_and_mode(tmp.as_file(), &self.path).map_err(self.write_err())?;
        Ok(tmp)
    }

    /// Makes the written temp file the key file. A rename the system refuses (the directory
    /// stopped taking changes since the temp file was made, or the key file may not be
    /// replaced: immutable, or another user's in a sticky directory) is read-only too.
    fn replace_with(&self, tmp: tempfile::NamedTempFile) -> Result<(), StoreError> {
        replace::sync(&tmp).map_err(self.write_err())?;
        replace::rename(&self.path, tmp).map_err(|e| match replace::refused(&e) {
            true => StoreError::ReadOnly {
                path: self.path.clone(),
                reason: format!(
                    "it cannot be replaced in {}: {}",
                    self.dir_name(),
                    replace::plain(&e)
                ),
            },
            false => (self.write_err())(e),
        })?;
        replace::sync_dir(&self.path).map_err(self.write_err())
    }

    /// The key file's directory for a message: absolute when it can be (not `.`).
    fn dir_name(&self) -> String {
        let dir = replace::dir_of(&self.path);
        fs::canonicalize(&dir).unwrap_or(dir).display().to_string()
    }

    fn write_err(&self) -> impl Fn(io::Error) -> StoreError + '_ {
        |source| StoreError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Applies `change` to the whole file in memory, under the lock, and writes the result
    /// atomically: for changes of many keys at once (bulk loads, tests). One key's change is
    /// [`KeyStore::apply`].
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut KeyFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock = self.open_lock()?;
        lock.lock().map_err(self.write_err())?;
        let mut file = self.load()?;
        let out = change(&mut file)?;
        file.validate().map_err(StoreError::Rejected)?;
        let mut tmp = self.new_temp()?;
        tmp.write_all(writer::file_text(&file).as_bytes())
            .map_err(self.write_err())?;
        self.replace_with(tmp)?;
        drop(lock); // closing the descriptor releases the lock
        Ok(out)
    }

    /// Runs one operation (`keys::ops`) under the lock, streaming the file into its
    /// replacement (see the module doc), and returns what it did. Nothing is written when the
    /// operation fails or changes nothing (a revoke of a revoked key).
    pub fn apply(&self, op: &Op, prefix: &str, now: Timestamp) -> Result<Done, StoreError> {
        op.check(now)?;
        let lock = self.open_lock()?;
        lock.lock().map_err(self.write_err())?;
        let text = self.read_text()?;
        let mut tmp = self.new_temp()?;
        let mut out = Writer::new(BufWriter::with_capacity(1 << 20, tmp.as_file_mut()))
            .map_err(self.write_err())?;
        let capacity = text.as_ref().map_or(0, |t| t.len() / 300);
        let mut pass = Pass {
            unique: Uniqueness::with_capacity(capacity),
            ids: Vec::with_capacity(capacity),
            done: None,
            failed: None,
        };
        if let Some(text) = &text {
            file::read(&self.path, text, &mut |rec| {
                if pass.failed.is_some() {
                    return;
                }
                let rec = match op.target() {
                    Some(id) if id == rec.id => match op.apply_to(&rec, prefix, now) {
                        Ok(done) => pass.done.insert(done).record.clone(),
                        Err(e) => {
                            pass.failed = Some(e);
                            return;
                        }
                    },
                    _ => rec,
                };
                pass.add(&rec, &mut out, &self.path);
            })?;
        }
        drop(text);
        if let Op::Create(new) = op {
            let done = ops::create(new.clone(), prefix, now)?;
            pass.add(&done.record, &mut out, &self.path);
            pass.done = Some(done);
        }
        if let Some(e) = pass.failed {
            return Err(e);
        }
        let done = pass
            .done
            .ok_or_else(|| StoreError::NotFound(op.target().unwrap_or_default().to_string()))?;
        let ids = &pass.ids;
        pass.unique
            .check(ids.len() as u32, |p| ids[p as usize].as_str())
            .map_err(StoreError::Rejected)?;
        if !done.changed {
            return Ok(done); // the temp file is removed as it drops
        }
        out.finish()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .map_err(self.write_err())?;
        self.replace_with(tmp)?;
        drop(lock);
        Ok(done)
    }

    fn open_lock(&self) -> Result<File, StoreError> {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink()) {
            // A Kubernetes Secret or ConfigMap mount: replacing the link would break the mount.
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
                reason: "it is a symbolic link, as in a mounted Secret".into(),
            });
        }
        let lock_path = beside(&self.path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| match fs::symlink_metadata(&lock_path) {
                // Named so the operator knows which permission to fix.
                Ok(_) if replace::refused(&e) => StoreError::ReadOnly {
                    path: self.path.clone(),
                    reason: format!(
                        "its lock file {} cannot be opened for writing: {e}",
                        lock_path.display()
                    ),
                },
                Ok(_) => (self.write_err())(e),
                Err(_) => self.dir_err(e),
            })?;
        // A lock file first made by root would shut the file's owner (the gateway's user) out
        // of writing through the API: give it the key file's owner. Best effort: only root can.
        if let (Ok(key), Ok(mine)) = (fs::metadata(&self.path), lock.metadata()) {
            if (key.uid(), key.gid()) != (mine.uid(), mine.gid()) {
                let _ = std::os::unix::fs::fchown(&lock, Some(key.uid()), Some(key.gid()));
            }
        }
        Ok(lock)
    }
}

/// What a streaming write gathers as records pass: the secrets and ids for the uniqueness
/// check, the operation's result, and the first failure.
struct Pass {
    unique: Uniqueness,
    ids: Vec<KeyId>,
    done: Option<Done>,
    failed: Option<StoreError>,
}

impl Pass {
    /// Passes one record on to the new file.
    fn add<W: Write>(
        &mut self,
        rec: &crate::keys::record::KeyRecord,
        out: &mut Writer<W>,
        path: &Path,
    ) {
        let Some(id) = KeyId::new(&rec.id) else {
            // The reader validated every id; this is a record made here, and refused.
            self.failed = Some(StoreError::Rejected(format!("invalid id `{}`", rec.id)));
            return;
        };
        self.unique.add(self.ids.len() as u32, rec);
        self.ids.push(id);
        if let Err(source) = out.record(rec) {
            self.failed = Some(StoreError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::record::{hash_hex, NewKey, Status};
    use crate::time::Timestamp;

    fn new_key(name: &str) -> NewKey {
        NewKey {
            name: name.into(),
            ..NewKey::default()
        }
    }

    #[test]
    fn create_rotate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let now = Timestamp::now();
        let (rec, tok) = store
            .update(|f| f.create(new_key("app"), "sk_kg", now))
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(&hash_hex(&tok.hash)));
        assert!(!text.contains(&tok.plaintext));
        let (rotated, tok2) = store
            .update(|f| f.rotate(&rec.id, 3600, "sk_kg", now))
            .unwrap();
        assert_eq!(rotated.previous.len(), 1);
        assert_ne!(tok.hash, tok2.hash);
        store.update(|f| f.revoke(&rec.id, now)).unwrap();
        let file = store.load().unwrap();
        assert_eq!(file.get(&rec.id).unwrap().status(now), Status::Revoked);
    }

    #[test]
    fn validation_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let now = Timestamp::now();
        let (rec, _) = store
            .update(|f| f.create(new_key("app"), "sk_kg", now))
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        fs::write(store.path(), text.replace("\"chat\"", "\"root\"")).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains(&rec.id) && err.contains("root"), "{err}");
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
    }
}
