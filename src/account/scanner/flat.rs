//! The fast scan, for answers that carry nothing the client wrote as JSON structure (chat,
//! completions, embeddings: what a client sends comes back, if at all, inside strings, where
//! every quote is escaped). It watches the bytes for `"prompt_tokens":N` and
//! `"completion_tokens":N` (and `input_tokens`, `output_tokens`) with one vector search, and
//! keeps the last counts: in an answer, or in the last SSE chunk of a stream, those can only
//! be the upstream's. Several times cheaper than following the structure (`Structured`):
//! every proxied answer passes through it (`cargo bench --bench keycheck -- usage_scanner`).

use crate::keys::tokens::MAX_COUNT;
use crate::keys::usage::Tokens;
use memchr::memmem;
use std::sync::LazyLock;

/// The end every count's name shares: one search finds both, and the bytes before each hit
/// say which it is.
static TOKENS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"_tokens\""));

/// How many bytes of one chunk are carried into the next, so a field split across two
/// chunks is still seen: the longest name, a colon, spaces and a 20-digit number.
const CARRY: usize = 48;

/// Finds the last token counts in a byte stream fed chunk by chunk, wherever they stand.
/// The carried tail lives inline: no allocation per answer.
#[derive(Debug)]
pub struct Flat {
    carry: [u8; CARRY],
    carry_len: usize,
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Default for Flat {
    fn default() -> Flat {
        Flat {
            carry: [0; CARRY],
            carry_len: 0,
            prompt: None,
            completion: None,
        }
    }
}

impl Flat {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.carry_len == 0 {
            self.scan(chunk);
        } else {
            // Only the seam needs joining: the carried tail plus the head of this chunk.
            let head = &chunk[..chunk.len().min(CARRY)];
            let mut seam = [0u8; 2 * CARRY];
            seam[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
            seam[self.carry_len..self.carry_len + head.len()].copy_from_slice(head);
            let n = self.carry_len + head.len();
            self.scan(&seam[..n]);
            self.scan(chunk);
        }
        // A chunk shorter than the carry keeps the older tail's end in front of it.
        let keep = CARRY.saturating_sub(chunk.len()).min(self.carry_len);
        self.carry
            .copy_within(self.carry_len - keep..self.carry_len, 0);
        let tail = &chunk[chunk.len().saturating_sub(CARRY)..];
        self.carry[keep..keep + tail.len()].copy_from_slice(tail);
        self.carry_len = keep + tail.len();
    }

    /// Takes the last complete counts in `hay`.
    fn scan(&mut self, hay: &[u8]) {
        for pos in TOKENS.find_iter(hay) {
            let name = &hay[..pos];
            // Chat and completions say prompt/completion, the Responses API input/output.
            let count = if name.ends_with(b"\"prompt") || name.ends_with(b"\"input") {
                &mut self.prompt
            } else if name.ends_with(b"\"completion") || name.ends_with(b"\"output") {
                &mut self.completion
            } else {
                continue;
            };
            if let Some(v) = number_after(&hay[pos + TOKENS.needle().len()..]) {
                *count = Some(v);
            }
        }
    }

    /// The counts seen, if the stream carried any.
    pub fn tokens(&self) -> Option<Tokens> {
        found(self.prompt, self.completion)
    }
}

/// The counts a scan found, if it found any (a missing one is 0). Both scanners' answer.
pub(super) fn found(prompt: Option<u64>, completion: Option<u64>) -> Option<Tokens> {
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some(Tokens {
        prompt: prompt.unwrap_or(0),
        completion: completion.unwrap_or(0),
    })
}

/// The number in `: N` at the start of `rest`, when it is whole (a number that runs to the
/// end of the chunk may continue in the next one).
fn number_after(rest: &[u8]) -> Option<u64> {
    let rest = trim_ws(rest).strip_prefix(b":")?;
    let rest = trim_ws(rest);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == rest.len() || digits > 19 {
        return None;
    }
    let n: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some(n.min(MAX_COUNT))
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}
