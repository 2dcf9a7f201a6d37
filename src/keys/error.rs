//! What goes wrong with a key file: reading it, its contents, or a change to it.

use crate::keys::record::FieldError;
use std::io;
use std::path::PathBuf;

/// What is wrong with a key file or a write to it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("key file {path} is not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("key file {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("key file {path} is read-only ({reason}); manage keys where the file is writable")]
    ReadOnly { path: PathBuf, reason: String },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no key with id `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Rejected(String),
    /// Revoking is final: a revoked key cannot be edited, rotated, disabled or enabled.
    #[error("key `{id}` is revoked and cannot be {doing} (revoking is final)")]
    Revoked { id: String, doing: &'static str },
    /// A value given for a new key is invalid; names the field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The shared key store (Redis) cannot take a write now: unreachable, or refusing writes
    /// until `keygate keys push` (it went backwards). Reads keep being served.
    #[error("the key store is unavailable: {0}")]
    Unavailable(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// Another running replica holds this key snapshot (`keys::snapshot::Claim`).
    #[error(
        "the key snapshot {path} is in use by another running keygate replica (it holds a lock on {lock}); give each replica its own `[keys] file` (in Kubernetes a volume per pod: an emptyDir, or a StatefulSet's volumeClaimTemplates)"
    )]
    SnapshotInUse { path: PathBuf, lock: PathBuf },
}
