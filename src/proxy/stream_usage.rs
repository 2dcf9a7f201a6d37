//! Exact accounting of a stream whose client did not ask for its usage: the gateway asks the
//! upstream for it (`authorize::body::with_stream_usage`) and hides the extra usage-only event
//! from the client here, so the client gets exactly the stream it asked for.

use bytes::Bytes;

/// Removes the usage-only SSE event (`"choices":[]` with a `usage`) that the gateway asked
/// the upstream for on the client's behalf. Events pass through as soon as they are
/// complete; only an incomplete event's bytes wait for the rest of it.
#[derive(Default)]
pub struct UsageChunkFilter {
    pending: bytes::BytesMut,
}

impl UsageChunkFilter {
    /// The complete events of `data` (and of what was pending), minus the usage chunk.
    pub fn filter(&mut self, data: &[u8]) -> Bytes {
        self.pending.extend_from_slice(data);
        let mut out = bytes::BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if !is_usage_only(&event) {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    pub fn rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Where the first complete SSE event ends (after its blank line), LF or CRLF.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_only(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    let Some(json) = event.strip_prefix(b"data:") else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json.trim_ascii()) else {
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
}
