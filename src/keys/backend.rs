//! The one way a key changes, whatever holds the keys: `Store::File` (the key file, locked
//! and rewritten atomically: `keys::store`) or `Store::Redis` (the shared store, one atomic
//! script: `keys::shared`). The CLI and the management API both write through it.

use crate::config::{KeysConfig, StoreMode};
use crate::keys::error::StoreError;
use crate::keys::file::KeyFile;
use crate::keys::ops::{Done, Op};
use crate::keys::shared::RedisStore;
use crate::keys::store::KeyStore;
use crate::time::Timestamp;
use std::sync::Arc;

/// Where key records are written and read.
#[derive(Debug, Clone)]
pub enum Store {
    File(KeyStore),
    Redis(Arc<RedisStore>),
}

impl Store {
    /// The store `[keys]` names (for the CLI: a connection of its own to Redis).
    pub fn of(keys: &KeysConfig) -> Result<Store, StoreError> {
        match &keys.store {
            StoreMode::File => Ok(Store::File(KeyStore::new(&keys.file))),
            StoreMode::Redis(cfg) => Ok(Store::Redis(Arc::new(RedisStore::new(cfg)?))),
        }
    }

    /// Runs one operation atomically; with the store version it made (Redis, when
    /// something changed).
    pub fn apply(
        &self,
        op: &Op,
        prefix: &str,
        now: Timestamp,
    ) -> Result<(Done, Option<u64>), StoreError> {
        match self {
            Store::File(f) => f.apply(op, prefix, now).map(|d| (d, None)),
            Store::Redis(r) => r.apply(op, prefix, now),
        }
    }

    /// Why the shared store is marked behind a replica's snapshot, when it is: what it holds
    /// may lack keys and revokes the replicas have. `None` for a key file, a store that is
    /// not, or one that does not answer (the read that follows says so).
    pub fn diverged(&self) -> Option<String> {
        let Store::Redis(r) = self else { return None };
        let mut con = r.connect(std::time::Duration::from_secs(3)).ok()?;
        r.position(&mut con).ok()?.diverged
    }

    /// Every record (the key file must exist; the Redis store may be empty).
    pub fn load(&self) -> Result<KeyFile, StoreError> {
        self.load_noting().map(|(file, _)| file)
    }

    /// `load`, with the ids of the shared store's records left out because this version
    /// cannot read them (`RedisStore::read_all`): the rest are listed, checked and served
    /// rather than none.
    pub fn load_noting(&self) -> Result<(KeyFile, Vec<String>), StoreError> {
        match self {
            Store::File(f) => Ok((f.load_existing()?, Vec::new())),
            Store::Redis(r) => {
                let (keys, left_out) = r.read_all()?;
                let file = KeyFile {
                    keys,
                    ..KeyFile::empty()
                };
                Ok((file, left_out))
            }
        }
    }
}
