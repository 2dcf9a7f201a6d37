//! The mock's last whole completion, kept with the request it answered.
//!
//! The load harness sends one request body over and over, and the mock shares a core with the
//! load generator, so every microsecond the mock spends on a request comes off the ceiling the
//! proxies are measured under. Reading the body as JSON and building the reply were about half
//! of its user-space time. A completion's reply follows from its path and body alone (the
//! mock's answers are deterministic), so the last one is kept and handed back when the same
//! request comes again. A streamed completion, or one a test header pads, is built each time.

use bytes::Bytes;
use std::sync::Mutex;

/// The last whole completion and what it answered.
#[derive(Debug, Default)]
pub(super) struct LastReply(Mutex<Option<Entry>>);

#[derive(Debug)]
struct Entry {
    /// `/v1/chat/completions`, else `/v1/completions`.
    chat: bool,
    body: Bytes,
    reply: Bytes,
}

impl LastReply {
    /// The reply to the same request, when it was the last one answered whole.
    pub(super) fn get(&self, chat: bool, body: &[u8]) -> Option<Bytes> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|e| e.chat == chat && e.body == body)
            .map(|e| e.reply.clone())
    }

    /// Keeps `reply` as the answer to `body` (copied: the request's bytes may share hyper's
    /// read buffer, which the mock's next read would then have to reallocate).
    pub(super) fn put(&self, chat: bool, body: &[u8], reply: &Bytes) {
        let entry = Entry {
            chat,
            body: Bytes::copy_from_slice(body),
            reply: reply.clone(),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_on_the_same_path_gets_the_kept_reply() {
        let last = LastReply::default();
        assert_eq!(last.get(true, b"{}"), None);
        let reply = Bytes::from_static(b"{\"id\":\"chatcmpl-mock\"}");
        last.put(true, b"{}", &reply);
        assert_eq!(last.get(true, b"{}"), Some(reply.clone()));
        assert_eq!(last.get(false, b"{}"), None, "another path");
        assert_eq!(last.get(true, b"{ }"), None, "another body");
        last.put(false, b"{ }", &Bytes::from_static(b"other"));
        assert_eq!(last.get(true, b"{}"), None, "only the last is kept");
    }
}
