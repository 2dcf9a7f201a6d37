//! Warnings before keys expire: one log line per key at 7, 3 and 1 days before its expiry,
//! so an operator hears about it before its users do.

use crate::gateway::Gateway;
use crate::time::Timestamp;
use std::collections::HashSet;
use std::sync::Mutex;

const THRESHOLDS_DAYS: [u64; 3] = [1, 3, 7];

static WARNED: Mutex<Option<HashSet<(String, u64)>>> = Mutex::new(None);

/// Logs each key that has crossed a threshold since the last call, and returns them as
/// (key id, days). Cheap: run it often.
pub fn warn_expiring(gw: &Gateway) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let live = gw.live();
    let Some(idx) = &live.keys else { return out };
    let now = Timestamp::now();
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    let warned = warned.get_or_insert_with(HashSet::new);
    for e in idx.entries() {
        let Some(exp) = e.expires_at else { continue };
        if exp <= now || e.revoked_at.is_some() {
            continue;
        }
        let left = now.until(exp);
        // The smallest threshold the key is within is the one to report.
        if let Some(days) = THRESHOLDS_DAYS.iter().copied().find(|d| left <= d * 86_400) {
            if warned.insert((e.id.to_string(), days)) {
                tracing::warn!(
                    key_id = %e.id, key_name = %e.name, expires_at = %exp, days,
                    "API key expires within {days} day(s); rotate it or extend it"
                );
                out.push((e.id.to_string(), days));
            }
        }
    }
    out
}
