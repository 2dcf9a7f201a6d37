//! Request ids: the client's own `x-request-id` when it is one (printable, at most 128 bytes,
//! nothing shaped like a key), else one of ours, `req_` + 16 hex of a per-gateway seed + 8 hex
//! of a counter. Every answer carries it, the access line logs it, the upstream gets it.

use crate::auth::secrets::holds_key_bytes;
use crate::proxy::headers::X_REQUEST_ID;
use http::header::{HeaderMap, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};

/// The gateway's own request ids: random per gateway, then counted.
#[derive(Debug)]
pub struct RequestIds {
    seed: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> RequestIds {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        RequestIds {
            seed: u64::from_le_bytes(b),
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The client's request id, if it may be kept: a request id that holds something shaped
    /// like a key, as sent or percent-decoded (`sk_kg%5F…`), is replaced, never logged, echoed
    /// or forwarded (one that holds the presented credential is replaced once that is known,
    /// by `auth`).
    pub fn for_request(&self, headers: &HeaderMap, prefix: &str) -> HeaderValue {
        headers
            .get(X_REQUEST_ID)
            .filter(|v| is_valid(v) && !holds_key_bytes(v.as_bytes(), prefix))
            .cloned()
            .unwrap_or_else(|| self.next())
    }

    /// A new id, without formatting machinery.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 28];
        id[..4].copy_from_slice(b"req_");
        for (i, shift) in (0..16).rev().enumerate() {
            id[4 + i] = HEX[((self.seed >> (shift * 4)) & 0xf) as usize];
        }
        for (i, shift) in (0..8).rev().enumerate() {
            id[20 + i] = HEX[((n >> (shift * 4)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
    }
}

fn is_valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_counted_and_client_ids_kept_unless_key_shaped() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
        assert!(a.to_str().unwrap().starts_with("req_"));
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ids.for_request(&h, "sk_kg"), "abc-123");
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_static("sk_kg_0123456789ABCDEFabcdef"),
        );
        assert!(ids
            .for_request(&h, "sk_kg")
            .to_str()
            .unwrap()
            .starts_with("req_"));
        // As a client that decodes once or twice reads it.
        for id in [
            "sk%5Fkg_0123456789ABCDEFabcdef",
            "x-sk_kg%255F0123456789ABCDEFabcdef",
        ] {
            h.insert(X_REQUEST_ID, HeaderValue::from_static(id));
            assert!(
                ids.for_request(&h, "sk_kg")
                    .to_str()
                    .unwrap()
                    .starts_with("req_"),
                "{id}"
            );
        }
    }
}
