//! A real `redis-server` on a free loopback port, plain or TLS-only, for cluster mode: the one
//! way tests launch Redis. Killed (and continued first, if stopped) when dropped.
#![allow(dead_code)]

use super::eventually;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
    /// Extra `redis-server` arguments, e.g. `--requirepass`.
    pub extra: Vec<String>,
    /// Serve TLS only, with these certificate files.
    pub tls: Option<TlsFiles>,
}

/// PEM files for a TLS Redis, all issued by one test CA.
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

impl TlsFiles {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, from rcgen.
    pub fn new() -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keygate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names.clone()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["keygate".into()]);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        TlsFiles {
            ca: write("ca.pem", &ca.pem()),
            cert: write("redis.pem", &cert),
            key: write("redis.key", &key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            _dir: dir,
        }
    }
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_with(&[], None).await
    }

    pub async fn start_with(extra: &[&str], tls: Option<TlsFiles>) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        r.spawn().await;
        r
    }

    pub async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(t) => {
                let p = |p: &std::path::Path| p.display().to_string();
                vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port,
                    "--tls-cert-file".into(),
                    p(&t.cert),
                    "--tls-key-file".into(),
                    p(&t.key),
                    "--tls-ca-cert-file".into(),
                    p(&t.ca),
                ]
            }
        };
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        args.extend(self.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        let tls = self.tls.is_some();
        assert!(
            eventually(Duration::from_secs(10), || async move {
                if tls {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                } else {
                    // Any answer: a Redis with a password answers `-NOAUTH`.
                    command(port, &["PING"], Duration::from_secs(1))
                        .await
                        .is_some()
                }
            })
            .await,
            "redis-server did not start"
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. STOP, CONT) to the redis-server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // Never leave a stopped process behind (a stopped one ignores nothing but KILL,
            // yet a test may have failed between STOP and CONT).
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// One command over a fresh connection; its reply, or `None` without one within `wait`.
pub async fn command(port: u16, args: &[&str], wait: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub async fn ping(port: u16, wait: Duration) -> bool {
    command(port, &["PING"], wait).await.as_deref() == Some("+PONG\r\n")
}

/// Commands sent after `AUTH password` on one fresh connection; the replies' text once
/// `complete` says it is whole, or `None` without that within `wait`.
async fn exchange_as(
    port: u16,
    password: &str,
    cmds: &[&[&str]],
    complete: impl Fn(&[u8]) -> bool,
    wait: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = String::new();
    for args in std::iter::once(&["AUTH", password][..]).chain(cmds.iter().copied()) {
        req.push_str(&format!("*{}\r\n", args.len()));
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 512];
        while !complete(&got) {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(wait, read).await.ok()??;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Commands sent after `AUTH password` on one fresh connection; the replies' text, once
/// every command (the `AUTH` too) has a one-line reply, or `None` without them within `wait`.
pub async fn commands_as(
    port: u16,
    password: &str,
    cmds: &[&[&str]],
    wait: Duration,
) -> Option<String> {
    let lines = |got: &[u8]| got.windows(2).filter(|w| w == b"\r\n").count() > cmds.len();
    exchange_as(port, password, cmds, lines, wait).await
}

/// How many logins Redis has refused for a wrong password (`INFO errorstats`), asked with
/// `password`; `None` without an answer within `wait`.
pub async fn wrong_passwords(port: u16, password: &str, wait: Duration) -> Option<u64> {
    // The bulk reply ends with its last line's CRLF and its own.
    let whole = |got: &[u8]| got.ends_with(b"\r\n\r\n");
    let text = exchange_as(port, password, &[&["INFO", "errorstats"]], whole, wait).await?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("errorstat_WRONGPASS:count="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0),
    )
}
