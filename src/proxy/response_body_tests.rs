use super::*;
use crate::proxy::pool::Pool;
use crate::proxy::request_body::UpBody;
use crate::server::nudge::counting_waker;
use http::header;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream on loopback that answers one request with a chunked head and then holds the
/// body back, as a model that has not produced its first token yet.
async fn head_only_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    addr
}

/// A key revoked after the upstream's head arrived but before the answer's body was first
/// polled: the body yields once (so hyper writes the head it holds) and only then ends with
/// the error. Ending at once cut an HTTP/1.1 connection with no answer at all.
#[tokio::test]
async fn a_revoke_before_the_first_frame_lets_the_head_out_first() {
    let addr = head_only_upstream().await;
    let pool = Arc::new(Pool::new(
        "127.0.0.1",
        addr.port(),
        None,
        Duration::from_secs(2),
    ));
    let req = http::Request::post("/v1/chat/completions")
        .header(header::HOST, "upstream")
        .body(UpBody::full(Bytes::new()))
        .unwrap();
    let (resp, lease) = pool.send(req, std::time::Instant::now()).await.unwrap();
    let mut body = Body::upstream(
        resp.into_body(),
        lease,
        Duration::from_secs(60),
        true,
        false,
    );
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

/// An upstream on loopback that answers one request at once, the head and a body of two
/// chunks in one write: the connection reads them all, and hands the body over a frame at a
/// time.
async fn whole_answer_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    addr
}

/// Taking a frame the connection already read does not wake the task that takes it: the
/// body drives the connection before every read of hyper's channel, so the channel's wake of
/// the connection's driver (this very task, in its own poll) was one more poll of the whole
/// client connection for nothing. It woke the task once per answer before `pool::wake`.
#[tokio::test]
async fn taking_a_frame_does_not_wake_the_task_taking_it() {
    let addr = whole_answer_upstream().await;
    let pool = Pool::new("127.0.0.1", addr.port(), None, Duration::from_secs(2));
    let req = http::Request::post("/v1/chat/completions")
        .header(header::HOST, "upstream")
        .body(UpBody::full(Bytes::new()))
        .unwrap();
    let (resp, lease) = pool.send(req, std::time::Instant::now()).await.unwrap();
    let mut body = Body::upstream(
        resp.into_body(),
        lease,
        Duration::from_secs(60),
        true,
        false,
    );
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
