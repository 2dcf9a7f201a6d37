//! The JSON body of a refusal, `{"error":{"message","type","param","code"}}`, written by hand.
//!
//! Refusals are the answers an abusive client makes the gateway write at its own pace (a 429
//! flood from a key over its rate, a key-guessing run), so they must cost as little as
//! possible. Through `serde_json` and `core::fmt` the body went byte by byte through the
//! escaper, and the message through the formatter's machinery. Here the body is written on
//! the stack, each string checked for characters to escape eight bytes at a time (the access
//! line's check, `text::needs_json_escape`) and copied whole when there are none, as they
//! almost never are (the rare one goes through `serde_json`'s escaper), and the commonest
//! refusals' messages are written from their parts. The output is byte for byte what
//! `serde_json` writes for the same envelope (tested).

use crate::text::needs_json_escape;
use std::fmt;
use std::time::Duration;

/// A refusal's message: the ones a client can have the gateway repeat at will are written
/// from their parts (`GatewayError::to_response` picks them; their text is their variant's
/// `Display`, tested), every other one through `Display`.
pub(super) enum Message<'a> {
    /// `Rate limit reached: {limit} requests per minute. Retry in {retry_after}.`
    RateLimited {
        limit: u32,
        retry_after: Duration,
    },
    /// `Incorrect API key provided: {0}.`
    InvalidKey(&'a str),
    Display(&'a dyn fmt::Display),
}

/// A refusal's body: its message, `type`, `param` and `code`.
pub(super) struct Envelope<'a> {
    pub message: Message<'a>,
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

/// Where the body is written: a buffer on the stack, or a `Vec` for a body that outgrows it.
trait Out {
    fn put(&mut self, b: &[u8]);
}

/// The stack buffer: most bodies are under 300 bytes; a longer one (a message naming a long
/// model) sets `overflow` and is written again into a `Vec`.
struct Stack {
    buf: [u8; 512],
    len: usize,
    overflow: bool,
}

impl Out for Stack {
    fn put(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(to) => {
                to.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// The body: in one allocation of its exact size when it fits the stack buffer.
pub(super) fn envelope(e: &Envelope<'_>) -> bytes::Bytes {
    let mut s = Stack {
        buf: [0; 512],
        len: 0,
        overflow: false,
    };
    write(&mut s, e);
    match s.buf.get(..s.len) {
        Some(body) if !s.overflow => bytes::Bytes::copy_from_slice(body),
        _ => {
            let mut v = Vec::with_capacity(1024);
            write(&mut v, e);
            bytes::Bytes::from(v)
        }
    }
}

fn write(out: &mut impl Out, e: &Envelope<'_>) {
    out.put(br#"{"error":{"message":""#);
    message(out, &e.message);
    out.put(br#"","type":""#);
    escaped(out, e.kind);
    out.put(br#"","param":"#);
    match e.param {
        Some(p) => {
            out.put(b"\"");
            escaped(out, p);
            out.put(b"\"");
        }
        None => out.put(b"null"),
    }
    out.put(br#","code":""#);
    escaped(out, e.code);
    out.put(br#""}}"#);
}

/// The message, escaped.
fn message(out: &mut impl Out, m: &Message<'_>) {
    match m {
        Message::RateLimited { limit, retry_after } => {
            out.put(b"Rate limit reached: ");
            out.put(itoa::Buffer::new().format(*limit).as_bytes());
            out.put(b" requests per minute. Retry in ");
            out.put(crate::time::OpenAiDuration(*retry_after).text().as_bytes());
            out.put(b".");
        }
        Message::InvalidKey(why) => {
            out.put(b"Incorrect API key provided: ");
            escaped(out, why);
            out.put(b".");
        }
        Message::Display(d) => {
            use fmt::Write;
            // Writing into memory cannot fail; a `Display` that does leaves a shorter message.
            let _ = write!(Escaping(out), "{d}");
        }
    }
}

/// A `fmt::Write` that escapes what is written to it as JSON string contents.
struct Escaping<'a, O: Out>(&'a mut O);

impl<O: Out> fmt::Write for Escaping<'_, O> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escaped(self.0, s);
        Ok(())
    }
}

/// `s` as the contents of a JSON string: copied as it is when it needs no escapes (nearly
/// always: the gateway's own words), else through `serde_json`'s escaper (a client's text
/// with a quote or a control character), without the quotes it adds.
fn escaped(out: &mut impl Out, s: &str) {
    if !needs_json_escape(s) {
        out.put(s.as_bytes());
        return;
    }
    let mut quoted = Vec::with_capacity(s.len() + 8);
    // Writing into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut quoted, s);
    out.put(
        quoted
            .get(1..quoted.len().saturating_sub(1))
            .unwrap_or_default(),
    );
}
