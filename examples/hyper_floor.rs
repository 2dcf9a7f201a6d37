//! The floor under keygate's request path: hyper's HTTP/1.1 server and client and nothing
//! between them — no key, no limits, no accounting, no pool (each client connection gets its
//! own upstream connection). The same runtime (tokio, one thread), allocator (jemalloc) and
//! release profile as keygate. The load harness measures it under callgrind beside keygate
//! (`benches/load/run.sh`: the `hyper-floor` row), so what keygate's own work costs per
//! request is the difference, not a guess.
//!
//! ```sh
//! cargo build --release --example hyper_floor
//! target/release/examples/hyper_floor 127.0.0.1:8081 127.0.0.1:8000   # LISTEN UPSTREAM
//! ```
//!
//! A measuring tool, not a proxy to deploy: an error ends the connection it happened on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        println!(
            "hyper_floor listening on http://{}",
            listener.local_addr().unwrap()
        );
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) =
                    hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
                else {
                    return;
                };
                tokio::spawn(conn);
                // HTTP/1.1 answers one request at a time per connection: the lock is never
                // contended, it only lets the service be `Fn`.
                let sender = Arc::new(tokio::sync::Mutex::new(sender));
                let service = service_fn(move |req: Request<Incoming>| {
                    let sender = Arc::clone(&sender);
                    async move {
                        let mut sender = sender.lock().await;
                        sender.ready().await?;
                        sender.send_request(req).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(client), service)
                    .await;
            });
        }
    });
}
