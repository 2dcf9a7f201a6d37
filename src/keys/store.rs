//! The key file on disk: read through the one reader (`keys::file`), written so that nothing
//! is ever lost.
//!
//! Every write takes an exclusive lock on a separate, never-renamed lock file, re-reads the
//! key file under that lock, applies one change, and replaces the file by rename after an
//! fsync of the data and then of the directory. Two writers therefore serialise and neither
//! loses the other's change, and a writer killed at any instant leaves the old or the new
//! file, never a torn one. Runtime state (last use, usage) never goes here: the file may be a
//! read-only Kubernetes Secret.

use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A key file on disk.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
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

    /// The raw text, `None` when the file does not exist.
    pub fn read_text(&self) -> Result<Option<String>, StoreError> {
        match fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Applies `change` to the current file under the lock and writes the result atomically.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut KeyFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let write_err = |source: io::Error| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let lock = self.open_lock()?;
        lock.lock().map_err(write_err)?;
        let mut file = self.load()?;
        let out = change(&mut file)?;
        file.validate().map_err(StoreError::Rejected)?;
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|e| write_err(io::Error::other(e)))?;
        text.push('\n');
        self.write_atomically(text.as_bytes()).map_err(write_err)?;
        drop(lock); // closing the descriptor releases the lock
        Ok(out)
    }

    fn open_lock(&self) -> Result<File, StoreError> {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink()) {
            // A Kubernetes Secret or ConfigMap mount: replacing the link would break the mount.
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
                reason: "it is a symbolic link, as in a mounted Secret".into(),
            });
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::ReadOnly {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    }
                }
                _ => StoreError::Write {
                    path: self.path.clone(),
                    source: e,
                },
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

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir();
        let base = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp_prefix = format!(".{base}.tmp");
        remove_stale_temps(&dir, &tmp_prefix);
        let mut tmp = tempfile::Builder::new()
            .prefix(&tmp_prefix)
            .tempfile_in(&dir)?; // created with mode 0600
        if let Ok(old) = fs::metadata(&self.path) {
            keep_owner_and_mode(tmp.as_file(), &old)?;
        }
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        File::open(&dir)?.sync_all()
    }
}

/// Gives the replacement file the owner and mode of the file it replaces. Without this a
/// rewrite by another user (root running the CLI) leaves a file the gateway's own user cannot
/// read, and every later change, a revoke included, is silently not applied. A writer that may
/// not give the file its owner fails here, before anything is replaced.
fn keep_owner_and_mode(tmp: &File, old: &fs::Metadata) -> io::Result<()> {
    let mine = tmp.metadata()?;
    let uid = (mine.uid() != old.uid()).then_some(old.uid());
    let gid = (mine.gid() != old.gid()).then_some(old.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(tmp, uid, gid).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot keep the file's owner (uid {}, gid {}): {e}; run this as that user",
                    old.uid(),
                    old.gid()
                ),
            )
        })?;
    }
    tmp.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))
}

/// Temp files a killed writer left behind. Only called under the lock, so none is in use.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(e.path());
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
