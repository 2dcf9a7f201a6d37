//! Runtime state that must survive a restart but never goes in the key file: per-key usage
//! and last-used times. Kept in memory by the request path (atomics in each key's entry) and
//! written to `[keys] state_file` on an interval and at shutdown, atomically.

use crate::gateway::Gateway;
use crate::keys::usage::UsageSnapshot;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    saved_at: Option<Timestamp>,
    keys: HashMap<String, UsageSnapshot>,
}

/// Reads a state file; a missing one is empty.
pub fn load_state(path: &Path) -> std::io::Result<HashMap<String, UsageSnapshot>> {
    match std::fs::read(path) {
        Ok(b) => {
            let f: StateFile = serde_json::from_slice(&b).map_err(std::io::Error::other)?;
            Ok(f.keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e),
    }
}

/// A cheap summary of all counters: when it has not moved, there is nothing to save.
fn fingerprint(gw: &Gateway) -> u64 {
    let live = gw.live();
    live.keys.as_ref().map_or(0, |idx| {
        idx.used().iter().fold(0u64, |acc, (_, s)| {
            let u = &s.usage;
            acc.wrapping_add(u.requests.load(std::sync::atomic::Ordering::Relaxed))
                .wrapping_add(u.prompt_tokens.load(std::sync::atomic::Ordering::Relaxed))
                .wrapping_add(
                    u.completion_tokens
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
        })
    })
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
    let mut keys = load_state(path).unwrap_or_default();
    for (id, state) in idx.used() {
        let snap = state.usage.snapshot();
        if snap != UsageSnapshot::default() {
            keys.insert(id.to_string(), snap);
        }
    }
    let file = StateFile {
        version: 1,
        saved_at: Some(Timestamp::now()),
        keys,
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

/// Adds saved counters into the loaded index (once, at start).
pub fn restore(gw: &Gateway, path: &Path) {
    let saved = match load_state(path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "usage state file unreadable; starting from zero");
            return;
        }
    };
    let live = gw.live();
    if let Some(idx) = &live.keys {
        for (id, snap) in &saved {
            if let Some(state) = idx.state_for(id) {
                state.usage.restore(snap);
            }
        }
    }
}
