//! The whole request path, end to end: arbitrary bytes are sent as one client connection to a
//! real gateway (in-process, on 127.0.0.1) in front of the project's recording mock upstream.
//! The gateway must not panic, and no client credential may ever reach the upstream: the
//! valid key below is spliced into the input in many places (headers, query, body, trailers),
//! and whatever the gateway forwards is checked for it, in every header of every request.
#![no_main]

use keygate::gateway::Gateway;
use keygate::keys::record::NewKey;
use keygate::keys::store::KeyStore;
use keygate::mock::{MockOptions, Recorder};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    recorder: Recorder,
    key: String,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::enabled();
        let (addr, key) = rt.block_on(async {
            let mock_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mock_addr = mock_l.local_addr().unwrap();
            tokio::spawn(keygate::mock::serve(mock_l, MockOptions::default(), recorder.clone(), std::future::pending()));
            let toml = format!(
                "[server]\nheader_read_timeout = \"200ms\"\nbody_read_timeout = \"200ms\"\n[keys]\nfile = \"{}\"\n[[upstream]]\nurl = \"http://{mock_addr}\"\nfirst_byte_timeout = \"500ms\"\n",
                dir.path().join("keys.json").display()
            );
            let config = keygate::config::Config::parse(&toml, None).unwrap();
            let (_, tok) = KeyStore::new(&config.keys.file)
                .update(|f| f.create(NewKey { name: "fuzz".into(), ..Default::default() }, "sk_kg", keygate::time::Timestamp::now()))
                .unwrap();
            let gw: Arc<Gateway> = Gateway::new(config);
            gw.reload_keys().unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(keygate::server::run(l, gw, std::future::pending()));
            (addr, tok.plaintext)
        });
        World { rt, addr, recorder, key, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // `@K` in the input becomes the valid key, so credentials appear wherever the fuzzer puts them.
    let mut input = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"@K") {
            input.extend_from_slice(w.key.as_bytes());
            i += 2;
        } else {
            input.push(data[i]);
            i += 1;
        }
    }
    w.rt.block_on(async {
        let Ok(mut s) = tokio::net::TcpStream::connect(w.addr).await else {
            return;
        };
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
    let secret = &w.key[6..];
    for r in w.recorder.take() {
        for (name, value) in &r.headers {
            let v = value.as_bytes();
            assert!(
                !v.windows(secret.len()).any(|win| win == secret.as_bytes()),
                "a client credential reached the upstream in header {name}"
            );
            assert!(
                !matches!(
                    name.as_str(),
                    "authorization" | "x-api-key" | "proxy-authorization" | "cookie"
                ),
                "header {name} reached the upstream"
            );
        }
    }
});
