//! Exact accounting of a stream whose client did not ask for its usage: the gateway asks the
//! upstream for it (`authorize::json_body::with_stream_usage`) and hides the extra usage-only event
//! from the client here, so the client gets exactly the stream it asked for.

use bytes::Bytes;

/// Removes the usage-only SSE event (`"choices":[]` with a `usage`) that the gateway asked
/// the upstream for on the client's behalf. Events pass through as soon as they are
/// complete; only an incomplete event's bytes wait for the rest of it.
#[derive(Default)]
pub struct UsageChunkFilter {
    pending: bytes::BytesMut,
    /// The event removed last ended with a CR that was the last byte then: an LF that comes
    /// next is the rest of its line ending, removed with it.
    drop_lf: bool,
}

impl UsageChunkFilter {
    /// The complete events of `data` (and of what was pending), minus the usage chunk.
    pub fn filter(&mut self, data: &[u8]) -> Bytes {
        let mut data = data;
        if self.drop_lf && !data.is_empty() {
            // Whatever the next byte is, the removed event's line ending is settled by it.
            self.drop_lf = false;
            if data[0] == b'\n' {
                data = &data[1..];
            }
        }
        self.pending.extend_from_slice(data);
        let mut out = bytes::BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if is_usage_only(&event) {
                self.drop_lf = self.pending.is_empty() && event.ends_with(b"\r");
            } else {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    pub fn rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Where the first complete SSE event ends: after the blank line that ends it. A line ends in
/// CRLF, LF or CR (the SSE spec's three, mixed as they come). A CR last in the buffer ends
/// its line; an LF after it, if one comes, starts the next event as a blank line, which
/// carries nothing: the client gets the same bytes either way.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut from = 0;
    while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[from..]) {
        let at = from + off;
        let mut next = at + 1;
        if buf[at] == b'\r' && buf.get(next) == Some(&b'\n') {
            next += 1;
        }
        if at == line_start {
            return Some(next);
        }
        line_start = next;
        from = next;
    }
    None
}

/// Whether an event is the usage-only chunk: its `data` (every `data:` line, as SSE joins
/// them; `id:`, `event:` and comments aside) is a JSON object with no choices and a usage.
fn is_usage_only(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    let mut data = Vec::with_capacity(event.len());
    let lines = event.split(|b| *b == b'\n' || *b == b'\r');
    for (i, v) in lines.filter_map(|l| l.strip_prefix(b"data:")).enumerate() {
        if i > 0 {
            data.push(b'\n');
        }
        data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
        return false;
    };
    v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
}

impl UsageChunkFilter {
    /// Nothing is waiting for the rest of an event.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_usage_only_event_is_removed_wherever_the_chunks_split() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\r\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        let want = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut f = UsageChunkFilter::default();
            let mut out = f.filter(&stream[..cut]).to_vec();
            out.extend_from_slice(&f.filter(&stream[cut..]));
            out.extend_from_slice(&f.rest());
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
        }
    }

    /// Every line ending SSE allows, mixed, and fields beside `data:`: the usage chunk goes,
    /// everything else passes byte for byte, each event as soon as it is complete.
    #[test]
    fn any_line_ending_and_an_id_field_are_handled() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}";
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}";
        for (a, b) in [("\n", "\r\n"), ("\r", "\r"), ("\n", "\r"), ("\r\n", "\n")] {
            let stream =
                format!("{content}{a}{b}id: 9{a}{usage}{a}{a}: keepalive{b}{b}data: [DONE]{b}{b}");
            let want = format!("{content}{a}{b}: keepalive{b}{b}data: [DONE]{b}{b}");
            for cut in 1..stream.len() {
                let mut f = UsageChunkFilter::default();
                let mut out = f.filter(&stream.as_bytes()[..cut]).to_vec();
                out.extend_from_slice(&f.filter(&stream.as_bytes()[cut..]));
                out.extend_from_slice(&f.rest());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    want,
                    "{a:?}{b:?} cut at {cut}"
                );
            }
            // Byte by byte: every cut at once, the LF after a removed event's last CR alone in
            // its chunk included.
            let mut f = UsageChunkFilter::default();
            let mut out = Vec::new();
            for b in stream.as_bytes() {
                out.extend_from_slice(&f.filter(std::slice::from_ref(b)));
            }
            out.extend_from_slice(&f.rest());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "{a:?}{b:?} byte by byte"
            );
            // The LF after a removed event's last CR alone in its chunk is the end of that
            // event; an LF after it is a blank line of the stream's own, and passes.
            let mut f = UsageChunkFilter::default();
            let mut out = f.filter(format!("{usage}\r\n\r").as_bytes()).to_vec();
            out.extend_from_slice(&f.filter(b"\n"));
            out.extend_from_slice(&f.filter(b"\ndata: [DONE]\n\n"));
            out.extend_from_slice(&f.rest());
            assert_eq!(String::from_utf8(out).unwrap(), "\ndata: [DONE]\n\n");
            // A CR-only event is let through as soon as its blank line has come.
            let mut f = UsageChunkFilter::default();
            let first = format!("{content}{a}{b}");
            let out = f.filter(first.as_bytes());
            assert_eq!(out.len(), first.len(), "{a:?}{b:?}: held back");
        }
    }
}
