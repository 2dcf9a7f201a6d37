//! The key set: the token format, scopes and model patterns, one key's record, the operations
//! that change it (`ops`, with edits in `patch`), the key file (its one reader and writer) and
//! the store that writes it, and the in-memory index the gateway looks
//! keys up in, with each key's runtime state.

pub mod annotations;
pub mod backend;
pub mod entry;
pub mod error;
pub mod extra;
pub mod file;
pub mod index;
pub mod list;
pub mod models;
pub mod ops;
pub mod patch;
pub mod reader;
#[cfg(test)]
mod reader_tests;
pub mod record;
mod replace;
pub mod scope;
pub mod shared;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod store;
mod syntax;
pub mod token;
pub mod tokens;
pub mod usage;
pub mod view;
pub mod writer;
