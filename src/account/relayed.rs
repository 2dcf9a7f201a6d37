//! The estimate of what an event stream cut short used: the tokens of the text it relayed
//! (`ContentCounter`), and of a prompt, from its bytes (`CHARS_PER_TOKEN`).

/// The JSON fields whose string values are generated text: chat deltas and messages
/// (`content`, `reasoning_content`, `reasoning`, `refusal`, tool-call `arguments`),
/// completions (`text`) and the Responses API's text deltas (`delta`).
const CONTENT_FIELDS: [&[u8]; 7] = [
    b"content",
    b"reasoning_content",
    b"reasoning",
    b"refusal",
    b"arguments",
    b"text",
    b"delta",
];
const LONGEST_FIELD: usize = 17;

/// Characters a token stands for, in the estimate of a stream cut short.
pub const CHARS_PER_TOKEN: u64 = 4;

/// Estimates the completion tokens of the text an event stream has relayed so far, for a
/// stream that ends before the upstream reports its usage (the client left, the upstream
/// broke, the key was revoked).
///
/// Each non-empty string value of a `CONTENT_FIELDS` field counts one token per 4
/// characters, and at least one: a streamed event usually carries one token, often of fewer
/// than 4 characters. A byte scan, not a JSON parse: it jumps from quote to quote with
/// `memchr`, keeps its place across chunk boundaries (no carried bytes, nothing counted
/// twice), and treats a raw newline, which a JSON string cannot hold, as the end of any
/// string, so a stray quote in an SSE comment cannot throw it off for longer than a line.
/// Characters are UTF-8 characters; an escape (`\n`, `\"`) counts as one, and the digits
/// of a `\uXXXX` escape are counted as well (an overestimate, on the safe side).
#[derive(Debug, Default)]
pub struct ContentCounter {
    lex: Lex,
    /// The start of the string being read, while it may still be a field name.
    name: [u8; LONGEST_FIELD],
    name_len: usize,
    /// Characters of the content value being read.
    chars: u64,
    tokens: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between strings, nothing pending.
    #[default]
    Out,
    /// A content field's name closed: a `:` makes the next string its value.
    AfterName,
    /// `"name":` seen: the next string is counted.
    BeforeValue,
    /// In a string that may be a field name (collected in `name`).
    Name { escape: bool },
    /// In a string that is not counted.
    Skip { escape: bool },
    /// In a content value.
    Value { escape: bool },
}

impl ContentCounter {
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            buf = match self.lex {
                Lex::Out => match memchr::memchr(b'"', buf) {
                    Some(i) => {
                        self.start_string(false);
                        &buf[i + 1..]
                    }
                    None => &[],
                },
                Lex::AfterName | Lex::BeforeValue => {
                    let b = buf[0];
                    match (self.lex, b) {
                        (_, b' ' | b'\t' | b'\r' | b'\n') => {}
                        (Lex::AfterName, b':') => self.lex = Lex::BeforeValue,
                        (Lex::BeforeValue, b'"') => self.start_string(true),
                        (_, b'"') => self.start_string(false),
                        _ => self.lex = Lex::Out,
                    }
                    &buf[1..]
                }
                Lex::Name { escape } | Lex::Skip { escape } | Lex::Value { escape } => {
                    let mut rest = buf;
                    if escape {
                        // The escaped byte (one character, counted with its backslash).
                        rest = &rest[1..];
                        self.set_escape(false);
                    }
                    self.in_string(rest)
                }
            };
        }
    }

    fn start_string(&mut self, value: bool) {
        if value {
            self.chars = 0;
            self.lex = Lex::Value { escape: false };
        } else {
            self.name_len = 0;
            self.lex = Lex::Name { escape: false };
        }
    }

    fn set_escape(&mut self, on: bool) {
        self.lex = match self.lex {
            Lex::Name { .. } | Lex::Skip { .. } => Lex::Skip { escape: on },
            Lex::Value { .. } => Lex::Value { escape: on },
            other => other,
        };
    }

    /// Reads string bytes up to the closing quote, a backslash or a raw newline; returns the
    /// rest of `buf`.
    fn in_string<'a>(&mut self, buf: &'a [u8]) -> &'a [u8] {
        let end = memchr::memchr3(b'"', b'\\', b'\n', buf);
        let span = &buf[..end.unwrap_or(buf.len())];
        match self.lex {
            Lex::Name { .. } => {
                match self.name.get_mut(self.name_len..self.name_len + span.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(span);
                        self.name_len += span.len();
                    }
                    None => self.lex = Lex::Skip { escape: false },
                }
            }
            Lex::Value { .. } => {
                // UTF-8 characters: every byte but continuation bytes.
                self.chars += span.iter().filter(|b| (**b as i8) >= -0x40).count() as u64;
            }
            _ => {}
        }
        let Some(i) = end else {
            return &[];
        };
        match buf[i] {
            b'\\' => {
                if matches!(self.lex, Lex::Value { .. }) {
                    self.chars += 1;
                }
                self.set_escape(true);
            }
            b'"' => self.close_string(),
            // A raw newline cannot be inside a JSON string: we are out of step; start over.
            _ => {
                self.end_value();
                self.lex = Lex::Out;
            }
        }
        &buf[i + 1..]
    }

    fn close_string(&mut self) {
        self.lex = match self.lex {
            Lex::Name { .. } if CONTENT_FIELDS.contains(&&self.name[..self.name_len]) => {
                Lex::AfterName
            }
            Lex::Value { .. } => {
                self.end_value();
                Lex::Out
            }
            _ => Lex::Out,
        };
    }

    fn end_value(&mut self) {
        if matches!(self.lex, Lex::Value { .. }) && self.chars > 0 {
            self.tokens += (self.chars / CHARS_PER_TOKEN).max(1);
        }
        self.chars = 0;
    }

    /// The estimate so far, a value cut off mid-string included.
    pub fn tokens(&self) -> u64 {
        let open = match self.lex {
            Lex::Value { .. } if self.chars > 0 => (self.chars / CHARS_PER_TOKEN).max(1),
            _ => 0,
        };
        self.tokens + open
    }
}
