//! A directory that refuses new files to the test's own user, as a key file's directory the
//! gateway's user may not write: mode 555 stops an ordinary user; root, whom permissions do
//! not stop, is stopped by the immutable attribute (`chattr +i`), which refuses every new
//! entry while the files already there stay writable. Both are undone when it is dropped, so
//! the temporary directory can be removed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LockedDir {
    dir: PathBuf,
    immutable: bool,
}

impl LockedDir {
    /// `dir` made to refuse new files, or why that cannot be done here (no `chattr`, a file
    /// system without the attribute, root without `CAP_LINUX_IMMUTABLE`).
    pub fn lock(dir: &Path) -> Result<LockedDir, String> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(|e| e.to_string())?;
        let mut locked = LockedDir {
            dir: dir.to_path_buf(),
            immutable: false,
        };
        if refuses_new_files(dir) {
            return Ok(locked);
        }
        let out = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("mode 555 does not stop this user (root), and chattr: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mode 555 does not stop this user (root), and chattr +i failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        locked.immutable = true;
        match refuses_new_files(dir) {
            true => Ok(locked),
            false => Err("the directory takes new files even with chattr +i".into()),
        }
    }
}

/// Whether a file cannot be created in `dir` now.
fn refuses_new_files(dir: &Path) -> bool {
    let probe = dir.join(".locked_dir_probe");
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            false
        }
        Err(_) => true,
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.dir).status();
        }
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755));
    }
}
