//! `sniff` on real loopback sockets: what it tells, and that the bytes stay for hyper.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A connected pair: the client's end, and the server's as the listener accepted it.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Sends `bytes`, then sniffs the server's end once they can all be peeked; the client's end
/// comes back too, open, so that the server's sees no FIN.
async fn sniffed(bytes: &[u8]) -> (Sniffed, TcpStream, TcpStream) {
    let (mut client, server) = pair().await;
    client.write_all(bytes).await.unwrap();
    // Loopback delivers a small write whole; wait until it is all there to peek.
    let mut all = vec![0u8; bytes.len()];
    while server.peek(&mut all).await.unwrap() < bytes.len() {
        tokio::task::yield_now().await;
    }
    (sniff(&server).await.unwrap(), server, client)
}

#[tokio::test]
async fn http1_and_http2_are_told_from_their_first_bytes() {
    for request in [
        &b"GET /healthz HTTP/1.1\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"PO",
    ] {
        assert_eq!(sniffed(request).await.0, Sniffed::Http1, "{request:?}");
    }
    let mut h2 = PREFACE.to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(sniffed(&h2).await.0, Sniffed::Http2);
}

#[tokio::test]
async fn a_prefix_of_the_http2_preface_is_left_undecided() {
    for partial in [
        &b"P"[..],
        b"PRI * HTTP/2.0\r\n",
        &PREFACE[..PREFACE_LEN - 1],
    ] {
        assert_eq!(sniffed(partial).await.0, Sniffed::Unsure, "{partial:?}");
    }
}

#[tokio::test]
async fn the_peeked_bytes_stay_for_hyper() {
    let request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n";
    let (got, mut server, _client) = sniffed(request).await;
    assert_eq!(got, Sniffed::Http1);
    let mut read = vec![0u8; request.len()];
    server.read_exact(&mut read).await.unwrap();
    assert_eq!(&read[..], &request[..]);
}

#[tokio::test]
async fn a_client_that_closes_without_a_byte_is_closed() {
    let (client, server) = pair().await;
    drop(client);
    assert_eq!(sniff(&server).await.unwrap(), Sniffed::Closed);
}
