//! The connection driver's deadlines and stop signal, on a real runtime.

use super::*;
use std::sync::atomic::Ordering;

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
