//! Where the gateway's index reads key-file text from: the file itself, or text already in
//! memory (tests, benchmarks, a shared store's snapshot).
//!
//! A file in the writer's layout is read a line at a time (`reader::read_lines`) through a
//! small buffer: a reload of a 100k-key file never holds its 30 MB of text, so it pays
//! neither their page faults nor, at the end, the unmapping that held the core for
//! milliseconds in one piece. Any other layout is read whole and judged by `reader::read_raw`.

use crate::keys::error::StoreError;
use crate::keys::reader::{self, Visit};
use crate::keys::store::KeyStore;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

/// How much of the file the line reader holds.
const LINE_BUFFER: usize = 64 << 10;

/// Key-file text to read.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The key file on disk, which must exist.
    File(&'a KeyStore),
    /// Text in memory; `path` names it in messages.
    Text { path: &'a Path, text: &'a str },
}

impl Source<'_> {
    pub fn path(&self) -> &Path {
        match self {
            Source::File(store) => store.path(),
            Source::Text { path, .. } => path,
        }
    }

    /// The text's length in bytes, as far as is known (0 when it is not): sizes what a
    /// reader builds.
    pub fn len_hint(&self) -> usize {
        match self {
            Source::File(store) => {
                std::fs::metadata(store.path()).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0))
            }
            Source::Text { text, .. } => text.len(),
        }
    }

    /// Reads with the fastest reader that can judge the text: a line at a time for the
    /// writer's layout, else whole with `reader::read_raw` and a visitor made afresh (the
    /// first one saw part of it). Returns the visitor that read the whole text.
    pub fn read_with<V: Visit>(&self, fresh: impl Fn() -> V) -> Result<V, StoreError> {
        let store = match self {
            Source::Text { path, text } => {
                return reader::read_with(path, text.as_bytes(), || Ok(Cow::Borrowed(*text)), fresh)
            }
            Source::File(store) => store,
        };
        let file = match File::open(store.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(store.not_found()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: store.path().to_path_buf(),
                    source,
                })
            }
        };
        // The whole text is read again when the lines will not do (a change since is read by
        // the next reload, which its notice starts).
        let whole = || {
            let text = store.read_text()?.ok_or_else(|| store.not_found())?;
            Ok(Cow::Owned(text))
        };
        let lines = BufReader::with_capacity(LINE_BUFFER, file);
        reader::read_with(store.path(), lines, whole, fresh)
    }
}
