//! Noticing that the key file, `gateway.toml` or a TLS file changed, without a restart.
//!
//! The watch is on the file's *directory*: a Kubernetes Secret or ConfigMap updates by
//! swapping a `..data` symlink, and editors and our own writer replace files by rename, so a
//! watch on the file itself would go deaf after the first change. Only events that name the
//! watched file or the kubelet's `..`-prefixed entries count: anything else in the directory
//! (a log file there, the usage state file) is ignored, or every log line would wake the
//! watcher. Events only say "look now"; what decides a reload is a fingerprint of the file as
//! resolved through links (device, inode, size, mtime, ctime — ctime so that a `chmod`, a
//! `chown` or an in-place edit with its mtime put back is noticed too), also polled on an
//! interval in case events are lost (network filesystems, some container runtimes).
//!
//! A changed file is applied only once it has stopped changing: its fingerprint must be the
//! same on two looks [`SETTLE`] apart, so a file being rewritten in place is not applied half
//! written. A reload that failed is retried at every poll (not at every event: opens and reads
//! are events too) until one succeeds, so a file that was unreadable (wrong owner, a Secret
//! mid-update) is applied at the next poll after it can be read, or at once if the fix
//! changed its fingerprint (a `chmod`, a new file).

use notify::{RecursiveMode, Watcher};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a changed file must stay unchanged before it is applied.
pub const SETTLE: Duration = Duration::from_millis(200);

/// What tells one version of a file from another: device, inode, size, mtime and ctime, of
/// the file as resolved through links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    /// The fingerprint of `path` now, `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Whether a directory event can concern the watched file `name`: it names the file, or an
/// entry of the kubelet's atomic writer (`..data`, `..data_tmp`, `..2024_…`), or it carries
/// no name at all (an overflow or rescan: anything may have changed). An open, a read or a
/// close after reading changes nothing: inotify reports them too, and a reload's own read of
/// the file would otherwise wake the watcher again, forever while the file keeps failing.
fn concerns(event: &notify::Result<notify::Event>, name: &OsString) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let Ok(event) = event else {
        return true;
    };
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    if event.paths.is_empty() || event.need_rescan() {
        return true;
    }
    event.paths.iter().any(|p| match p.file_name() {
        Some(n) => n == name || n.as_encoded_bytes().starts_with(b".."),
        None => true,
    })
}

/// Calls `reload` (on a blocking thread) whenever `path` changes, until the task is aborted.
/// `reload` returns whether the file was applied; while it was not, it is called again at
/// every poll.
pub fn spawn<F>(path: PathBuf, poll: Duration, reload: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    Watch::new(path).spawn(poll, Loaded::Yes, reload)
}

/// Whether the caller's own first load of the file succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Yes,
    /// Retry at every poll until a reload succeeds.
    No,
}

/// A watch whose starting point is taken now, before the caller's first load, so a change
/// in between is not missed; [`Watch::spawn`] starts it once that load has been tried.
pub struct Watch {
    path: PathBuf,
    last: Option<Fingerprint>,
}

impl Watch {
    pub fn new(path: PathBuf) -> Watch {
        let last = Fingerprint::of(&path);
        Watch { path, last }
    }

    /// Starts watching. `first` says whether the caller's own load succeeded.
    pub fn spawn<F>(self, poll: Duration, first: Loaded, reload: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        let reload = std::sync::Arc::new(reload);
        let Watch { path, mut last } = self;
        let mut failing = first == Loaded::No;
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel::<()>(1);
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = path.file_name().map(OsString::from).unwrap_or_default();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if concerns(&res, &name) {
                    let _ = tx.try_send(());
                }
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
                let polled = tokio::select! {
                    _ = tick.tick() => true,
                    Some(()) = rx.recv() => false,
                };
                let mut now = Fingerprint::of(&path);
                // A file that failed and has not changed is retried at the poll, whatever
                // woke the watcher.
                if now == last && !(failing && polled) {
                    continue;
                }
                if now != last {
                    // Wait until the file stops changing: a slow in-place rewrite is applied
                    // whole, never half.
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = Fingerprint::of(&path);
                        if again == now {
                            break;
                        }
                        now = again;
                    }
                }
                last = now;
                let r = std::sync::Arc::clone(&reload);
                failing = !tokio::task::spawn_blocking(move || r())
                    .await
                    .unwrap_or(false);
            }
        })
    }
}

/// Remembers the last failure of a reload, so a file that keeps failing is logged when its
/// state changes (first failure, a different error, recovery), not at every retry.
#[derive(Debug, Default)]
pub struct FailureLatch(Mutex<Option<String>>);

impl FailureLatch {
    /// Records a failure; true when it is news (the previous attempt succeeded or failed
    /// differently), i.e. when to log it.
    pub fn failed(&self, error: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(error) {
            return false;
        }
        *last = Some(error.to_string());
        true
    }

    /// Records a success; true when the previous attempt had failed (log the recovery).
    pub fn succeeded(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{EventKind, ModifyKind};

    fn event(paths: &[&str]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(EventKind::Modify(ModifyKind::Any));
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn only_events_for_the_file_or_the_kubelet_swap_count() {
        let name = OsString::from("keys.json");
        assert!(concerns(&event(&["/d/keys.json"]), &name));
        assert!(concerns(
            &event(&["/d/.keys.json.tmpX", "/d/keys.json"]),
            &name
        ));
        assert!(concerns(&event(&["/d/..data"]), &name));
        assert!(concerns(&event(&["/d/..2026_11_30_12_00_00.1"]), &name));
        assert!(concerns(&event(&[]), &name));
        assert!(!concerns(&event(&["/d/gateway.log"]), &name));
        assert!(!concerns(&event(&["/d/keys.json.state"]), &name));
        assert!(!concerns(&event(&["/d/keys.json.lock"]), &name));
    }

    #[test]
    fn reading_the_file_is_no_change_writing_it_is() {
        use notify::event::{AccessKind, AccessMode};
        let name = OsString::from("keys.json");
        let access = |kind| {
            Ok(notify::Event::new(EventKind::Access(kind)).add_path(PathBuf::from("/d/keys.json")))
        };
        assert!(!concerns(&access(AccessKind::Open(AccessMode::Any)), &name));
        assert!(!concerns(&access(AccessKind::Read), &name));
        assert!(!concerns(
            &access(AccessKind::Close(AccessMode::Read)),
            &name
        ));
        assert!(concerns(
            &access(AccessKind::Close(AccessMode::Write)),
            &name
        ));
    }

    #[test]
    fn a_failure_is_news_once() {
        let l = FailureLatch::default();
        assert!(!l.succeeded());
        assert!(l.failed("denied"));
        assert!(!l.failed("denied"));
        assert!(l.failed("invalid"));
        assert!(l.succeeded());
        assert!(l.failed("invalid"));
    }
}
