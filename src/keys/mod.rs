//! The key set: token format, scopes, the key file on disk, and the in-memory index.

pub mod index;
pub mod scope;
pub mod store;
pub mod token;
