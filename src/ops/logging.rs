//! Logs on stderr, text or JSON, with a level that a config reload can change. (The access
//! line is formatted by `account::access_log`, the audit trail written by `ops::audit`.)
//!
//! Nothing is written on the request path, and the request path wakes nobody: lines are
//! appended to one in-memory buffer (a short lock; the access line is formatted straight into
//! it, no allocation), and one writer thread takes the whole buffer every `TICK` and writes it
//! with one `write`. Waking a thread per line costs a futex and a context switch per request
//! on the gateway's core, several times the cost of the line; batching by time costs up to
//! `TICK` of delay in the log. The writer is woken early only by a line that must not wait
//! (anything but an access line: warnings, errors, audit), a buffer past `WAKE_BYTES`, or a
//! flush. No line makes anything wait, and memory stays bounded when stderr stalls (a slow
//! terminal, a pipe nobody reads): past `MAX_PENDING` waiting bytes access lines are dropped,
//! past twice that every other line but an audit line is dropped too, each counted in
//! `keygate_log_lines_dropped_total`. Audit lines are never dropped (key changes are few, and
//! `[log] audit_file` has them too).
//!
//! Colour codes only when stderr is a terminal, never in a file, a pipe or `kubectl logs`.

use crate::config::{LogConfig, LogFormat};
use crate::time::SecondStamp;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// How often the writer takes what has accumulated.
const TICK: Duration = Duration::from_millis(100);
/// A buffer this full wakes the writer before its tick.
const WAKE_BYTES: usize = 256 * 1024;
/// Past this many waiting bytes, access lines are dropped (about 16k lines, a few seconds of
/// a busy gateway's lines while stderr stalls); past twice as many, warnings and errors too.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// The target of audit lines, the only lines never dropped.
const AUDIT_TARGET: &str = "keygate::audit";

/// What waits for the writer.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// The access lines' timestamps, worked out once a second.
    stamp: SecondStamp,
    /// The writer should not wait for its tick.
    wake: bool,
    /// Flushes asked for, and the last one the writer has completed.
    flush_asked: u64,
    flushed: u64,
}

/// The buffer the writer thread empties.
#[derive(Debug)]
pub struct Sink {
    pending: Mutex<Pending>,
    /// Wakes the writer early.
    work: Condvar,
    /// Tells flushers the writer has written what they waited for.
    done: Condvar,
    dropped: AtomicU64,
    max_pending: usize,
}

impl Sink {
    /// A sink whose writer thread writes to `out`; access lines are dropped past
    /// `max_pending` waiting bytes.
    pub fn spawn(out: Box<dyn Write + Send>, max_pending: usize) -> std::io::Result<Arc<Sink>> {
        let sink = Arc::new(Sink {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            dropped: AtomicU64::new(0),
            max_pending,
        });
        let writer = Arc::clone(&sink);
        std::thread::Builder::new()
            .name("keygate-log".into())
            .spawn(move || writer.write_batches(out))?;
        Ok(sink)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a line that should not wait (a warning, an error, an audit line) and wakes the
    /// writer for it. Unless `keep`, it is dropped and counted when twice `max_pending` bytes
    /// wait already. Returns false if dropped.
    pub fn send(&self, line: &[u8], keep: bool) -> bool {
        let mut p = self.lock();
        if !keep && p.buf.len() >= self.max_pending.saturating_mul(2) {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        p.buf.extend_from_slice(line);
        p.wake = true;
        drop(p);
        self.work.notify_one();
        true
    }

    /// Appends what `format` writes (an access line, its timestamp through the stamp given),
    /// unless `max_pending` bytes wait already: then it is dropped and counted. Never waits
    /// for the writer, wakes it only when the buffer passes `WAKE_BYTES`. Returns false if
    /// dropped.
    pub fn offer_with(&self, format: impl FnOnce(&mut Vec<u8>, &mut SecondStamp)) -> bool {
        let mut p = self.lock();
        if p.buf.len() >= self.max_pending {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Pending { buf, stamp, .. } = &mut *p;
        format(buf, stamp);
        let wake = p.buf.len() >= WAKE_BYTES && !p.wake;
        if wake {
            p.wake = true;
        }
        drop(p);
        if wake {
            self.work.notify_one();
        }
        true
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until everything queued before this call has been written.
    pub fn flush(&self, limit: Duration) {
        let mut p = self.lock();
        p.flush_asked += 1;
        let asked = p.flush_asked;
        p.wake = true;
        self.work.notify_one();
        let deadline = std::time::Instant::now() + limit;
        while p.flushed < asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            p = self
                .done
                .wait_timeout(p, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The writer thread: every `TICK`, or sooner when woken, takes everything that waits
    /// and writes it with one call.
    fn write_batches(&self, mut out: Box<dyn Write + Send>) {
        let mut batch: Vec<u8> = Vec::new();
        loop {
            let mut p = self.lock();
            if !p.wake {
                p = self
                    .work
                    .wait_timeout(p, TICK)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            p.wake = false;
            std::mem::swap(&mut p.buf, &mut batch);
            let flush = p.flush_asked;
            drop(p);
            if !batch.is_empty() {
                let _ = out.write_all(&batch);
                let _ = out.flush();
                // Keep a buffer's worth of capacity, not the largest burst ever seen.
                batch.clear();
                batch.shrink_to(WAKE_BYTES);
            }
            let mut p = self.lock();
            if p.flushed < flush {
                p.flushed = flush;
                drop(p);
                self.done.notify_all();
            }
        }
    }
}

/// What the tracing subscriber writes an event through: one event, one queued line, kept
/// whatever waits only if it is an audit line.
struct EventWriter {
    sink: Arc<Sink>,
    keep: bool,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.send(buf, self.keep);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands the subscriber a writer per event, knowing the event's target.
struct EventWriters(Arc<Sink>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EventWriters {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            sink: Arc::clone(&self.0),
            keep: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        EventWriter {
            sink: Arc::clone(&self.0),
            keep: meta.target() == AUDIT_TARGET,
        }
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

/// The filter for a level or filter string. Audit lines (key changes) are logged at every
/// level — `warn` keeps the trail — unless the filter names their target itself
/// (`warn,keygate::audit=off`). At `trace`, the `notify` crate is held at `debug`: it traces
/// every inotify event in the directories we watch, so with the log file in one of them each
/// trace line is itself an event, traced again — a loop that fills the disk. Naming `notify`
/// in the filter (e.g. `trace,notify=trace`) overrides this.
fn filter(spec: &str) -> Option<EnvFilter> {
    let mut f = EnvFilter::try_new(spec).ok()?;
    let traces = f.max_level_hint().is_none_or(|l| l >= LevelFilter::TRACE);
    if traces && !spec.contains("notify") {
        if let Ok(d) = "notify=debug".parse() {
            f = f.add_directive(d);
        }
    }
    if !spec.contains(AUDIT_TARGET) {
        if let Ok(d) = format!("{AUDIT_TARGET}=info").parse() {
            f = f.add_directive(d);
        }
    }
    Some(f)
}

/// Installs the global subscriber, writing to stderr through the queue. `RUST_LOG`, when
/// set, overrides `[log] level`. `None` only if the writer thread cannot start.
pub fn init(cfg: &LogConfig) -> Option<Logging> {
    let sink = Sink::spawn(Box::new(std::io::stderr()), MAX_PENDING).ok()?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| filter(&v))
        .or_else(|| filter(&cfg.level))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let writer = EventWriters(Arc::clone(&sink));
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
            sink: Sink::spawn(out, MAX_PENDING)?,
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

    /// Lines dropped under overload.
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

    /// Queues an access line written by `format` (`account::access_log`): dropped, and
    /// counted, when the writer cannot keep up, rather than making the request wait.
    pub fn offer_access(&self, format: impl FnOnce(&mut Vec<u8>, &mut SecondStamp)) {
        self.sink.offer_with(format);
    }
}

#[cfg(test)]
#[path = "logging_tests.rs"]
mod tests;
