use super::*;
use crate::proxy::pool::Pool;
use crate::proxy::request_body::UpBody;
use crate::server::nudge::counting_waker;
use http::header;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of the answer an upstream on loopback gives one request: it writes `reply` (a
/// head, and whatever of the body comes with it) in one write, then holds the connection.
async fn answer_from(reply: &'static [u8]) -> Body {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(reply).await.unwrap();
        std::future::pending::<()>().await;
    });
    let pool = Pool::new("127.0.0.1", addr.port(), None, Duration::from_secs(2));
    let req = http::Request::post("/v1/chat/completions")
        .header(header::HOST, "upstream")
        .body(UpBody::full(Bytes::new()))
        .unwrap();
    let (resp, lease) = pool.send(req, std::time::Instant::now()).await.unwrap();
    Body::upstream(
        resp.into_body(),
        lease,
        Duration::from_secs(60),
        Some(crate::account::scanner::UsageScanner::for_answer(false)),
        false,
    )
}

/// A key revoked after the upstream's head arrived but before the answer's body was first
/// polled: the body yields once (so hyper writes the head it holds) and only then ends with
/// the error. Ending at once cut an HTTP/1.1 connection with no answer at all.
#[tokio::test]
async fn a_revoke_before_the_first_frame_lets_the_head_out_first() {
    // A chunked head, the body held back: a model that has not produced its first token.
    let mut body = answer_from(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
    let state = Arc::new(KeyState::default());
    body.end_on_revoke(&state);
    state.revocation.revoke(Ended::Disabled);

    let (waker, wakes) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(
        Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
        "the first poll ended the answer before the head could go out"
    );
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "woken to end it next turn");
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Err(e))) => assert!(e.is::<KeyRevoked>(), "{e}"),
        other => panic!("not ended by the revoke: {other:?}"),
    }
}

/// Taking a frame the connection already read does not wake the task that takes it: the
/// body drives the connection before every read of hyper's channel, so the channel's wake of
/// the connection's driver (this very task, in its own poll) was one more poll of the whole
/// client connection for nothing. It woke the task once per answer before `pool::wake`.
#[tokio::test]
async fn taking_a_frame_does_not_wake_the_task_taking_it() {
    // The head and a body of two chunks in one write: the connection reads them all, and
    // hands the body over a frame at a time.
    let mut body = answer_from(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    // Read in a task of its own, as a client connection's task reads it (the taker is told
    // by its task id).
    tokio::spawn(async move {
        let (waker, wakes) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap(), "hello"),
            other => panic!("the body's frame was not there: {other:?}"),
        }
        assert_eq!(
            wakes.load(Ordering::SeqCst),
            0,
            "taking the frame woke the task taking it"
        );
        // Not (yet) spared: the connection, driven for the next frame, hands it over with a
        // wake of the body's reader, which is this task too (one poll more per frame of a
        // streamed answer, none for an answer that comes in one frame).
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_data().unwrap(), "world"),
            other => panic!("the body's second frame was not there: {other:?}"),
        }
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
    })
    .await
    .unwrap();
}
