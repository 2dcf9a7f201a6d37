//! Runtime state that must survive a restart but never goes in the key file: per-key lifetime
//! usage and last-used times, and in file mode the hourly usage buckets and the quota counts
//! of the current day and month (`usage::buckets`). Kept in memory (atomics in each key's
//! state, the usage store) and written to `[keys] state_file` on an interval and at
//! shutdown, atomically.
//!
//! Version 2 added `counters`, `hours` and `quota` beside version 1's `keys`; a version 1
//! file reads as one without buckets. A file of a later version is refused (and so never
//! overwritten by this one's save, which needs it read first).

use crate::gateway::Gateway;
use crate::keys::usage::UsageSnapshot;
use crate::time::Timestamp;
use crate::usage::buckets::Saved;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The version this build writes; it reads it and every earlier one.
const VERSION: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub saved_at: Option<Timestamp>,
    #[serde(default)]
    pub keys: HashMap<String, UsageSnapshot>,
    #[serde(flatten)]
    pub usage: Saved,
}

/// Reads a state file; a missing one is empty.
pub fn load(path: &Path) -> std::io::Result<StateFile> {
    match std::fs::read(path) {
        Ok(b) => {
            let f: StateFile = serde_json::from_slice(&b).map_err(std::io::Error::other)?;
            if f.version > VERSION {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    format!(
                        "written by a later keygate (state file version {}, this one reads up to {VERSION})",
                        f.version
                    ),
                ));
            }
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(e),
    }
}

/// Reads a state file's lifetime usage per key; a missing file is empty.
pub fn load_state(path: &Path) -> std::io::Result<HashMap<String, UsageSnapshot>> {
    load(path).map(|f| f.keys)
}

/// A cheap summary of all counters: when it has not moved, there is nothing to save.
fn fingerprint(gw: &Gateway) -> u64 {
    let live = gw.live();
    let buckets = gw.usage.changes().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    buckets.wrapping_add(live.keys.as_ref().map_or(0, |idx| {
        idx.used().iter().fold(0u64, |acc, (_, s)| {
            let u = &s.usage;
            acc.wrapping_add(u.requests.load(std::sync::atomic::Ordering::Relaxed))
                .wrapping_add(u.prompt_tokens.load(std::sync::atomic::Ordering::Relaxed))
                .wrapping_add(
                    u.completion_tokens
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
        })
    }))
}

/// Writes the counters of every key that has been used, unless nothing changed since the
/// write that left `last` (a fingerprint of the counters, which this function keeps up to
/// date; its owner is the maintenance task). Returns whether it wrote.
pub fn save_if_changed(gw: &Gateway, path: &Path, last: &mut u64) -> std::io::Result<bool> {
    let now = fingerprint(gw);
    if now == *last {
        return Ok(false);
    }
    save_state(gw, path)?;
    *last = now;
    Ok(true)
}

/// Writes the current counters of every key in the index that has been used.
pub fn save_state(gw: &Gateway, path: &Path) -> std::io::Result<()> {
    let live = gw.live();
    let Some(idx) = &live.keys else {
        return Ok(());
    };
    // A file this version cannot read is replaced, as at start; one of a later version is not.
    let before = match load(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return Err(e),
        Err(_) => StateFile::default(),
    };
    let mut keys = before.keys;
    for (id, state) in idx.used() {
        let snap = state.usage.snapshot();
        if snap != UsageSnapshot::default() {
            keys.insert(id.to_string(), snap);
        }
    }
    let file = StateFile {
        version: VERSION,
        saved_at: Some(Timestamp::now()),
        keys,
        // In cluster mode the buckets are in Redis: whatever the file held stays.
        usage: gw.usage.saved().unwrap_or(before.usage),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".keygate-state")
        .tempfile_in(dir)?;
    serde_json::to_writer(&mut tmp, &file).map_err(std::io::Error::other)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Adds saved counters into the loaded index, and saved buckets and quota counts into the
/// usage store (once, at start, before the first request).
pub fn restore(gw: &Gateway, path: &Path) {
    let saved = match load(path) {
        Ok(s) => s,
        // A file that does not parse (cut short, edited) is moved aside before the first save
        // replaces it: its counts are lost to this run, not destroyed.
        Err(e) if e.kind() == std::io::ErrorKind::Other => {
            let kept = crate::keys::store::beside(path, ".corrupt");
            match std::fs::rename(path, &kept) {
                Ok(()) => {
                    tracing::error!(path = %path.display(), kept = %kept.display(), error = %e, "usage state file unreadable, kept aside; starting from zero (lifetime usage, usage history and this day's and month's quota counts)")
                }
                Err(r) => {
                    tracing::error!(path = %path.display(), error = %e, rename_error = %r, "usage state file unreadable and cannot be kept aside; starting from zero, and the next save replaces it")
                }
            }
            return;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "usage state file unreadable; starting from zero");
            return;
        }
    };
    let live = gw.live();
    if let Some(idx) = &live.keys {
        for (id, snap) in &saved.keys {
            if let Some(state) = idx.state_for(id) {
                state.usage.restore(snap);
            }
        }
        let skipped = gw.usage.restore(&saved.usage, idx);
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "usage state file: entries that cannot be read were skipped");
        }
    }
}
