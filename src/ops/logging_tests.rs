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

impl Gate {
    /// Lets the writer write (and every write after).
    fn release(&self) {
        let (m, c) = &*self.open;
        *m.lock().unwrap() = true;
        c.notify_all();
    }

    /// What the writer wrote.
    fn written(&self) -> String {
        String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
    }
}

/// A sink whose writer blocks until the gate is released; the gate keeps what it wrote.
fn gated(max_pending: usize) -> (Arc<Sink>, Gate) {
    let gate = Gate {
        open: Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new())),
        out: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let writer = Gate {
        open: Arc::clone(&gate.open),
        out: Arc::clone(&gate.out),
    };
    (Sink::spawn(Box::new(writer), max_pending).unwrap(), gate)
}

#[test]
fn overload_drops_only_offered_lines_and_counts_them() {
    let (sink, gate) = gated(28);
    // The writer takes the first line and blocks writing it; then the buffer fills.
    sink.send(b"first\n", true);
    sink.flush(Duration::from_millis(200)); // times out: the writer is stuck on "first"
    let mut offered = 0;
    while sink.offer_with(|b, _| b.extend_from_slice(b"access\n")) {
        offered += 1;
        assert!(offered < 100, "the buffer is bounded");
    }
    assert!(!sink.offer_with(|b, _| b.extend_from_slice(b"access\n")));
    assert_eq!(sink.dropped(), 2);
    // A line that must not be lost is kept, however much waits.
    sink.send(b"audit\n", true);
    gate.release();
    sink.flush(Duration::from_secs(5));
    let text = gate.written();
    assert!(text.starts_with("first\n"), "{text}");
    assert!(text.ends_with("audit\n"), "{text}");
    assert_eq!(text.matches("access\n").count(), offered);
    assert_eq!(offered, 4, "28 bytes hold four 7-byte lines");
    assert_eq!(sink.dropped(), 2);
}

#[test]
fn a_stalled_writer_bounds_warnings_too_but_never_drops_an_audit_line() {
    let (sink, gate) = gated(28);
    let make = EventWriters(Arc::clone(&sink));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(make)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!("first");
        sink.flush(Duration::from_millis(200)); // the writer is stuck on "first"
        for i in 0..50 {
            tracing::warn!("upstream request failed {i}");
        }
        tracing::info!(target: "keygate::audit", "key revoked");
    });
    // Twice 28 bytes wait at most, then warnings are dropped: one or two fit.
    let dropped = sink.dropped();
    assert!((48..=50).contains(&dropped), "{dropped}");
    gate.release();
    sink.flush(Duration::from_secs(5));
    let text = gate.written();
    assert!(text.contains("first"), "{text}");
    assert!(
        text.contains("key revoked"),
        "the audit line was dropped: {text}"
    );
    assert!(!text.contains("failed 49"), "{text}");
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
