//! hyper's server settings, made from `[server]` and remade when a reload changes them:
//! one builder that detects the protocol from the first bytes it reads (TLS, and a plain
//! connection whose first bytes do not tell yet) and two that do not (a plain connection whose
//! peeked first bytes told: see `detect`).

use super::detect::Sniffed;
use crate::config::ServerConfig;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::time::Duration;

/// The server settings hyper's builder takes: when a reload changes them, a new builder is
/// made for the connections accepted from then on.
pub(super) fn builder_settings(s: &ServerConfig) -> impl PartialEq {
    (
        s.max_header_bytes,
        s.max_headers,
        s.http2_max_concurrent_streams,
        s.http2_max_header_list_size,
    )
}

/// hyper's server, with protocol detection (TLS connections, and a plain one whose first
/// bytes do not tell yet) and without it (a plain connection whose first bytes, peeked, told:
/// see `detect`).
pub struct Builders {
    detecting: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(s: &ServerConfig) -> Builders {
        let detecting = builder(s);
        Builders {
            http1: detecting.clone().http1_only(),
            http2: detecting.clone().http2_only(),
            detecting,
        }
    }

    pub(super) fn get(&self, first: Sniffed) -> &auto::Builder<TokioExecutor> {
        match first {
            Sniffed::Http1 => &self.http1,
            Sniffed::Http2 => &self.http2,
            Sniffed::Unsure | Sniffed::Closed => &self.detecting,
        }
    }
}

/// The HTTP server settings, all explicit rather than hyper's defaults.
pub fn builder(s: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Off: the connection driver bounds a request head from its first byte, and the idle
        // wait between requests by idle_timeout (hyper's timer would count that wait too).
        .header_read_timeout(None)
        .max_buf_size(s.max_header_bytes)
        .max_headers(s.max_headers)
        .keep_alive(true)
        .half_close(false)
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .max_header_list_size(s.http2_max_header_list_size)
        // Rapid-reset (CVE-2023-44487) and error-reset floods end in GOAWAY.
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
