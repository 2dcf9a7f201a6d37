//! The follower's changes on their way to disk: journaled before they are put in force, or,
//! while the disk refuses them, kept in memory with the snapshot set aside
//! (`keys::snapshot`), and put back with it once the disk takes them.

use crate::keys::record::KeyRecord;
use crate::keys::shared::sync::KeySync;
use crate::keys::snapshot::Position;
use std::time::{Duration, Instant};

/// How often a snapshot set aside is tried again.
const RESTORE_EVERY: Duration = Duration::from_secs(5);

/// Changes put in force that could not be journaled, and when to try the disk again.
pub struct Unjournaled {
    records: Vec<KeyRecord>,
    retry_at: Instant,
}

/// Journals `records` before they are put in force; whether they are durable. When the disk
/// refuses them (or refused earlier ones, not yet put back), they are kept in `pending` and
/// the snapshot is set aside.
pub fn append(
    pending: &mut Option<Unjournaled>,
    sync: &KeySync,
    records: &[KeyRecord],
    position: &Position,
) -> bool {
    if let Some(u) = pending {
        u.records.extend_from_slice(records);
        return false;
    }
    let Err(e) = sync.snapshot.append(records, position) else {
        return true;
    };
    let aside = match sync.snapshot.set_aside() {
        Ok(()) => "set aside until the disk takes them, so that a restart waits for the store rather than serve keys from before them".to_string(),
        Err(a) => format!("and it cannot be set aside either ({a}): a restart while the store is down would serve keys from before them"),
    };
    tracing::error!(error = %e, changes = records.len(), "key snapshot cannot take changes from the store: they are in force here all the same; the snapshot is {aside}");
    sync.set_snapshot_error(Some(e.to_string()));
    *pending = Some(Unjournaled {
        records: records.to_vec(),
        retry_at: Instant::now() + RESTORE_EVERY,
    });
    false
}

/// Puts a snapshot set aside back with the changes it lacks, when it is time to try.
pub fn restore(pending: &mut Option<Unjournaled>, sync: &KeySync) {
    let Some(u) = pending.as_mut().filter(|u| u.retry_at <= Instant::now()) else {
        return;
    };
    match sync.snapshot.restore(&u.records, &sync.applied()) {
        Ok(()) => {
            tracing::info!(
                changes = u.records.len(),
                "key snapshot put back with the changes it lacked"
            );
            *pending = None;
            sync.set_snapshot_error(None);
        }
        Err(e) => {
            u.retry_at = Instant::now() + RESTORE_EVERY;
            sync.set_snapshot_error(Some(e.to_string()));
        }
    }
}
