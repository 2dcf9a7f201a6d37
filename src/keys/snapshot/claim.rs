//! A running replica's hold on its snapshot (`Claim`).

use crate::keys::error::StoreError;
use crate::keys::store::beside;
use std::fs::{self, OpenOptions};
use std::path::Path;

/// A running replica's hold on its snapshot: an exclusive lock on `<file>.owner`, released
/// when the process ends, however it ends. The replica folds the journal into the file
/// through a temporary file and trims the journal by what it read, so a second replica given
/// the same `[keys] file` (a volume the pods of a Deployment share) would remove the other's
/// temporary file or have its own removed, and trim lines the other had appended. Readers
/// (`keys push`, `keygate check`) take no claim and write nothing there.
#[derive(Debug)]
pub struct Claim {
    _lock: fs::File,
}

impl Claim {
    /// Claims the snapshot at `file` for this process; refused (`SnapshotInUse`) while
    /// another process holds it. `None`, with a warning, when the lock file cannot be opened
    /// or locked (a directory this process may not write, a file system without locks): the
    /// replica then runs unguarded, as before there was a claim; in a directory it may not
    /// write, its journal fails too, and says so.
    pub fn take(file: &Path) -> Result<Option<Claim>, StoreError> {
        let lock = beside(file, ".owner");
        let f = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(lock = %lock.display(), error = %e, "cannot open the key snapshot's lock file; running without a claim on the snapshot");
                return Ok(None);
            }
        };
        match f.try_lock() {
            Ok(()) => Ok(Some(Claim { _lock: f })),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::SnapshotInUse {
                path: file.to_path_buf(),
                lock,
            }),
            Err(fs::TryLockError::Error(e)) => {
                tracing::warn!(lock = %lock.display(), error = %e, "cannot lock the key snapshot's lock file; running without a claim on the snapshot");
                Ok(None)
            }
        }
    }
}
