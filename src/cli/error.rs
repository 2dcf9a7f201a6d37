//! How a command fails, and its exit status.

use crate::config::ConfigError;
use crate::keys::error::StoreError;
use crate::ops::audit::AuditError;

/// Why a command failed. `Usage` (exit status 2) is a mistake in what was typed; everything
/// else (exit status 1) is the world: the config, the key file, the disk.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// The process exit status: 2 for a usage error (as clap's own), 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}
