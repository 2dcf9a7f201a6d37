//! What an upstream's answer says it used, read as it streams past without buffering it.
//!
//! `UsageScanner` follows the answer's JSON structure and takes `prompt_tokens` and
//! `completion_tokens` (the Responses API's `input_tokens` and `output_tokens`) only where an
//! upstream reports usage: in the `usage` object of the answer or of an event
//! (`{"usage":{…}}`), or of the response an event carries (`{"response":{"usage":{…}}}`).
//! Where they stand matters: upstreams echo what the client sent (the Responses API sends the
//! request's `tools`, JSON schemas and all, back in `response.created`, vLLM a request's
//! `kv_transfer_params`), so a client can put members with those names anywhere deeper, and a
//! count found there would be believed over the estimate of a stream it then leaves.
//! (`relayed::ContentCounter` estimates the tokens of the text an event stream relayed, for a
//! stream cut short.)

use crate::keys::tokens::MAX_COUNT;
use crate::keys::usage::Tokens;

/// The longest member name the scanner tells apart (`completion_tokens`).
const LONGEST_NAME: usize = 17;

/// Finds the last usage counts in a byte stream fed chunk by chunk. Its state is a few bytes
/// inline: no allocation per answer, nothing carried but where it is.
#[derive(Debug, Default)]
pub struct UsageScanner {
    at: At,
    /// Objects open around the current position (saturating: only 1 to 3 matter).
    depth: u32,
    /// For the objects at depth 1 to 3: the member name each was opened under (`opened`),
    /// and the last member name read inside it (`last`).
    opened: [Member; 4],
    last: [Member; 4],
    /// The string being read, while it may still be a member name the scanner knows.
    name: [u8; LONGEST_NAME],
    name_len: usize,
    name_fits: bool,
    value: u64,
    prompt: Option<u64>,
    completion: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Between tokens, nothing pending.
    #[default]
    Between,
    /// In a string (`escape`: the last byte was a backslash).
    InString { escape: bool },
    /// A string closed: a `:` makes it a member's name.
    AfterString,
    /// A usage count's name and colon: its number comes next.
    BeforeNumber(Count),
    /// Reading a usage count's digits.
    Digits(Count),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Prompt,
    Completion,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Member {
    #[default]
    Other,
    Usage,
    Response,
}

impl UsageScanner {
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            buf = match self.at {
                At::Between => match memchr::memchr3(b'"', b'{', b'}', buf) {
                    Some(i) => {
                        match buf[i] {
                            b'"' => self.open_string(),
                            b'{' => self.open_object(),
                            _ => self.depth = self.depth.saturating_sub(1),
                        }
                        &buf[i + 1..]
                    }
                    None => &[],
                },
                At::InString { escape } => {
                    let rest = if escape {
                        self.name_fits = false; // a name with an escape is none we know
                        self.at = At::InString { escape: false };
                        &buf[1..]
                    } else {
                        buf
                    };
                    self.in_string(rest)
                }
                At::AfterString => match buf[0] {
                    b' ' | b'\t' | b'\r' | b'\n' => &buf[1..],
                    b':' => {
                        self.member();
                        &buf[1..]
                    }
                    // The string was a value: the byte is read again, between tokens.
                    _ => {
                        self.at = At::Between;
                        buf
                    }
                },
                At::BeforeNumber(c) => match buf[0] {
                    b' ' | b'\t' | b'\r' | b'\n' => &buf[1..],
                    d @ b'0'..=b'9' => {
                        self.value = u64::from(d - b'0');
                        self.at = At::Digits(c);
                        &buf[1..]
                    }
                    _ => {
                        self.at = At::Between;
                        buf
                    }
                },
                At::Digits(c) => {
                    let n = buf.iter().take_while(|b| b.is_ascii_digit()).count();
                    for d in &buf[..n] {
                        self.value = self
                            .value
                            .saturating_mul(10)
                            .saturating_add(u64::from(d - b'0'))
                            .min(MAX_COUNT);
                    }
                    // A number is whole once something follows it: the next chunk may go on.
                    if n < buf.len() {
                        *match c {
                            Count::Prompt => &mut self.prompt,
                            Count::Completion => &mut self.completion,
                        } = Some(self.value);
                        self.at = At::Between;
                    }
                    &buf[n..]
                }
            };
        }
    }

    fn open_string(&mut self) {
        self.name_len = 0;
        self.name_fits = true;
        self.at = At::InString { escape: false };
    }

    fn open_object(&mut self) {
        self.depth = self.depth.saturating_add(1);
        let d = self.depth as usize;
        if (1..self.opened.len()).contains(&d) {
            self.opened[d] = self.last[d - 1];
            self.last[d] = Member::Other;
        }
    }

    /// Reads string bytes up to the closing quote, a backslash or a raw newline; returns the
    /// rest of `buf`.
    fn in_string<'a>(&mut self, buf: &'a [u8]) -> &'a [u8] {
        let end = memchr::memchr3(b'"', b'\\', b'\n', buf);
        let span = &buf[..end.unwrap_or(buf.len())];
        if self.name_fits {
            match self.name.get_mut(self.name_len..self.name_len + span.len()) {
                Some(dst) => {
                    dst.copy_from_slice(span);
                    self.name_len += span.len();
                }
                None => self.name_fits = false,
            }
        }
        let Some(i) = end else {
            return &[];
        };
        self.at = match buf[i] {
            b'\\' => At::InString { escape: true },
            b'"' => At::AfterString,
            // A raw newline cannot be inside a JSON string: out of step; go on from here.
            _ => At::Between,
        };
        &buf[i + 1..]
    }

    /// A member's name and its colon: noted at its depth, and a usage count's number is read
    /// when the member stands in a usage object.
    fn member(&mut self) {
        let name = if self.name_fits {
            &self.name[..self.name_len]
        } else {
            &[]
        };
        let d = self.depth as usize;
        if let Some(last) = self.last.get_mut(d) {
            *last = match name {
                b"usage" => Member::Usage,
                b"response" => Member::Response,
                _ => Member::Other,
            };
        }
        let count = match name {
            b"prompt_tokens" | b"input_tokens" => Some(Count::Prompt),
            b"completion_tokens" | b"output_tokens" => Some(Count::Completion),
            _ => None,
        };
        self.at = match count {
            Some(c) if self.in_usage() => At::BeforeNumber(c),
            _ => At::Between,
        };
    }

    /// Whether the current object is an answer's or an event's `usage`, or the `usage` of the
    /// `response` an event carries.
    fn in_usage(&self) -> bool {
        match self.depth {
            2 => self.opened[2] == Member::Usage,
            3 => self.opened[3] == Member::Usage && self.opened[2] == Member::Response,
            _ => false,
        }
    }

    /// The counts seen, if the stream carried any.
    pub fn tokens(&self) -> Option<Tokens> {
        if self.prompt.is_none() && self.completion.is_none() {
            return None;
        }
        Some(Tokens {
            prompt: self.prompt.unwrap_or(0),
            completion: self.completion.unwrap_or(0),
        })
    }
}

#[cfg(test)]
#[path = "scanner_tests.rs"]
mod tests;
