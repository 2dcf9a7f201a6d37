//! TLS with rustls (ring provider): the listener's certificate, reloaded when its files
//! change, and the trust roots for HTTPS upstreams.
//!
//! The listener offers ALPN `h2` and `http/1.1`. A certificate reload builds a complete new
//! server configuration first and swaps it in only if it loaded, so a half-written or broken
//! certificate never replaces a working one; connections in progress keep theirs. A
//! certificate outside its validity (expired, or not yet valid) is refused as broken: every
//! client that checks certificates would refuse it.

use crate::time::Timestamp;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {message}")]
    Certs { path: PathBuf, message: String },
    #[error("cannot read a private key from {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the certificate in {path} is not a readable X.509 certificate: {message}")]
    X509 { path: PathBuf, message: String },
    #[error(
        "certificate {n} in {path} (1 is the server's own, the others its chain) expired at {at}"
    )]
    Expired {
        path: PathBuf,
        n: usize,
        at: Timestamp,
    },
    #[error("certificate {n} in {path} (1 is the server's own, the others its chain) is not valid before {at}")]
    NotYetValid {
        path: PathBuf,
        n: usize,
        at: Timestamp,
    },
}

/// A loaded server configuration, what its certificate is, and until when it is valid.
pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate chain and the key: a reload that finds the same files
    /// changes nothing (the cert and the key watcher both fire for one Secret update).
    fingerprint: [u8; 32],
    /// The earliest `notAfter` of the chain (`chain_validity`).
    pub expires_at: Timestamp,
}

/// When the chain stops working: the earliest end of any of its certificates' validity
/// (an intermediate that expires fails clients as the leaf would). Refused when one of them
/// is outside its validity `now`.
fn chain_validity(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: Timestamp,
) -> Result<Timestamp, TlsError> {
    let mut until = Timestamp::MAX;
    for (i, cert) in chain.iter().enumerate() {
        until = until.min(validity(path, i + 1, cert, now)?);
    }
    Ok(until)
}

/// One certificate's validity, refused outside it.
fn validity(
    path: &Path,
    n: usize,
    cert: &CertificateDer<'_>,
    now: Timestamp,
) -> Result<Timestamp, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::X509 {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let v = cert.validity();
    let at = |t: i64| Timestamp(u64::try_from(t).unwrap_or(0));
    let (from, until) = (at(v.not_before.timestamp()), at(v.not_after.timestamp()));
    if now < from {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            n,
            at: from,
        });
    }
    if until <= now {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            n,
            at: until,
        });
    }
    Ok(until)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's problem in words: rustls prints the bytes of a marker as a list of numbers
/// (`missing section end marker: [67, 69, 82, …]`).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no end line `-----END {}-----` (the file is cut short?)",
            text(end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("a PEM section starts with a bad line `{}`", text(line))
        }
        E::Base64Decode(e) => format!("a PEM section is not valid base64 ({e})"),
        E::NoItemsFound => "no PEM section of the kind needed".into(),
        other => other.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Certs {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_problem(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A server configuration from PEM files, with ALPN h2 and http/1.1, if its certificate is
/// valid `now`.
pub fn server_config(cert: &Path, key: &Path, now: Timestamp) -> Result<Loaded, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: pem_problem(&e),
    })?;
    let expires_at = chain_validity(cert, &certs, now)?;
    let mut hash = Sha256::new();
    for c in &certs {
        hash.update(c.as_ref());
    }
    hash.update(key_der.secret_der());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(cfg),
        fingerprint: hash.finalize().into(),
        expires_at,
    })
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// A new certificate serves from now on, valid until then.
    Changed { expires_at: Timestamp },
    /// The files hold what already serves.
    Same,
}

/// The listener's TLS state: swapped whole when the certificate files change.
pub struct ServerTls {
    current: ArcSwap<rustls::ServerConfig>,
    /// The fingerprint of what serves (`Loaded::fingerprint`).
    serving: Mutex<[u8; 32]>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When the certificate that serves expires.
    pub expires_at: Timestamp,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let loaded = server_config(cert, key, Timestamp::now())?;
        Ok(ServerTls {
            current: ArcSwap::new(loaded.config),
            serving: Mutex::new(loaded.fingerprint),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            expires_at: loaded.expires_at,
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; on error the current certificate keeps serving.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let loaded = server_config(&self.cert, &self.key, Timestamp::now())?;
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if *serving == loaded.fingerprint {
            return Ok(Reloaded::Same);
        }
        *serving = loaded.fingerprint;
        self.current.store(loaded.config);
        Ok(Reloaded::Changed {
            expires_at: loaded.expires_at,
        })
    }
}

/// Trust for HTTPS upstreams: the Mozilla roots (webpki-roots), plus `ca_file` if given
/// (for upstreams with a private CA).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How a connection to the TLS listener began.
pub enum Handshake {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// It spoke plain HTTP: answered 400 in plain HTTP, and closed.
    PlainHttp,
}

/// What a client that sends plain HTTP to the TLS port is told, in words it can read (a TLS
/// alert is garbage to its HTTP parser: curl says "Received HTTP/0.9").
const PLAIN_HTTP: &str = r#"{"error":{"message":"This port speaks HTTPS: use https:// in the URL.","type":"invalid_request_error","param":null,"code":"invalid_request"}}"#;

/// The TLS handshake, unless the client's first byte shows plain HTTP (a method's capital
/// letter, where TLS starts with a handshake record, 0x16).
pub async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    mut stream: TcpStream,
) -> std::io::Result<Handshake> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 1 && first[0].is_ascii_uppercase() {
        // Read what came (the head) so closing does not reset the connection under the
        // answer, then answer and close.
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await?;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP}",
            PLAIN_HTTP.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        let _ = stream.shutdown().await;
        return Ok(Handshake::PlainHttp);
    }
    Ok(Handshake::Tls(Box::new(acceptor.accept(stream).await?)))
}
