//! The ledger: the notifications this gateway has settled (sent, refused by the receiver,
//! given up, or left to another replica) and those waiting to be sent, with their attempts,
//! kept in `<[keys] state_file>.notify` so a restart neither sends one again nor loses one
//! queued. Written whole, atomically (a temporary file renamed over it), after every change;
//! a settled notification is forgotten once it can no longer be found (its `until`).
//!
//! It also holds this replica's id (random, made with the file), which names its claims in
//! Redis (`claim`), so a restarted replica takes up its own claims again.

use super::event::Event;
use crate::keys::store::beside;
use crate::time::Timestamp;
use crate::watch::FailureLatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const VERSION: u32 = 1;

/// How a notification was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settled {
    Sent,
    Rejected,
    GaveUp,
    Elsewhere,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub result: Settled,
    pub at: Timestamp,
    /// Forgotten after this.
    pub until: Timestamp,
}

/// A notification waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub event: Event,
    pub until: Timestamp,
    /// Unix milliseconds when it was queued (it is given up a day later).
    pub queued_ms: u64,
    pub attempts: u32,
    /// Unix milliseconds of its next attempt.
    pub next_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    replica: String,
    #[serde(default)]
    done: BTreeMap<String, Done>,
    #[serde(default)]
    pending: BTreeMap<String, Pending>,
}

pub struct Ledger {
    path: PathBuf,
    state: Mutex<File>,
    /// One write at a time, each of the state as it is when the write starts.
    writing: tokio::sync::Mutex<()>,
    failures: FailureLatch,
}

/// A new replica id: 16 hex digits.
fn new_replica() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No randomness: the time still tells replicas apart well enough to claim by.
        b = crate::time::Timestamp::now().0.to_be_bytes();
    }
    format!("r{}", hex::encode(b))
}

impl Ledger {
    /// The ledger at `path`: read if it exists; a fresh one (a new replica id) if not, or if
    /// it cannot be read (logged: what it held may be notified again).
    pub fn open(path: PathBuf) -> Ledger {
        let file = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<File>(&b) {
                Ok(f) if f.version <= VERSION && !f.replica.is_empty() => Some(f),
                Ok(f) => {
                    tracing::warn!(path = %path.display(), version = f.version, "notification ledger of another keygate version; starting a new one (notifications it holds may be sent again)");
                    None
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "notification ledger unreadable; starting a new one (notifications it holds may be sent again)");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "notification ledger unreadable; starting a new one (notifications it holds may be sent again)");
                None
            }
        };
        let file = file.unwrap_or_else(|| File {
            version: VERSION,
            replica: new_replica(),
            ..File::default()
        });
        Ledger {
            path,
            state: Mutex::new(file),
            writing: tokio::sync::Mutex::new(()),
            failures: FailureLatch::default(),
        }
    }

    /// `<state_file>.notify`.
    pub fn path_for(state_file: &Path) -> PathBuf {
        beside(state_file, ".notify")
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn replica(&self) -> String {
        self.lock().replica.clone()
    }

    /// Settled or waiting.
    pub fn knows(&self, id: &str) -> bool {
        let f = self.lock();
        f.done.contains_key(id) || f.pending.contains_key(id)
    }

    /// Forgets what was settled and can no longer be found at `now`. Whether it forgot any.
    pub fn prune(&self, now: Timestamp) -> bool {
        let mut f = self.lock();
        let before = f.done.len();
        f.done.retain(|_, d| d.until >= now);
        f.done.len() != before
    }

    pub fn queue(&self, event: Event, until: Timestamp, now_ms: u64) {
        let id = event.id.clone();
        self.lock().pending.insert(
            id,
            Pending {
                event,
                until,
                queued_ms: now_ms,
                attempts: 0,
                next_ms: now_ms,
            },
        );
    }

    /// Settles a waiting notification; returns it.
    pub fn settle(&self, id: &str, result: Settled, at: Timestamp) -> Option<Pending> {
        let mut f = self.lock();
        let p = f.pending.remove(id)?;
        f.done.insert(
            id.to_string(),
            Done {
                result,
                at,
                until: p.until,
            },
        );
        Some(p)
    }

    /// Remembers a notification another replica sends.
    pub fn elsewhere(&self, id: &str, at: Timestamp, until: Timestamp) {
        let mut f = self.lock();
        f.pending.remove(id);
        f.done.insert(
            id.to_string(),
            Done {
                result: Settled::Elsewhere,
                at,
                until,
            },
        );
    }

    /// The waiting notification to try next: the earliest due.
    pub fn next(&self) -> Option<Pending> {
        self.lock()
            .pending
            .values()
            .min_by_key(|p| (p.next_ms, p.queued_ms))
            .cloned()
    }

    /// Counts a failed attempt and sets the next.
    pub fn retry_at(&self, id: &str, next_ms: u64) {
        if let Some(p) = self.lock().pending.get_mut(id) {
            p.attempts += 1;
            p.next_ms = next_ms;
        }
    }

    /// Makes everything waiting due by `now_ms` (the receiver answers again).
    pub fn all_due(&self, now_ms: u64) {
        for p in self.lock().pending.values_mut() {
            p.next_ms = p.next_ms.min(now_ms);
        }
    }

    pub fn pending_ids(&self) -> Vec<String> {
        self.lock().pending.keys().cloned().collect()
    }

    #[cfg(test)]
    pub fn settled(&self, id: &str) -> Option<Done> {
        self.lock().done.get(id).cloned()
    }

    /// Writes the ledger as it is now. A failure is logged once per reason; the ledger in
    /// memory still keeps this process from sending anything twice.
    pub async fn save(&self) {
        let _one = self.writing.lock().await;
        let bytes = match serde_json::to_vec(&*self.lock()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "notification ledger not serialisable");
                return;
            }
        };
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await;
        match written {
            Ok(Ok(())) => {
                if self.failures.succeeded() {
                    tracing::info!(path = %self.path.display(), "notification ledger saved again");
                }
            }
            Ok(Err(e)) => {
                if self.failures.failed(&e.to_string()) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot save the notification ledger: after a restart, notifications may be sent again or lost");
                }
            }
            Err(_) => {}
        }
    }
}

/// A temporary file in the same directory, synced, renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".keygate-notify")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::event::{Event, KeyFacts, Kind};
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            event: Kind::Revoked,
            at: Timestamp(100),
            key: KeyFacts {
                id: "key_0000000000000001".into(),
                name: "n".into(),
                masked_key: None,
                description: None,
                metadata: Default::default(),
                expires_at: None,
                status: "revoked".into(),
            },
            days_left: None,
            quota: None,
        }
    }

    #[tokio::test]
    async fn what_is_settled_and_pending_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = Ledger::path_for(&dir.path().join("keys.json.state"));
        assert!(path.ends_with("keys.json.state.notify"));
        let l = Ledger::open(path.clone());
        let replica = l.replica();
        l.queue(event("a"), Timestamp(1_000), 5);
        l.queue(event("b"), Timestamp(2_000), 7);
        l.retry_at("a", 50);
        assert_eq!(l.next().unwrap().event.id, "b", "the earliest due");
        assert!(l.settle("b", Settled::Sent, Timestamp(10)).is_some());
        l.elsewhere("c", Timestamp(11), Timestamp(500));
        l.save().await;

        let l = Ledger::open(path.clone());
        assert_eq!(l.replica(), replica, "the replica id is kept");
        assert!(l.knows("a") && l.knows("b") && l.knows("c") && !l.knows("d"));
        let a = l.next().unwrap();
        assert_eq!((a.event.id.as_str(), a.attempts, a.next_ms), ("a", 1, 50));
        assert_eq!(l.settled("b").unwrap().result, Settled::Sent);
        assert!(l.prune(Timestamp(1_000)), "c is forgotten past its until");
        assert!(!l.knows("c") && l.knows("b") && l.knows("a"));

        std::fs::write(&path, "{not json").unwrap();
        let fresh = Ledger::open(path);
        assert!(!fresh.knows("a"));
        assert_ne!(fresh.replica(), replica);
    }
}
