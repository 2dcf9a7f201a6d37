//! `gateway.toml`: the validated `Config` the rest of the program uses, read by `load` from the
//! raw serde structs (`raw`: every field optional, unknown keys rejected with their line) and
//! checked field by field by `validate`; `[cluster]` and `[notify]` have their own files
//! (`cluster`, `notify`).
//!
//! Keeping the two apart means a value is checked once, at load, and a reload that fails
//! validation never replaces the running configuration.

pub mod cluster;
mod key_store;
mod load;
pub mod notify;
mod raw;
mod validate;

use crate::authorize::routes::RouteTable;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// Refused on reload: an empty file is far more often a truncation or a half-finished
    /// write than a wish to go back to every default (and to upstream 127.0.0.1:8000).
    #[error("{path} is empty (nothing but whitespace or comments); not applied")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; relative paths inside it are resolved against its directory.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub keys: KeysConfig,
    pub limits: LimitDefaults,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: RouteTable,
    /// `Some` in cluster mode (`[cluster] backend = "redis"`).
    pub cluster: Option<cluster::ClusterConfig>,
    pub usage: UsageConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// `Some` when `[notify]` names a webhook (applies on reload).
    pub notify: Option<notify::NotifyConfig>,
}

/// `[usage]`: how long hourly usage buckets are kept (in the state file, or in Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub header_read_timeout: Duration,
    /// Longest gap allowed between two pieces of a request body from the client.
    pub body_read_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_size: u32,
    pub max_in_flight: usize,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// A connection with no request in progress is closed after this (GOAWAY on HTTP/2).
    pub idle_timeout: Duration,
    /// A response the client does not take for this long ends its connection.
    pub write_timeout: Duration,
    /// Open connections allowed from one client address; `None`: no limit.
    pub max_connections_per_ip: Option<u32>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` name the client (none by default).
    pub trusted_proxies: TrustedProxies,
}

/// The networks of the proxies in front of the gateway (`[server] trusted_proxies`). A
/// request from one of them is attributed to the right-most address of its forwarding
/// chain that is not itself a trusted proxy (`headers::client_addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// `10.0.0.0/8`, `2001:db8::/32`, or one address (`10.1.2.3`).
    fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<ipnet::IpNet>()
                    .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| format!("`{e}` is not a CIDR like 10.0.0.0/8 or an address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeysConfig {
    pub file: PathBuf,
    pub prefix: String,
    pub reload: bool,
    pub poll_interval: Duration,
    pub state_file: PathBuf,
    /// `/readyz` answers 503 while the key file cannot be loaded (unreadable or invalid), so
    /// an orchestrator takes a replica whose keys may be stale out of service. Off by default:
    /// a glitch in a shared Secret would otherwise take every replica out at once.
    pub unready_on_load_error: bool,
    /// Where the key records live: the key file (default) or a shared Redis, with
    /// `file` then this replica's snapshot of it.
    pub store: StoreMode,
    /// Redis mode: the snapshot is rewritten (journal folded in) at most this often.
    pub snapshot_interval: Duration,
}

/// `[keys] store`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreMode {
    File,
    Redis(RedisKeyStore),
}

/// The Redis where replicas share usage, quota counts, last use and notification claims:
/// `[cluster]`'s, else the shared key store's (its client settings, the key prefix
/// `keygate`). `None`: each gateway keeps them in its own state file.
pub fn shared_redis(
    cluster: Option<&cluster::ClusterConfig>,
    keys: &KeysConfig,
) -> Option<cluster::ClusterConfig> {
    cluster.cloned().or_else(|| match &keys.store {
        StoreMode::Redis(s) => Some(cluster::ClusterConfig {
            key_prefix: cluster::DEFAULT_KEY_PREFIX.into(),
            ..s.client.clone()
        }),
        StoreMode::File => None,
    })
}

/// `[keys] store = "redis"`: the Redis the key records live in (`[keys] redis_url`, else
/// `[cluster] redis_url`; TLS files and timeout from `[cluster]` when it is set).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisKeyStore {
    /// The client settings (`key_prefix` unused; the store's own is `prefix`).
    pub client: cluster::ClusterConfig,
    /// `[keys] redis_prefix`: every key name starts with `{<prefix>}:`.
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDefaults {
    pub requests_per_minute: u32,
    pub burst: u32,
    pub tokens_per_minute: Option<u64>,
    pub max_in_flight: u32,
    pub failed_auth_per_minute: u32,
    /// Tokens reserved for a completion whose request names no `max_tokens`.
    pub estimated_completion_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme and authority, plus an optional base path prefixed to every request path.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub base_path: String,
    pub models: globset::GlobSet,
    pub model_patterns: Vec<String>,
    /// The credential the gateway adds upstream, read from the environment at load.
    pub api_key: Option<http::HeaderValue>,
    /// Extra trust root for an HTTPS upstream with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Client TLS settings (roots) for HTTPS upstreams.
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// Checked in the background for readiness (`health`, `health_interval`).
    pub health: Option<HealthCheck>,
}

/// An upstream's health check: `GET path` every `interval`; a 2xx within the interval is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The upstream URL's base path joined with `health`, as sent.
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    pub per_key_labels: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// Where every key change (CLI or API) is also appended as one JSON line, fsynced.
    pub audit_file: Option<PathBuf>,
    /// Access lines for `/healthz`, `/readyz` and the console's files too (off: probes every
    /// few seconds would drown the lines that matter).
    pub probes: bool,
}

/// What `keygate keys …` and `keygate usage` need from gateway.toml: the key file, the log
/// settings, and where usage is kept (`[usage]`, `[cluster]`). The rest of the file must
/// parse, but is not validated and nothing it names is read (an upstream's `api_key_env`, a
/// CA file): managing keys does not talk to upstreams.
#[derive(Debug, Clone)]
pub struct KeyCommandsConfig {
    pub keys: KeysConfig,
    pub log: LogConfig,
    pub usage: UsageConfig,
    pub cluster: Option<cluster::ClusterConfig>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4142";

/// Whether TOML text sets nothing at all: empty, or only whitespace and comments.
pub fn is_blank(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.is_empty())
}

#[cfg(test)]
mod tests;
