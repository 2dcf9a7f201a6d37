//! The access line: one per request, formatted directly into bytes — no tracing event or field
//! machinery per request — and queued to the log writer (`ops::logging`), which drops it
//! (counted) rather than make the request wait. Text is `key=value`, JSON one object; absent
//! values are `-` or `null`. Never the query, and never a path segment shaped like a key.

use crate::account::record::{RequestRecord, TokenUsage};
use crate::auth::secrets::mentions_key;
use crate::config::LogFormat;
use crate::ops::logging::Logging;
use crate::text::needs_json_escape;
use crate::time::SecondStamp;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Free-form values (user agent, model, key name) are cut to this many bytes.
const MAX_FIELD: usize = 256;
/// A path is cut to this many bytes.
const MAX_PATH: usize = 2048;
/// What a logged value that named a key becomes.
const REDACTED: &str = "[redacted]";

/// When a request ended, and how long it and the gateway's part of it took.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub at: SystemTime,
    pub total: Duration,
    pub added: Option<Duration>,
}

/// Queues the access line for `f`, if `keygate::access` is enabled at info.
pub fn write(
    log: &Logging,
    f: &RequestRecord,
    total: Duration,
    added: Option<Duration>,
    key_prefix: &str,
) {
    if !tracing::enabled!(target: "keygate::access", tracing::Level::INFO) {
        return;
    }
    let format = log.format();
    let timing = Timing {
        at: SystemTime::now(),
        total,
        added,
    };
    log.offer_access(|line, stamp| format_access(line, stamp, format, f, timing, key_prefix));
}

/// A field's name as each format writes it before the value: `,"name":` or ` name=`, and
/// `,"name":"` for a JSON string, built at compile time by `key!` so a field costs one copy,
/// not three.
#[derive(Clone, Copy)]
struct Key {
    json: &'static str,
    json_str: &'static str,
    text: &'static str,
}

macro_rules! key {
    ($name:literal) => {
        Key {
            json: concat!(",\"", $name, "\":"),
            json_str: concat!(",\"", $name, "\":\""),
            text: concat!(" ", $name, "="),
        }
    };
}

/// One field writer for either format: text is `key=value` (quoted and escaped when the value
/// needs it, `-` when absent), JSON is an object member (`null` when absent). The format is
/// a constant of the type, not a field: each format's writer is its own code, every choice
/// between the two is made at compile time, and a field's name is a copy of known length
/// (a few stores, not a call to `memcpy`).
struct Fields<'a, const JSON: bool> {
    out: &'a mut Vec<u8>,
}

impl<const JSON: bool> Fields<'_, JSON> {
    fn key(&mut self, k: Key) {
        let k = if JSON { k.json } else { k.text };
        self.out.extend_from_slice(k.as_bytes());
    }

    fn absent(&mut self) {
        let v: &[u8] = if JSON { b"null" } else { b"-" };
        self.out.extend_from_slice(v);
    }

    fn str(&mut self, k: Key, v: Option<&str>) {
        match v {
            // Most values need no escaping: copied between quotes, without a serializer.
            Some(v) if JSON && !needs_json_escape(v) => self.plain(k, Some(v.as_bytes())),
            Some(v) if JSON => {
                self.key(k);
                let _ = serde_json::to_writer(&mut *self.out, v);
            }
            Some(v) if is_bare(v) => self.plain(k, Some(v.as_bytes())),
            Some(v) => {
                self.key(k);
                let _ = write!(self.out, "{v:?}");
            }
            None => {
                self.key(k);
                self.absent();
            }
        }
    }

    /// A value that needs neither escapes nor, in text, quotes: the gateway's own names
    /// (route, error code, protocol), a method (an HTTP token) and a key id. Nothing to scan.
    fn plain(&mut self, k: Key, v: Option<&[u8]>) {
        let Some(v) = v else {
            self.key(k);
            self.absent();
            return;
        };
        if JSON {
            self.out.extend_from_slice(k.json_str.as_bytes());
            self.out.extend_from_slice(v);
            self.out.push(b'"');
        } else {
            self.key(k);
            self.out.extend_from_slice(v);
        }
    }

    fn num(&mut self, k: Key, v: Option<u64>) {
        self.key(k);
        match v {
            None => self.absent(),
            Some(n) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        }
    }

    fn bool(&mut self, k: Key, v: bool) {
        self.key(k);
        let v: &[u8] = if v { b"true" } else { b"false" };
        self.out.extend_from_slice(v);
    }

    /// An address never needs quoting or escaping; an IPv4 one is written octet by octet
    /// (the formatter's machinery cost more than the rest of the field).
    fn addr(&mut self, k: Key, ip: IpAddr) {
        self.key(k);
        if JSON {
            self.out.push(b'"');
        }
        match ip {
            IpAddr::V4(v4) => {
                let mut n = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out.extend_from_slice(n.format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(self.out, "{v6}");
            }
        }
        if JSON {
            self.out.push(b'"');
        }
    }
}

/// A text value that needs no quotes: printable ASCII without quote, backslash or `=`.
fn is_bare(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=')
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// The path as logged: never the query (it can carry a key or other secrets), and a path
/// segment that names something shaped like one of our keys (`<prefix>_…`, as it is or
/// percent-decoded: `sk%5Fkg%5F…` is the same key to the client's tools) is replaced.
fn logged_path<'a>(path: &'a str, key_prefix: &str) -> std::borrow::Cow<'a, str> {
    let path = clip(path, MAX_PATH);
    // Found without allocating, as almost every path has neither the prefix nor a `%`.
    if !mentions_key(path, key_prefix) {
        return std::borrow::Cow::Borrowed(path);
    }
    let redacted: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if mentions_key(seg, key_prefix) {
                REDACTED
            } else {
                seg
            }
        })
        .collect();
    std::borrow::Cow::Owned(redacted.join("/"))
}

/// The user agent as logged: a client's free text, which may hold a key (its own or another
/// one) in any form; then the whole value is replaced, as a request id would be.
fn logged_user_agent<'a>(ua: &'a http::HeaderValue, key_prefix: &str) -> std::borrow::Cow<'a, str> {
    let text = String::from_utf8_lossy(ua.as_bytes());
    if mentions_key(&text, key_prefix) {
        return std::borrow::Cow::Borrowed(REDACTED);
    }
    text
}

/// Formats the access line for `f` into `out` (one line, newline included), its timestamp
/// through `stamp`.
pub fn format_access(
    out: &mut Vec<u8>,
    stamp: &mut SecondStamp,
    format: LogFormat,
    f: &RequestRecord,
    timing: Timing,
    key_prefix: &str,
) {
    // Room for a typical line at once, not a few regrowths of it.
    out.reserve(640);
    if format == LogFormat::Json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        stamp.write(out, timing.at);
        out.extend_from_slice(
            b"\",\"level\":\"INFO\",\"target\":\"keygate::access\",\"message\":\"request\"",
        );
        fields(Fields::<true> { out }, f, timing, key_prefix);
        out.extend_from_slice(b"}\n");
    } else {
        stamp.write(out, timing.at);
        out.extend_from_slice(b"  INFO keygate::access: request");
        fields(Fields::<false> { out }, f, timing, key_prefix);
        out.push(b'\n');
    }
}

/// The line's fields, in order, in either format.
fn fields<const JSON: bool>(
    mut w: Fields<'_, JSON>,
    f: &RequestRecord,
    Timing { total, added, .. }: Timing,
    key_prefix: &str,
) {
    w.str(key!("request_id"), f.request_id.to_str().ok());
    w.addr(key!("client_addr"), f.client);
    w.plain(key!("method"), Some(f.method.as_str().as_bytes()));
    let path = f.path.as_ref().map(|p| logged_path(p.path(), key_prefix));
    w.str(key!("path"), path.as_deref());
    w.plain(key!("protocol"), Some(protocol(f.version).as_bytes()));
    let ua = f
        .user_agent
        .as_ref()
        .map(|v| logged_user_agent(v, key_prefix));
    w.str(
        key!("user_agent"),
        ua.as_deref().map(|s| clip(s, MAX_FIELD)),
    );
    w.plain(key!("key_id"), f.key.as_ref().map(|k| &k.id.as_bytes()[..]));
    w.str(
        key!("key_name"),
        f.key.as_ref().map(|k| clip(&k.name, MAX_FIELD)),
    );
    w.plain(
        key!("route"),
        (f.route != "-").then_some(f.route.as_bytes()),
    );
    // The model usage is counted under: the request's, else the one the answer names (the
    // gateway reads a request's model only when it has to).
    let model = f.usage_model();
    w.str(
        key!("model"),
        (!model.is_empty()).then(|| clip(model, MAX_FIELD)),
    );
    w.str(key!("upstream"), f.upstream.as_deref());
    w.num(key!("status"), Some(u64::from(f.status)));
    w.plain(
        key!("error"),
        f.error_code
            .or(f.stream_error.map(|e| e.code()))
            .map(str::as_bytes),
    );
    w.bool(key!("complete"), f.complete);
    w.num(key!("latency_us"), Some(total.as_micros() as u64));
    w.num(
        key!("upstream_us"),
        f.upstream_latency.map(|d| d.as_micros() as u64),
    );
    w.num(key!("added_us"), added.map(|a| a.as_micros() as u64));
    let tokens = f.tokens.map(TokenUsage::tokens);
    w.num(key!("prompt_tokens"), tokens.map(|t| t.prompt));
    w.num(key!("completion_tokens"), tokens.map(|t| t.completion));
    w.bool(
        key!("tokens_estimated"),
        f.tokens.is_some_and(TokenUsage::is_estimated),
    );
    w.num(key!("bytes_received"), Some(f.bytes_received));
    w.num(key!("bytes_sent"), Some(f.bytes_sent));
}

#[cfg(test)]
#[path = "access_log_tests.rs"]
mod tests;
