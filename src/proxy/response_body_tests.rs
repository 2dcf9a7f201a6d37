use super::*;
use crate::proxy::pool::Pool;
use crate::proxy::request_body::UpBody;
use crate::server::nudge::counting_waker;
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
    let (resp, lease) = pool.send(req).await.unwrap();
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
