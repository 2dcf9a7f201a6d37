//! What an upstream's answer says it used, read as it streams past without buffering it.
//!
//! `UsageScanner` reads it one of two ways. For the Responses API, whose answers echo what
//! the client sent as JSON structure, `Structured` follows the answer's structure and takes
//! `prompt_tokens` and `completion_tokens` (the Responses API's `input_tokens` and
//! `output_tokens`) only where an upstream reports usage: in the `usage` object of the answer
//! or of an event (`{"usage":{…}}`), or of the response an event carries
//! (`{"response":{"usage":{…}}}`). Where they stand matters: the Responses API sends the
//! request's `tools`, JSON schemas and all, back in `response.created`, so a client can put
//! members with those names anywhere deeper, and a count found there would be believed over
//! the estimate of a stream it then leaves. Every other answer is read by `flat::Flat`,
//! which finds the counts wherever they are, several times faster: the chat, completions
//! and embeddings answers of vLLM, llama.cpp, Ollama and TGI carry what the client sent only
//! inside strings (vLLM's `kv_transfer_params` is built by its KV connector, not copied from
//! the request; an upstream that did copy a client's object there would need `Structured`).
//! (`relayed::ContentCounter` estimates the tokens of the text an event stream relayed, for a
//! stream cut short.)

use crate::keys::tokens::MAX_COUNT;
use crate::keys::usage::Tokens;

mod flat;

/// The longest member name the scanner tells apart (`completion_tokens`).
const LONGEST_NAME: usize = 17;

/// An answer's usage, read as fits its route.
#[derive(Debug)]
pub enum UsageScanner {
    Flat(flat::Flat),
    Structured(Structured),
}

impl UsageScanner {
    /// The scanner for an answer: `Structured` where the answer echoes the request's JSON
    /// structure (the Responses API), else `Flat`.
    pub fn for_answer(echoes_request: bool) -> UsageScanner {
        if echoes_request {
            UsageScanner::Structured(Structured::default())
        } else {
            UsageScanner::Flat(flat::Flat::default())
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageScanner::Flat(s) => s.feed(chunk),
            UsageScanner::Structured(s) => s.feed(chunk),
        }
    }

    /// The counts seen, if the answer carried any.
    pub fn tokens(&self) -> Option<Tokens> {
        match self {
            UsageScanner::Flat(s) => s.tokens(),
            UsageScanner::Structured(s) => s.tokens(),
        }
    }
}

/// Finds the last usage counts in a byte stream fed chunk by chunk. Its state is a few bytes
/// inline: no allocation per answer, nothing carried but where it is.
///
/// Fast on the request path (every proxied answer passes through it): one search for the
/// next quote between strings, one for the closing quote (or a backslash) in a string, and
/// a byte at a time only over the few bytes between strings (`:`, `,`, braces, numbers).
#[derive(Debug, Default)]
pub struct Structured {
    /// Objects open around the current position (saturating: only 1 to 3 matter).
    depth: u32,
    /// For the objects at depth 1 to 3: the member name each was opened under (`opened`),
    /// and the last member name read inside it (`last`).
    opened: [Member; 4],
    last: [Member; 4],
    in_string: bool,
    /// In a string, the chunk ended on a backslash: the next byte is escaped.
    escaped: bool,
    /// The string being read, while it may still be a member name the scanner knows.
    name: [u8; LONGEST_NAME],
    name_len: usize,
    name_fits: bool,
    after: After,
    value: u64,
    prompt: Option<u64>,
    completion: Option<u64>,
}

/// What the bytes between strings are waiting for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum After {
    #[default]
    Nothing,
    /// A string closed: a `:` makes it a member's name.
    String,
    /// A usage count's name and colon: its number comes next.
    Number(Count),
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

impl Structured {
    pub fn feed(&mut self, buf: &[u8]) {
        let mut i = 0;
        if self.in_string {
            i = self.string(buf, 0);
        }
        while i < buf.len() {
            let Some(q) = self.between(&buf[i..]) else {
                return;
            };
            self.end_number();
            self.after = After::Nothing;
            self.name_len = 0;
            self.name_fits = true;
            self.in_string = true;
            i = self.string(buf, i + q + 1);
        }
    }

    /// Reads a string from `at` to its closing quote; returns where the bytes after it start
    /// (`buf.len()` when the string goes on in the next chunk).
    fn string(&mut self, buf: &[u8], mut at: usize) -> usize {
        if self.escaped {
            if at >= buf.len() {
                return at;
            }
            self.escaped = false;
            self.name_fits = false; // a name with an escape is none the scanner knows
            at += 1;
        }
        loop {
            let rest = buf.get(at..).unwrap_or_default();
            let Some(k) = string_end(rest) else {
                self.collect(rest);
                return buf.len();
            };
            self.collect(&rest[..k]);
            if rest[k] == b'"' {
                self.in_string = false;
                self.after = After::String;
                return at + k + 1;
            }
            self.name_fits = false;
            if at + k + 1 >= buf.len() {
                self.escaped = true;
                return buf.len();
            }
            at += k + 2;
        }
    }

    fn collect(&mut self, span: &[u8]) {
        if self.name_fits {
            match self.name.get_mut(self.name_len..self.name_len + span.len()) {
                Some(dst) => {
                    dst.copy_from_slice(span);
                    self.name_len += span.len();
                }
                None => self.name_fits = false,
            }
        }
    }

    /// The bytes between two strings (structure, numbers and literals), up to the quote that
    /// opens the next one, whose place it returns.
    fn between(&mut self, span: &[u8]) -> Option<usize> {
        for (i, &b) in span.iter().enumerate() {
            match (b, self.after) {
                (b'"', _) => return Some(i),
                (b'0'..=b'9', After::Number(c) | After::Digits(c)) => {
                    let v = if self.after == After::Number(c) {
                        0
                    } else {
                        self.value
                    };
                    self.value = v
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0'))
                        .min(MAX_COUNT);
                    self.after = After::Digits(c);
                }
                (b' ' | b'\t' | b'\r' | b'\n', After::String | After::Number(_)) => {}
                (b':', After::String) => self.member(),
                _ => {
                    self.end_number();
                    self.after = After::Nothing;
                    match b {
                        b'{' => self.open_object(),
                        b'}' => self.depth = self.depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
        }
        None
    }

    /// A count's number is whole once something follows it (the next chunk may go on).
    fn end_number(&mut self) {
        if let After::Digits(c) = self.after {
            *match c {
                Count::Prompt => &mut self.prompt,
                Count::Completion => &mut self.completion,
            } = Some(self.value);
            self.after = After::Nothing;
        }
    }

    fn open_object(&mut self) {
        self.depth = self.depth.saturating_add(1);
        let d = self.depth as usize;
        if (1..self.opened.len()).contains(&d) {
            self.opened[d] = self.last[d - 1];
            self.last[d] = Member::Other;
        }
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
        self.after = match count {
            Some(c) if self.in_usage() => After::Number(c),
            _ => After::Nothing,
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
        flat::found(self.prompt, self.completion)
    }
}

/// Where a string's bytes stop: its closing quote or a backslash. Most strings in an answer
/// are short member names, for which a plain loop beats setting up a vector search; a long
/// one (generated text) gets the vector search past its first bytes.
fn string_end(rest: &[u8]) -> Option<usize> {
    const SHORT: usize = 24;
    let head = &rest[..rest.len().min(SHORT)];
    match head.iter().position(|&b| b == b'"' || b == b'\\') {
        Some(k) => Some(k),
        None if rest.len() > SHORT => {
            memchr::memchr2(b'"', b'\\', &rest[SHORT..]).map(|k| k + SHORT)
        }
        None => None,
    }
}

#[cfg(test)]
#[path = "scanner_tests.rs"]
mod tests;
