//! What surrounds a multipart body's parts: nothing but whitespace before its first boundary
//! and after its closing one.
//!
//! RFC 2046 lets a preamble and an epilogue carry anything, and form parsers skip both, but
//! an upstream that reads a body as JSON whatever its Content-Type (Ollama's handlers decode
//! the first JSON value they find) would take a preamble `{"model":"gpt-4"}` for the request,
//! while the gateway checked the `model` part. No client library writes either (the OpenAI
//! SDKs, `requests`, curl and browsers start with the boundary and end after the closing
//! one), so a body with one is refused.

/// Checks a multipart body chunk by chunk, as it streams.
#[derive(Debug)]
pub struct Envelope {
    /// `\r\n--BOUNDARY--`, the closing delimiter.
    close: Vec<u8>,
    state: State,
    /// The last bytes seen in `Parts`, fewer than `close`'s length: a delimiter that spans
    /// two chunks.
    tail: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary: how many bytes of `--BOUNDARY` matched.
    Preamble(usize),
    Parts,
    Epilogue,
}

/// Why the body is refused.
pub const PREAMBLE: &str = "the multipart/form-data body has data before its first boundary";
pub const EPILOGUE: &str = "the multipart/form-data body has data after its closing boundary";

impl Envelope {
    pub fn new(boundary: &str) -> Envelope {
        let mut close = b"\r\n--".to_vec();
        close.extend_from_slice(boundary.as_bytes());
        close.extend_from_slice(b"--");
        Envelope {
            close,
            state: State::Preamble(0),
            tail: Vec::new(),
        }
    }

    /// The opening delimiter, `--BOUNDARY`.
    fn open(&self) -> &[u8] {
        &self.close[2..self.close.len() - 2]
    }

    /// Checks the body's next chunk.
    pub fn check(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        let mut rest = chunk;
        loop {
            match self.state {
                State::Preamble(mut matched) => {
                    let open_len = self.open().len();
                    while let Some((&b, after)) = rest.split_first() {
                        rest = after;
                        if matched == 0 && b.is_ascii_whitespace() {
                            continue;
                        }
                        if self.open().get(matched) != Some(&b) {
                            return Err(PREAMBLE);
                        }
                        matched += 1;
                        if matched == open_len {
                            break;
                        }
                    }
                    if matched < open_len {
                        self.state = State::Preamble(matched);
                        return Ok(());
                    }
                    // Just after the opening delimiter, as if after a CRLF and one: an empty
                    // form (`--BOUNDARY--`) closes at once.
                    self.tail = self.close[..self.close.len() - 2].to_vec();
                    self.state = State::Parts;
                }
                State::Parts => {
                    let n = self.close.len();
                    // A delimiter that starts in the tail and ends in this chunk.
                    let head = &rest[..rest.len().min(n - 1)];
                    let mut joined = Vec::with_capacity(self.tail.len() + head.len());
                    joined.extend_from_slice(&self.tail);
                    joined.extend_from_slice(head);
                    let end = match memchr::memmem::find(&joined, &self.close) {
                        Some(at) => Some(at + n - self.tail.len()),
                        None => memchr::memmem::find(rest, &self.close).map(|at| at + n),
                    };
                    if let Some(end) = end {
                        rest = &rest[end..];
                        self.tail.clear();
                        self.state = State::Epilogue;
                        continue;
                    }
                    let keep = n - 1;
                    // (A chunk shorter than that is all in `joined`.)
                    self.tail = if rest.len() >= keep {
                        rest[rest.len() - keep..].to_vec()
                    } else {
                        joined[joined.len().saturating_sub(keep)..].to_vec()
                    };
                    return Ok(());
                }
                State::Epilogue => {
                    return if rest.iter().all(u8::is_ascii_whitespace) {
                        Ok(())
                    } else {
                        Err(EPILOGUE)
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of `body` into two and three chunks gives the same verdict as one chunk.
    fn verdict(body: &[u8]) -> Result<(), &'static str> {
        let whole = {
            let mut e = Envelope::new("zz");
            e.check(body)
        };
        for i in 0..=body.len() {
            let mut e = Envelope::new("zz");
            let split = e.check(&body[..i]).and_then(|()| e.check(&body[i..]));
            assert_eq!(split, whole, "split at {i}");
            for j in i..=body.len() {
                let mut e = Envelope::new("zz");
                let three = e
                    .check(&body[..i])
                    .and_then(|()| e.check(&body[i..j]))
                    .and_then(|()| e.check(&body[j..]));
                assert_eq!(three, whole, "split at {i} and {j}");
            }
        }
        whole
    }

    #[test]
    fn a_plain_body_passes() {
        let body = b"--zz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama-3\r\n--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n--z-\r\n--zzz\r\n--zz--\r\n";
        assert_eq!(verdict(body), Ok(()));
        assert_eq!(verdict(b"\r\n--zz--"), Ok(()));
        assert_eq!(verdict(b"--zz--\r\n \t"), Ok(()));
    }

    /// The polyglot that passed the allowlist: JSON first, a `model` part the gateway read.
    #[test]
    fn data_before_the_first_boundary_is_refused() {
        let body = b"{\"model\":\"gpt-4\"}\r\n--zz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama-3\r\n--zz--\r\n";
        assert_eq!(verdict(body), Err(PREAMBLE));
        assert_eq!(verdict(b"-zz"), Err(PREAMBLE));
        assert_eq!(verdict(b"--zy"), Err(PREAMBLE));
    }

    #[test]
    fn data_after_the_closing_boundary_is_refused() {
        let body = b"--zz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama-3\r\n--zz--\r\n{\"model\":\"gpt-4\"}";
        assert_eq!(verdict(body), Err(EPILOGUE));
        assert_eq!(verdict(b"--zz--x"), Err(EPILOGUE));
    }
}
