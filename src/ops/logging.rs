//! Logs on stderr, text or JSON, with a level that a config reload can change; and the
//! audit trail of key changes.
//!
//! Nothing is written on the request path: every line goes through a bounded queue to one
//! writer thread, which writes whatever has queued in one batch (one `write` for many lines).
//! Access lines are formatted directly into bytes — no tracing event or field machinery per
//! request — and are the only lines ever dropped: when the queue is full (the writer cannot
//! keep up, e.g. a slow terminal), an access line is counted in
//! `keygate_log_lines_dropped_total` instead of making the request wait. Every other line
//! (audit, warnings, errors) waits for room: it is never dropped.
//!
//! Colour codes only when stderr is a terminal, never in a file, a pipe or `kubectl logs`.

use crate::account::Finish;
use crate::config::{LogConfig, LogFormat};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Lines that may wait for the writer: about 6 MB of access lines, or half a second of a
/// busy gateway's lines while stderr stalls.
const QUEUE_LINES: usize = 16 * 1024;
/// The writer writes at least this much at once when that much has queued.
const BATCH_BYTES: usize = 64 * 1024;
/// Free-form values (user agent, model, key name) are cut to this many bytes.
const MAX_FIELD: usize = 256;
/// A path is cut to this many bytes.
const MAX_PATH: usize = 2048;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The queue to the writer thread.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl Sink {
    /// A sink whose writer thread writes to `out`.
    pub fn spawn(out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Arc<Sink>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("keygate-log".into())
            .spawn(move || write_batches(&rx, out))?;
        Ok(Arc::new(Sink {
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues a line that must not be lost: waits for room.
    pub fn send(&self, line: Vec<u8>) {
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Queues a line that may be lost under overload: never waits. Returns false if dropped.
    pub fn offer(&self, line: Vec<u8>) -> bool {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until everything queued before this call has been written.
    pub fn flush(&self, limit: Duration) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(limit);
        }
    }
}

/// The writer thread: takes whatever has queued and writes it in as few calls as it can.
fn write_batches(rx: &Receiver<Msg>, mut out: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(l) => batch.extend_from_slice(&l),
                Msg::Flush(a) => acks.push(a),
            }
            if batch.len() >= BATCH_BYTES {
                let _ = out.write_all(&batch);
                batch.clear();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        for a in acks.drain(..) {
            let _ = a.send(());
        }
    }
}

/// What the tracing subscriber writes through: one event, one queued line, never dropped.
struct EventWriter(Arc<Sink>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The installed logger: its queue, its format, and the handle that changes its level.
#[derive(Clone)]
pub struct Logging {
    sink: Arc<Sink>,
    format: LogFormat,
    level: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The filter for a level or filter string. At `trace`, the `notify` crate is held at `debug`:
/// it traces every inotify event in the directories we watch, so with the log file in one of
/// them each trace line is itself an event, traced again — a loop that fills the disk. Naming
/// `notify` in the filter (e.g. `trace,notify=trace`) overrides this.
fn filter(spec: &str) -> Option<EnvFilter> {
    let f = EnvFilter::try_new(spec).ok()?;
    let traces = f.max_level_hint().is_none_or(|l| l >= LevelFilter::TRACE);
    if traces && !spec.contains("notify") {
        if let Ok(d) = "notify=debug".parse() {
            return Some(f.add_directive(d));
        }
    }
    Some(f)
}

/// Installs the global subscriber, writing to stderr through the queue. `RUST_LOG`, when
/// set, overrides `[log] level`. `None` only if the writer thread cannot start.
pub fn init(cfg: &LogConfig) -> Option<Logging> {
    let sink = Sink::spawn(Box::new(std::io::stderr()), QUEUE_LINES).ok()?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| filter(&v))
        .or_else(|| filter(&cfg.level))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let writer = {
        let sink = Arc::clone(&sink);
        move || EventWriter(Arc::clone(&sink))
    };
    let ansi = std::io::stderr().is_terminal();
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init(),
    };
    Some(Logging {
        sink,
        format: cfg.format,
        level: result.is_ok().then_some(handle),
    })
}

impl Logging {
    /// A logger whose access lines go to `out` through its own writer thread, with no global
    /// subscriber installed (tests and embedders attach it to a `Gateway`).
    pub fn to_writer(out: Box<dyn Write + Send>, format: LogFormat) -> std::io::Result<Logging> {
        Ok(Logging {
            sink: Sink::spawn(out, QUEUE_LINES)?,
            format,
            level: None,
        })
    }

    /// Applies a new `[log] level` from a config reload (not when `RUST_LOG` rules).
    pub fn set_level(&self, level: &str) {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        if let (Some(h), Some(f)) = (&self.level, filter(level)) {
            let _ = h.reload(f);
        }
    }

    /// Access lines dropped under overload.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }

    /// Writes everything queued (at exit).
    pub fn flush(&self) {
        self.sink.flush(Duration::from_secs(2));
    }

    /// Queues the access line for `f`, if `keygate::access` is enabled at info.
    pub fn access(&self, f: &Finish, total: Duration, added: Duration, key_prefix: &str) {
        if !tracing::enabled!(target: "keygate::access", tracing::Level::INFO) {
            return;
        }
        let mut line = Vec::with_capacity(512);
        format_access(
            &mut line,
            self.format,
            std::time::SystemTime::now(),
            f,
            total,
            added,
            key_prefix,
        );
        self.sink.offer(line);
    }
}

/// One field writer for either format: text is `key=value` (quoted and escaped when the value
/// needs it, `-` when absent), JSON is an object member (`null` when absent).
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    json: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        if self.json {
            self.out.extend_from_slice(b",\"");
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"\":");
        } else {
            self.out.push(b' ');
            self.out.extend_from_slice(k.as_bytes());
            self.out.push(b'=');
        }
    }

    fn absent(&mut self) {
        let v: &[u8] = if self.json { b"null" } else { b"-" };
        self.out.extend_from_slice(v);
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v {
            None => self.absent(),
            Some(v) if self.json => {
                let _ = serde_json::to_writer(&mut *self.out, v);
            }
            Some(v) if is_bare(v) => self.out.extend_from_slice(v.as_bytes()),
            Some(v) => {
                let _ = write!(self.out, "{v:?}");
            }
        }
    }

    fn num(&mut self, k: &str, v: Option<u64>) {
        self.key(k);
        match v {
            None => self.absent(),
            Some(n) => {
                let _ = write!(self.out, "{n}");
            }
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        let v: &[u8] = if v { b"true" } else { b"false" };
        self.out.extend_from_slice(v);
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
/// segment that holds something shaped like one of our keys (`<prefix>_…`) is replaced.
fn logged_path<'a>(path: &'a str, key_prefix: &str) -> std::borrow::Cow<'a, str> {
    let path = clip(path, MAX_PATH);
    let mut needle = String::with_capacity(key_prefix.len() + 1);
    needle.push_str(key_prefix);
    needle.push('_');
    if key_prefix.is_empty() || memchr::memmem::find(path.as_bytes(), needle.as_bytes()).is_none() {
        return std::borrow::Cow::Borrowed(path);
    }
    let redacted: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if seg.contains(needle.as_str()) {
                "[redacted]"
            } else {
                seg
            }
        })
        .collect();
    std::borrow::Cow::Owned(redacted.join("/"))
}

/// Formats the access line for `f` into `out` (one line, newline included).
pub fn format_access(
    out: &mut Vec<u8>,
    format: LogFormat,
    at: std::time::SystemTime,
    f: &Finish,
    total: Duration,
    added: Duration,
    key_prefix: &str,
) {
    let json = format == LogFormat::Json;
    let ts = humantime::format_rfc3339_micros(at);
    if json {
        let _ = write!(
            out,
            "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"target\":\"keygate::access\",\"message\":\"request\""
        );
    } else {
        let _ = write!(out, "{ts}  INFO keygate::access: request");
    }
    let mut w = Fields { out, json };
    w.str("request_id", f.request_id.to_str().ok());
    let client = f.client.to_string();
    w.str("client_addr", Some(&client));
    w.str("method", Some(f.method.as_str()));
    let path = f.path.as_ref().map(|p| logged_path(p.path(), key_prefix));
    w.str("path", path.as_deref());
    w.str("protocol", Some(protocol(f.version)));
    let ua = f
        .user_agent
        .as_ref()
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    w.str("user_agent", ua.as_deref().map(|s| clip(s, MAX_FIELD)));
    w.str("key_id", f.key.as_ref().map(|k| &*k.id));
    w.str("key_name", f.key.as_ref().map(|k| clip(&k.name, MAX_FIELD)));
    w.str("route", (f.route != "-").then_some(f.route));
    w.str("model", f.model.as_deref().map(|m| clip(m, MAX_FIELD)));
    w.str("upstream", f.upstream.as_deref());
    w.num("status", Some(u64::from(f.status)));
    w.str("error", f.error_code.or(f.stream_error.map(|e| e.code())));
    w.bool("complete", f.complete);
    w.num("latency_us", Some(total.as_micros() as u64));
    w.num(
        "upstream_us",
        f.upstream_latency.map(|d| d.as_micros() as u64),
    );
    w.num("added_us", Some(added.as_micros() as u64));
    w.num("prompt_tokens", f.tokens.map(|t| t.prompt));
    w.num("completion_tokens", f.tokens.map(|t| t.completion));
    w.bool("tokens_estimated", f.tokens_estimated);
    w.num("bytes_received", Some(f.bytes_received));
    w.num("bytes_sent", Some(f.bytes_sent));
    if json {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// One key change: who did what to which key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEvent<'a> {
    pub action: &'a str,
    pub key_id: &'a str,
    pub key_name: &'a str,
    /// `cli:<user>` or `api:<admin key id>`.
    pub by: &'a str,
}

/// Where audit records go: always the log (`keygate::audit` on stderr), and `[log] audit_file`
/// when set. Opened before a change is made, so a change is refused rather than made
/// unaudited when the audit file cannot be written.
pub struct Audit {
    file: Option<(PathBuf, File)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit file {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl Audit {
    /// Opens `audit_file` for appending (created 0600 if missing).
    pub fn open(audit_file: Option<&Path>) -> Result<Audit, AuditError> {
        let file = match audit_file {
            None => None,
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| AuditError {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Some((path.to_path_buf(), f))
            }
        };
        Ok(Audit { file })
    }

    /// Logs `e` and appends it to the audit file as one JSON line, fsynced. The log line has
    /// the name escaped (it may reach a terminal; a hand-edited file can hold anything); the
    /// audit file has it exactly.
    pub fn record(&mut self, e: &AuditEvent<'_>) -> Result<(), AuditError> {
        tracing::info!(target: "keygate::audit", action = %e.action, key_id = %e.key_id, key_name = %crate::text::Escaped(e.key_name), by = %e.by, "key {}", e.action);
        let Some((path, file)) = &mut self.file else {
            return Ok(());
        };
        #[derive(serde::Serialize)]
        struct Line<'a> {
            timestamp: crate::time::Timestamp,
            #[serde(flatten)]
            event: &'a AuditEvent<'a>,
        }
        let err = |source: io::Error| AuditError {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&Line {
            timestamp: crate::time::Timestamp::now(),
            event: e,
        })
        .map_err(|e| err(io::Error::other(e)))?;
        line.push(b'\n');
        // One write of the whole line, so lines from concurrent writers (O_APPEND) never mix.
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until released, to fill the queue.
    struct Gate {
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn overload_drops_only_offered_lines_and_counts_them() {
        let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink::spawn(
            Box::new(Gate {
                open: Arc::clone(&open),
                out: Arc::clone(&out),
            }),
            4,
        )
        .unwrap();
        // The writer takes the first line and blocks on it; then the queue fills.
        sink.send(b"first\n".to_vec());
        let mut offered = 0;
        while sink.offer(b"access\n".to_vec()) {
            offered += 1;
            assert!(offered < 100, "the queue is bounded");
        }
        assert!(!sink.offer(b"access\n".to_vec()));
        assert_eq!(sink.dropped(), 2);
        // A line that must not be lost waits for room instead.
        let s2 = Arc::clone(&sink);
        let audit = std::thread::spawn(move || s2.send(b"audit\n".to_vec()));
        {
            let (m, c) = &*open;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        audit.join().unwrap();
        sink.flush(Duration::from_secs(5));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("first\n"), "{text}");
        assert!(text.ends_with("audit\n"), "{text}");
        assert_eq!(text.matches("access\n").count(), offered);
        assert_eq!(sink.dropped(), 2);
    }

    #[test]
    fn text_values_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        let mut w = Fields {
            out: &mut out,
            json: false,
        };
        w.str("a", Some("plain/1.0"));
        w.str("b", Some("two words \"q\"\nx"));
        w.str("c", None);
        w.str("d", Some(""));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#" a=plain/1.0 b="two words \"q\"\nx" c=- d="""#
        );
    }

    #[test]
    fn paths_never_carry_a_key() {
        assert_eq!(
            logged_path("/v1/chat/completions", "sk_kg"),
            "/v1/chat/completions"
        );
        assert_eq!(logged_path("/v1/sk_kg_abc/x", "sk_kg"), "/v1/[redacted]/x");
        assert_eq!(clip("héllo", 2), "h");
    }
}
