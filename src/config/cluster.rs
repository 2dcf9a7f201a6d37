//! `[cluster]`: cluster mode's settings, validated, and the Redis client they describe.
//!
//! The client is built here, when the configuration is validated, so that `check` and `serve`
//! refuse a backend that cannot be built (a bad URL, an unreadable CA file), and again on each
//! connection attempt (`limit::redis`), so changed TLS files are read.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do when Redis cannot answer (`on_backend_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    Allow,
    Deny,
    Local,
}

/// `[cluster] key_prefix` when none is set; also the prefix of what replicas share through
/// the shared key store's Redis when there is no `[cluster]` (`config::shared_redis`).
pub const DEFAULT_KEY_PREFIX: &str = "keygate";

/// `[cluster]` with `backend = "redis"`: limits shared by every replica through Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub on_backend_error: OnBackendError,
    pub timeout: Duration,
    pub key_prefix: String,
    /// How long an in-flight slot lives in Redis unless renewed. Running requests renew theirs
    /// every third of it, so this bounds how long a crashed replica's slots stay taken.
    pub lease: Duration,
    pub tls: RedisTls,
}

/// Files for `rediss://`: a private CA to trust instead of the public roots, and a client
/// certificate for a Redis that asks for one (`tls-auth-clients yes`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Why the Redis client cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Url(String),
    #[error("`#insecure` (no certificate check) is not supported; trust a private CA with `cluster.ca_file`")]
    Insecure,
    #[error("TLS files need a rediss:// URL")]
    TlsWithoutRediss,
    #[error("cannot read {}: {message}", path.display())]
    File {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
}

impl BackendError {
    /// The `[cluster]` field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            BackendError::Url(_) | BackendError::Insecure | BackendError::TlsWithoutRediss => {
                "cluster.redis_url"
            }
            BackendError::File { field, .. } => field,
        }
    }
}

/// Reads a PEM file that must hold at least one certificate (`key`: one private key).
fn read_pem(path: &Path, field: &'static str, key: bool) -> Result<Vec<u8>, BackendError> {
    let err = |message: String| BackendError::File {
        field,
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if key {
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| err(e.to_string()))?;
    } else {
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
    }
    Ok(bytes)
}

/// The Redis client for `config`, with its URL checked and TLS files read. Called when the
/// configuration is validated, so `check` and `serve` refuse a backend that cannot be built,
/// and again on each connection attempt (the files are re-read).
pub fn redis_client(config: &ClusterConfig) -> Result<redis::Client, BackendError> {
    let url = config.redis_url.as_str();
    let tls = &config.tls;
    let client = if tls == &RedisTls::default() {
        redis::Client::open(url)
    } else {
        if !url.starts_with("rediss://") {
            return Err(BackendError::TlsWithoutRediss);
        }
        let root_cert = match &tls.ca_file {
            Some(p) => Some(read_pem(p, "cluster.ca_file", false)?),
            None => None,
        };
        let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "cluster.client_cert_file", false)?,
                client_key: read_pem(key, "cluster.client_key_file", true)?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }
    .map_err(|e| BackendError::Url(e.to_string()))?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = client.get_connection_info().addr
    {
        return Err(BackendError::Insecure);
    }
    Ok(client)
}
