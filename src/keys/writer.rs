//! The key file's one writer: the layout every write (CLI, API, bulk) produces.

use crate::keys::file::{KeyFile, FILE_VERSION};
use crate::keys::record::KeyRecord;
use std::io::{self, Write};

/// Writes a key file as keygate writes it: one JSON document, one compact record per line,
///
/// ```text
/// {"version": 1, "keys": [
/// {"id":"key_…","name":"app",…},
/// {"id":"key_…","name":"other",…}
/// ]}
/// ```
///
/// so a diff shows one line per changed key, a million keys take ~300 bytes each (pretty
/// printing took half as much again), and `jq` reads it. A record's JSON never holds a raw
/// newline (strings escape theirs), so a line is a record.
pub struct Writer<W: Write> {
    out: W,
    count: usize,
}

impl<W: Write> Writer<W> {
    /// Starts the document.
    pub fn new(mut out: W) -> io::Result<Writer<W>> {
        write!(out, "{{\"version\": {FILE_VERSION}, \"keys\": [")?;
        Ok(Writer { out, count: 0 })
    }

    /// Writes one record on its own line.
    pub fn record(&mut self, rec: &KeyRecord) -> io::Result<()> {
        self.out
            .write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut self.out, rec)?;
        self.count += 1;
        Ok(())
    }

    /// Ends the document; the writer back, to flush and sync.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n]}\n")?;
        Ok(self.out)
    }
}

/// The text of a whole file in memory, as [`Writer`] writes it.
pub fn file_text(file: &KeyFile) -> String {
    let mut out = Vec::with_capacity(file.keys.len() * 320 + 64);
    let written = Writer::new(&mut out).and_then(|mut w| {
        file.keys.iter().try_for_each(|k| w.record(k))?;
        w.finish()
    });
    // Writing to memory cannot fail, and records always serialise (plain data, string keys),
    // so there is no error to report.
    let _ = written;
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::record::NewKey;
    use crate::time::Timestamp;
    use std::path::Path;

    #[test]
    fn one_record_a_line_and_read_back_the_same() {
        let mut file = KeyFile::empty();
        let empty = file_text(&file);
        assert_eq!(empty, "{\"version\": 1, \"keys\": [\n]}\n");
        assert_eq!(KeyFile::parse(&empty, Path::new("k")).unwrap(), file);
        for name in ["a", "b"] {
            let new = NewKey {
                name: name.into(),
                description: Some("about a".into()),
                ..NewKey::default()
            };
            file.create(new, "sk_kg", Timestamp(1_000)).unwrap();
        }
        // A hand-edited name may hold a newline: still one line a record.
        file.keys[1].name = "line\nbreak\u{2028}".into();
        let text = file_text(&file);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), file.keys.len() + 2, "{text}");
        assert_eq!(lines[0], "{\"version\": 1, \"keys\": [");
        assert_eq!(*lines.last().unwrap(), "]}");
        for (line, rec) in lines[1..].iter().zip(&file.keys) {
            let line = line.strip_suffix(',').unwrap_or(line);
            assert_eq!(&serde_json::from_str::<KeyRecord>(line).unwrap(), rec);
        }
        assert_eq!(KeyFile::parse(&text, Path::new("k")).unwrap(), file);
    }
}
