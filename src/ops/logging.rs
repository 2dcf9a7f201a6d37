//! Logs on stderr, text or JSON, with a level that a config reload can change. (The access
//! line is formatted by `account::access_log`, the audit trail written by `ops::audit`.)
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

use crate::config::{LogConfig, LogFormat};
use std::io::{IsTerminal, Write};
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

    /// The format of the lines.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Queues an access line (`account::access_log`): dropped, and counted, when the writer
    /// cannot keep up, rather than making the request wait.
    pub fn offer_access(&self, line: Vec<u8>) {
        self.sink.offer(line);
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
}
