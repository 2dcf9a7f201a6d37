//! Replacing a file by rename: a temp file beside it, given its owner and mode, synced, renamed
//! over it, the directory synced. The key file's writer (`keys::store`) and the shared store's
//! snapshot (`keys::snapshot`) both write this way.
//!
//! A write needs the directory, not only the file: the temp file is made there and renamed
//! there. [`probe`] asks the directory the same question cheaply, and [`refused`] tells a
//! refusal (a directory the writer may not change, a read-only file system) from a failure.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory `file` is in (`.` for a bare name).
pub(crate) fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether the system refused the change, rather than failed at it: no permission (`EACCES`,
/// `EPERM`, e.g. an immutable directory) or a read-only file system. Nothing in keygate can
/// fix that, so a management write answers 409, not 500.
pub(crate) fn refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

/// The system's words for `e` (`Permission denied (os error 13)`), without the ` at path
/// "…/.keys.json.tmpXXXXXX"` the `tempfile` crate appends (its error keeps no OS code to ask
/// for): the reason is shown in the key list and the console, where a random name only
/// confuses.
pub(crate) fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" at path \"") {
        Some((words, _)) => words.to_string(),
        None => text,
    }
}

/// The prefix of `file`'s temp files (`.keys.json.tmp`): hidden, and never the watched name.
fn temp_prefix(file: &Path) -> String {
    let base = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{base}.tmp")
}

/// Whether a temp file can be made beside `file` now: one is created and removed at once
/// (a real attempt, so permissions, ACLs, an immutable directory and a read-only mount all
/// answer as they would to a write; about as cheap as opening a file). One a killed process
/// left is a stale temp file, which the next write removes.
pub(crate) fn probe(file: &Path) -> io::Result<()> {
    tempfile::Builder::new()
        .prefix(&temp_prefix(file))
        .tempfile_in(dir_of(file))
        .map(drop)
}

/// A new, empty temp file beside `file` (temp files a killed writer left are removed first).
/// Call it under the writer's lock, so that no temp file removed is in use.
pub(crate) fn create_temp(file: &Path) -> io::Result<tempfile::NamedTempFile> {
    let dir = dir_of(file);
    let prefix = temp_prefix(file);
    remove_stale_temps(&dir, &prefix);
    tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir) // created with mode 0600
}

/// Gives a temp file the owner and mode of `file`, when it exists. Without this a rewrite by
/// another user (root running the CLI) leaves a file the gateway's own user cannot read, and
/// every later change, a revoke included, is silently not applied. A writer that may not give
/// the file its owner fails here, before anything is replaced.
pub(crate) fn keep_owner_and_mode(tmp: &File, file: &Path) -> io::Result<()> {
    let Ok(old) = fs::metadata(file) else {
        return Ok(());
    };
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

/// [`create_temp`] with [`keep_owner_and_mode`].
pub(crate) fn temp_file(file: &Path) -> io::Result<tempfile::NamedTempFile> {
    let tmp = create_temp(file)?;
    keep_owner_and_mode(tmp.as_file(), file)?;
    Ok(tmp)
}

/// Syncs the written temp file's data; before [`rename`], so a crash leaves the old file or
/// the whole new one.
pub(crate) fn sync(tmp: &tempfile::NamedTempFile) -> io::Result<()> {
    tmp.as_file().sync_all()
}

/// Renames the synced temp file over `file`.
pub(crate) fn rename(file: &Path, tmp: tempfile::NamedTempFile) -> io::Result<()> {
    tmp.persist(file).map(drop).map_err(|e| e.error)
}

/// Syncs `file`'s directory, after [`rename`], so the rename itself survives a crash.
pub(crate) fn sync_dir(file: &Path) -> io::Result<()> {
    File::open(dir_of(file))?.sync_all()
}

/// [`sync`], [`rename`] and [`sync_dir`]: makes the written temp file `file`.
pub(crate) fn commit(file: &Path, tmp: tempfile::NamedTempFile) -> io::Result<()> {
    sync(&tmp)?;
    rename(file, tmp)?;
    sync_dir(file)
}

/// Temp files a killed writer left behind.
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
