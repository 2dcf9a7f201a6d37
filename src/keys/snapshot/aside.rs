//! A snapshot that cannot take a change (a full disk, an emptyDir over its size limit, a
//! volume gone read-only) is set aside: renamed where a start does not look. Left in place it
//! would lack a change this replica has already put in force, a revoke perhaps, and a restart
//! while Redis is down would serve the key again. The follower keeps the changes in memory
//! meanwhile and puts the snapshot back, with them, once the disk takes them; a replica that
//! restarts meanwhile has no snapshot, and waits for the store (not ready) rather than serve
//! an old one.

use super::{push_lines, whole_lines, Position, Snapshot};
use crate::keys::error::StoreError;
use crate::keys::record::KeyRecord;
use crate::keys::replace::sync_dir;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `path` renamed to `to`; nothing to rename is no error.
fn rename(path: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(path, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Snapshot {
    /// Moves the file and its journal out of a start's way (a rename needs no free space).
    /// The file first: cut short after it (a crash, or the journal's rename refused), what
    /// is left is a journal in place and its file set aside, the state a restore cut short
    /// leaves, which the next fold puts back together (`finish_restore`). The other order
    /// left the file in place without its journal: a start loaded the file alone, then
    /// deleted the journal set aside, with the changes it held.
    pub fn set_aside(&self) -> io::Result<()> {
        let _one = self.folding.lock().unwrap_or_else(|e| e.into_inner());
        let _append = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let (file, journal) = self.aside();
        rename(self.path(), &file)?;
        rename(&self.journal, &journal)?;
        sync_dir(self.path())
    }

    /// Puts a snapshot set aside back, with `records` (every change put in force since) and
    /// `position` journaled after what it held. The journal first, whole lines only (the
    /// append that failed may have left a cut one), written whole and renamed into place;
    /// then the file. The journal set aside and the one in place are both kept, in that
    /// order: when the set-aside itself failed (a read-only volume refuses renames too), the
    /// journal in place holds changes not yet folded, a revoke perhaps, and replacing it
    /// with the pending changes alone would lose them.
    pub fn restore(&self, records: &[KeyRecord], position: &Position) -> Result<(), StoreError> {
        let _one = self.folding.lock().unwrap_or_else(|e| e.into_inner());
        let _append = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let err = |source| StoreError::Write {
            path: self.journal.clone(),
            source,
        };
        let (file, journal) = self.aside();
        let mut text = Vec::new();
        for path in [&journal, &self.journal] {
            let old = match fs::read(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                read => read.map_err(err)?,
            };
            text.extend_from_slice(whole_lines(&old));
        }
        push_lines(&mut text, records, position).map_err(err)?;
        self.replace_journal(&text)?;
        rename(&file, self.path()).map_err(err)?;
        match fs::remove_file(&journal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        sync_dir(self.path()).map_err(err)
    }

    /// Removes a snapshot an earlier process set aside, when there is one (it lacks what that
    /// process held only in memory: the store has it). Whether there was.
    pub fn discard_aside(&self) -> io::Result<bool> {
        let mut found = false;
        for path in <[PathBuf; 2]>::from(self.aside()) {
            // A name of the gateway's own: whatever is there (a directory, if an operator
            // or a test made one to stop the journal) goes.
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            match removed {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }
}
