//! Noticing that the key file or `gateway.toml` changed, without a restart.
//!
//! The watch is on the file's *directory*: a Kubernetes Secret or ConfigMap updates by
//! swapping a `..data` symlink, and editors and our own writer replace files by rename, so a
//! watch on the file itself would go deaf after the first change. Filesystem events only say
//! "look now"; what decides a reload is a fingerprint of the file as resolved through links
//! (device, inode, size, mtime), which is also polled on an interval in case events are lost
//! (network filesystems, some container runtimes).

use notify::{RecursiveMode, Watcher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Calls `reload` (on a blocking thread) whenever `path` changes, until the task is aborted.
/// A file that failed to load is tried again only once it changes, so a bad file is
/// reported once, not at every poll.
pub fn spawn<F>(path: PathBuf, poll: Duration, reload: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() + Send + Sync + 'static,
{
    let reload = std::sync::Arc::new(reload);
    // Taken now, before the caller's first load, so a change in between is not missed.
    let mut last = fingerprint(&path);
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            let _ = tx.try_send(());
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {}
            }
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            last = now;
            let r = std::sync::Arc::clone(&reload);
            let _ = tokio::task::spawn_blocking(move || r()).await;
        }
    })
}
