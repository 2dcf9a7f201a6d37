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
//! flush. Access lines are the only lines ever dropped: when `MAX_PENDING` bytes are waiting
//! (the writer cannot keep up, e.g. a slow terminal or disk), an access line is counted in
//! `keygate_log_lines_dropped_total` instead of making the request wait. Every other line is
//! kept, whatever is waiting.
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
/// a busy gateway's lines while stderr stalls).
const MAX_PENDING: usize = 8 * 1024 * 1024;

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

    /// Queues a line that must not be lost, and wakes the writer for it.
    pub fn send(&self, line: &[u8]) {
        let mut p = self.lock();
        p.buf.extend_from_slice(line);
        p.wake = true;
        drop(p);
        self.work.notify_one();
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

/// What the tracing subscriber writes through: one event, one queued line, never dropped.
struct EventWriter(Arc<Sink>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf);
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
    let sink = Sink::spawn(Box::new(std::io::stderr()), MAX_PENDING).ok()?;
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

    /// Queues an access line written by `format` (`account::access_log`): dropped, and
    /// counted, when the writer cannot keep up, rather than making the request wait.
    pub fn offer_access(&self, format: impl FnOnce(&mut Vec<u8>, &mut SecondStamp)) {
        self.sink.offer_with(format);
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
            28,
        )
        .unwrap();
        // The writer takes the first line and blocks writing it; then the buffer fills.
        sink.send(b"first\n");
        sink.flush(Duration::from_millis(200)); // times out: the writer is stuck on "first"
        let mut offered = 0;
        while sink.offer_with(|b, _| b.extend_from_slice(b"access\n")) {
            offered += 1;
            assert!(offered < 100, "the buffer is bounded");
        }
        assert!(!sink.offer_with(|b, _| b.extend_from_slice(b"access\n")));
        assert_eq!(sink.dropped(), 2);
        // A line that must not be lost is kept, however much waits.
        sink.send(b"audit\n");
        {
            let (m, c) = &*open;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        sink.flush(Duration::from_secs(5));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("first\n"), "{text}");
        assert!(text.ends_with("audit\n"), "{text}");
        assert_eq!(text.matches("access\n").count(), offered);
        assert_eq!(offered, 4, "28 bytes hold four 7-byte lines");
        assert_eq!(sink.dropped(), 2);
    }

    #[test]
    fn access_lines_do_not_wake_the_writer_but_reach_it_within_a_tick() {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::spawn(Box::new(Shared(Arc::clone(&out))), MAX_PENDING).unwrap();
        for _ in 0..100 {
            assert!(sink.offer_with(|b, _| b.extend_from_slice(b"access\n")));
        }
        assert!(!sink.lock().wake, "an access line never asks for a wake-up");
        let start = std::time::Instant::now();
        while out.lock().unwrap().len() < 700 {
            assert!(start.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
