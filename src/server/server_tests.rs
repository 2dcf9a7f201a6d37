//! The listener's per-connection task, measured.

use super::*;

/// A connection's task is copied whole into a fresh allocation when it is spawned, and its
/// state is read at every poll: with the TLS handshake inline, every plain connection's task
/// was sized for it (5,880 bytes in a release build), which cost connection-per-request
/// traffic about three times the last-level misses per request (see `Ctx::connection`).
#[tokio::test]
async fn a_connections_task_stays_small() {
    let toml = "[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\nmodels = [\"*\"]\n";
    let gw = Gateway::new(Config::parse(toml, None).unwrap());
    let config = gw.config();
    let (_stop, stopped) = watch::channel(false);
    let mut ctx = Ctx {
        builder: Arc::new(builder(&config.server)),
        built_from: Arc::clone(&config),
        gw,
        tls: None,
        stop: stopped,
        freed: Arc::new(Notify::new()),
        per_ip: Arc::new(PerIp::default()),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let task = ctx.connection(stream, peer).unwrap();
    let size = std::mem::size_of_val(&task);
    assert!(size <= 1408, "a connection's task is {size} bytes");
}
