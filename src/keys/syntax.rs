//! Where a key file's JSON went wrong, told as if the whole file had been parsed at once (line
//! and column of the file) and, for a record, which record and field: the streaming reader
//! (`keys::reader`) parses one record's text at a time, so its errors are placed here.

use crate::keys::error::StoreError;
use crate::keys::record::KeyRecord;
use std::path::Path;

/// An error in the file's own frame (outside any record): serde_json's line and column.
pub(crate) fn syntax_error(path: &Path, e: &serde_json::Error) -> StoreError {
    StoreError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

/// A serde_json message without its " at line L column C" (reported in fields of their own).
pub(crate) fn strip_position(msg: &str) -> String {
    msg.rsplit_once(" at line ")
        .map_or(msg, |(head, _)| head)
        .to_string()
}

/// A serde_json error in one record's text, with where that text starts in the file and the
/// path of the field it is about (`keys[3].revoked_at`).
pub(crate) struct Placed {
    error: serde_json::Error,
    /// 1-based line, and bytes before the record on that line.
    line: usize,
    column: usize,
    field: String,
}

impl Placed {
    /// Record number `index`, whose text `record` is a slice of `file`, failed with `error`.
    pub(crate) fn new(file: &str, record: &str, index: usize, error: serde_json::Error) -> Placed {
        // The record is a slice of the file: its offset is where it starts.
        let offset = (record.as_ptr() as usize).saturating_sub(file.as_ptr() as usize);
        let before = file.get(..offset).unwrap_or_default();
        let line = 1 + memchr::memchr_iter(b'\n', before.as_bytes()).count();
        let column = offset - before.rfind('\n').map_or(0, |nl| nl + 1);
        Placed {
            error,
            line,
            column,
            field: field_path(record, index),
        }
    }

    /// The error as if the whole file had been parsed at once: same line, same column, and
    /// the field it is about first.
    pub(crate) fn into_error(self, path: &Path) -> StoreError {
        let (l, c) = (self.error.line(), self.error.column());
        StoreError::Syntax {
            path: path.to_path_buf(),
            line: self.line + l.saturating_sub(1),
            column: if l <= 1 { self.column + c } else { c },
            message: format!(
                "{}: {}",
                self.field,
                strip_position(&self.error.to_string())
            ),
        }
    }
}

/// `keys[index]` and the path within the record where parsing `record` stops. Parsed a second
/// time, tracking the path, only once the record is known to be wrong: the reader's own parse
/// of a good record pays nothing for it.
fn field_path(record: &str, index: usize) -> String {
    let mut de = serde_json::Deserializer::from_str(record);
    match serde_path_to_error::deserialize::<_, KeyRecord>(&mut de) {
        Err(e) => match e.path().to_string().as_str() {
            "." | "?" => format!("keys[{index}]"),
            inner => format!("keys[{index}].{inner}"),
        },
        Ok(_) => format!("keys[{index}]"),
    }
}
