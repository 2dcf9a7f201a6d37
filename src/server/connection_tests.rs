//! The connection's activity bookkeeping and its driver's deadlines, on a real runtime.

use super::*;

#[test]
fn a_response_waiting_through_parts_plus_one_periods_is_stalled() {
    let a = Activity::new();
    let mut s = a.begin();
    s.handed();
    for _ in 0..PARTS {
        assert!(!a.next_period());
    }
    assert!(a.next_period(), "waited more than PARTS whole periods");
    s.polled();
    for _ in 0..(2 * SLOTS) {
        assert!(!a.next_period());
    }
}

#[test]
fn responses_that_keep_moving_are_never_stalled() {
    let a = Activity::new();
    let mut s = a.begin();
    for _ in 0..(4 * SLOTS) {
        s.handed();
        assert!(!a.next_period());
        s.polled();
    }
    drop(s);
    assert!(a.idle_since().is_some());
}

#[test]
fn idle_only_with_no_open_request() {
    let a = Activity::new();
    assert_eq!(a.idle_since(), Some(a.start));
    let s1 = a.begin();
    let s2 = a.begin();
    assert_eq!(a.idle_since(), None);
    drop(s1);
    assert_eq!(a.idle_since(), None);
    drop(s2);
    assert!(a.idle_since().is_some());
}

/// A connection that never answers and never ends, idle from the start: the driver asks it to
/// close at `header_read_timeout`, and drops it one more `header_read_timeout` later: its
/// timer fires three times (the first wake, the close, the cut), each time reset.
#[tokio::test]
async fn an_idle_connection_that_ignores_the_close_is_dropped() {
    let activity = Activity::new();
    let d = Deadlines {
        header_read: Duration::from_millis(40),
        idle: Duration::from_secs(60),
        write: Duration::from_secs(60),
    };
    let (_stop_tx, stop) = watch::channel(false);
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let mut conn = std::pin::pin!(std::future::pending::<Result<(), ()>>());
    let started = Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        drive(
            conn.as_mut(),
            |_| {
                asked.fetch_add(1, Ordering::SeqCst);
            },
            &activity,
            d,
            stop,
        ),
    )
    .await
    .expect("the driver never cut the connection");
    assert!(matches!(ended, Ended::Cut(Cut::CloseIgnored)), "{ended:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "asked to close once");
    assert!(started.elapsed() >= 2 * d.header_read);
}

/// The server stopping asks an idle connection to close at once, not at its next deadline.
#[tokio::test]
async fn a_stop_asks_the_connection_to_close() {
    let activity = Activity::new();
    let d = Deadlines {
        header_read: Duration::from_secs(60),
        idle: Duration::from_secs(60),
        write: Duration::from_secs(60),
    };
    let (stop_tx, stop) = watch::channel(false);
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let asked_tx = std::sync::Mutex::new(Some(asked_tx));
    let mut conn = std::pin::pin!(std::future::pending::<Result<(), ()>>());
    let driver = drive(
        conn.as_mut(),
        |_| {
            if let Some(tx) = asked_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        },
        &activity,
        d,
        stop,
    );
    let asked = async {
        tokio::task::yield_now().await;
        stop_tx.send(true).unwrap();
        asked_rx.await
    };
    tokio::select! {
        ended = driver => panic!("the driver ended first: {ended:?}"),
        r = tokio::time::timeout(Duration::from_secs(10), asked) => {
            assert!(matches!(r, Ok(Ok(()))), "never asked to close");
        }
    }
}
