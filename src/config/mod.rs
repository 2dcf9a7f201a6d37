//! `gateway.toml`: raw serde structs (every field optional, unknown keys rejected with their
//! line) and the validated `Config` the rest of the program uses.
//!
//! Keeping the two apart means a value is checked once, at load, and a reload that fails
//! validation never replaces the running configuration.

use crate::authorize::{RouteRule, RouteTable};
use crate::keys::scope::Scopes;
use http::Uri;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

// ---------------------------------------------------------------- raw, as written by people

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls: Option<RawTls>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    max_body_bytes: Option<u64>,
    max_headers: Option<usize>,
    max_header_bytes: Option<usize>,
    http2_max_concurrent_streams: Option<u32>,
    http2_max_header_list_size: Option<u32>,
    max_in_flight: Option<usize>,
    shutdown_delay: Option<String>,
    drain_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    max_connections_per_ip: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    file: Option<String>,
    prefix: Option<String>,
    reload: Option<bool>,
    poll_interval: Option<String>,
    state_file: Option<String>,
    unready_on_load_error: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    requests_per_minute: Option<u32>,
    burst: Option<u32>,
    tokens_per_minute: Option<u64>,
    max_in_flight: Option<u32>,
    failed_auth_per_minute: Option<u32>,
    estimated_completion_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Option<String>,
    url: String,
    models: Option<Vec<String>>,
    api_key_env: Option<String>,
    ca_file: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    health: Option<String>,
    health_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: Option<String>,
    path: String,
    scope: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    backend: Option<String>,
    redis_url: Option<String>,
    on_backend_error: Option<String>,
    timeout: Option<String>,
    key_prefix: Option<String>,
    lease: Option<String>,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    per_key_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    audit_file: Option<String>,
    probes: Option<bool>,
}

// ---------------------------------------------------------------- validated

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
    pub cluster: Option<crate::limit::redis::ClusterConfig>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
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

/// What `keygate keys …` needs from gateway.toml: the key file and the log settings. The
/// rest of the file must parse, but is not validated and nothing it names is read (an
/// upstream's `api_key_env`, a CA file): managing keys does not talk to upstreams.
#[derive(Debug, Clone)]
pub struct KeyCommandsConfig {
    pub keys: KeysConfig,
    pub log: LogConfig,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4142";

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// Reads a file for a live reload: like `load`, but an empty file is refused.
    pub fn reload(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if is_blank(&text) {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
            });
        }
        Config::parse(&text, Some(path))
    }

    /// Validates TOML text. Relative paths are resolved against `source`'s directory.
    pub fn parse(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        let (raw, path, base) = parse_raw(text, source)?;
        Validator { path: &path }.config(raw, &base, source)
    }
}

impl KeyCommandsConfig {
    /// Reads a file; see [`KeyCommandsConfig`] for what is checked.
    pub fn load(path: &Path) -> Result<KeyCommandsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        KeyCommandsConfig::parse(&text, Some(path))
    }

    pub fn parse(text: &str, source: Option<&Path>) -> Result<KeyCommandsConfig, ConfigError> {
        let (raw, path, base) = parse_raw(text, source)?;
        let v = Validator { path: &path };
        Ok(KeyCommandsConfig {
            keys: v.keys(raw.keys, &base)?,
            log: v.log(raw.log, &base)?,
        })
    }
}

/// Whether TOML text sets nothing at all: empty, or only whitespace and comments.
pub fn is_blank(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.is_empty())
}

/// TOML text as the raw structs (syntax and unknown keys checked), with the name to use in
/// messages and the directory relative paths start from.
fn parse_raw(
    text: &str,
    source: Option<&Path>,
) -> Result<(RawConfig, PathBuf, PathBuf), ConfigError> {
    let path = source.map_or_else(|| PathBuf::from("gateway.toml"), Path::to_path_buf);
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: one_line(&e.to_string()),
    })?;
    let base = source
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok((raw, path, base))
}

/// A path from the file, relative to the file's directory unless absolute.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// toml's messages span several lines (a source excerpt); logs want one.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|" && !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        field: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => crate::time::parse_duration(&s).map_err(|e| self.err(field, e)),
        }
    }

    /// A duration that must be more than zero (a zero timeout would end every connection).
    fn nonzero_duration(
        &self,
        field: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(field, v, default)?;
        if d.is_zero() {
            return Err(self.err(field, "must be more than 0"));
        }
        Ok(d)
    }

    fn addr(&self, field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(
                field,
                format!("`{s}` is not an address like 127.0.0.1:4142"),
            )
        })
    }

    fn positive<T: PartialOrd + Default + Copy>(
        &self,
        field: &str,
        v: Option<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        let v = v.unwrap_or(default);
        if v <= T::default() {
            return Err(self.err(field, "must be at least 1"));
        }
        Ok(v)
    }

    fn config(
        &self,
        raw: RawConfig,
        base: &Path,
        source: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let resolve = |p: &str| resolve(base, p);
        let s = raw.server;
        let server = ServerConfig {
            listen: self.addr(
                "server.listen",
                s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
            )?,
            tls: s.tls.map(|t| TlsConfig {
                cert: resolve(&t.cert),
                key: resolve(&t.key),
            }),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                s.header_read_timeout,
                Duration::from_secs(10),
            )?,
            body_read_timeout: self.duration(
                "server.body_read_timeout",
                s.body_read_timeout,
                Duration::from_secs(30),
            )?,
            max_body_bytes: self.positive(
                "server.max_body_bytes",
                s.max_body_bytes,
                16 * 1024 * 1024,
            )?,
            max_headers: self.positive("server.max_headers", s.max_headers, 100)?,
            max_header_bytes: self.positive(
                "server.max_header_bytes",
                s.max_header_bytes,
                16 * 1024,
            )?,
            http2_max_concurrent_streams: self.positive(
                "server.http2_max_concurrent_streams",
                s.http2_max_concurrent_streams,
                256,
            )?,
            http2_max_header_list_size: self.positive(
                "server.http2_max_header_list_size",
                s.http2_max_header_list_size,
                16 * 1024,
            )?,
            max_in_flight: self.positive("server.max_in_flight", s.max_in_flight, 4096)?,
            shutdown_delay: self.duration(
                "server.shutdown_delay",
                s.shutdown_delay,
                Duration::from_secs(0),
            )?,
            drain_timeout: self.duration(
                "server.drain_timeout",
                s.drain_timeout,
                Duration::from_secs(30),
            )?,
            idle_timeout: self.nonzero_duration(
                "server.idle_timeout",
                s.idle_timeout,
                Duration::from_secs(75),
            )?,
            write_timeout: self.nonzero_duration(
                "server.write_timeout",
                s.write_timeout,
                Duration::from_secs(60),
            )?,
            max_connections_per_ip: match s.max_connections_per_ip {
                None => None,
                Some(0) => {
                    return Err(self.err(
                        "server.max_connections_per_ip",
                        "must be at least 1 (leave it out for no limit)",
                    ))
                }
                Some(n) => Some(n),
            },
            trusted_proxies: TrustedProxies::parse(&s.trusted_proxies.unwrap_or_default())
                .map_err(|e| self.err("server.trusted_proxies", e))?,
        };
        if server.max_header_bytes < 8192 {
            return Err(self.err("server.max_header_bytes", "must be at least 8192"));
        }

        let keys = self.keys(raw.keys, base)?;

        let l = raw.limits;
        let limits = LimitDefaults {
            requests_per_minute: self.positive(
                "limits.requests_per_minute",
                l.requests_per_minute,
                600,
            )?,
            burst: 0,
            tokens_per_minute: l.tokens_per_minute.filter(|t| *t > 0),
            max_in_flight: self.positive("limits.max_in_flight", l.max_in_flight, 64)?,
            failed_auth_per_minute: self.positive(
                "limits.failed_auth_per_minute",
                l.failed_auth_per_minute,
                30,
            )?,
            estimated_completion_tokens: self.positive(
                "limits.estimated_completion_tokens",
                l.estimated_completion_tokens,
                256,
            )?,
        };
        let limits = LimitDefaults {
            burst: self.positive("limits.burst", l.burst, limits.requests_per_minute)?,
            ..limits
        };

        let raw_upstreams = if raw.upstream.is_empty() {
            vec![RawUpstream {
                name: None,
                url: "http://127.0.0.1:8000".into(),
                models: None,
                api_key_env: None,
                ca_file: None,
                connect_timeout: None,
                first_byte_timeout: None,
                idle_timeout: None,
                health: None,
                health_interval: None,
            }]
        } else {
            raw.upstream
        };
        let mut upstreams = Vec::with_capacity(raw_upstreams.len());
        for (i, u) in raw_upstreams.into_iter().enumerate() {
            upstreams.push(self.upstream(i, u, base)?);
        }

        let mut rules = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let field = format!("route[{}]", i + 1);
            let scope = Scopes::parse_one(&r.scope).map_err(|e| self.err(&field, e.to_string()))?;
            let method = match r.method {
                Some(m) if m != "*" => Some(
                    http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| self.err(&field, format!("`{m}` is not an HTTP method")))?,
                ),
                _ => None,
            };
            let rule = RouteRule::new(method, &r.path, scope).map_err(|e| self.err(&field, e))?;
            rules.push(rule);
        }
        let routes = RouteTable::with_extra(rules);

        let c = raw.cluster;
        let cluster = match c.backend.as_deref() {
            None | Some("local") => None,
            Some("redis") => {
                let url = c.redis_url.ok_or_else(|| {
                    self.err("cluster.redis_url", "is required with backend = \"redis\"")
                })?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(
                        self.err("cluster.redis_url", "must start with redis:// or rediss://")
                    );
                }
                if c.client_cert_file.is_some() != c.client_key_file.is_some() {
                    let field = if c.client_cert_file.is_some() {
                        "cluster.client_key_file"
                    } else {
                        "cluster.client_cert_file"
                    };
                    return Err(self.err(field, "client_cert_file and client_key_file go together"));
                }
                let lease = self.duration("cluster.lease", c.lease, Duration::from_secs(30))?;
                if lease < Duration::from_secs(1) {
                    return Err(self.err("cluster.lease", "must be at least 1s"));
                }
                let cluster = crate::limit::redis::ClusterConfig {
                    redis_url: url,
                    on_backend_error: match c.on_backend_error.as_deref() {
                        None | Some("local") => crate::limit::redis::OnError::Local,
                        Some("allow") => crate::limit::redis::OnError::Allow,
                        Some("deny") => crate::limit::redis::OnError::Deny,
                        Some(o) => {
                            return Err(self.err(
                                "cluster.on_backend_error",
                                format!("`{o}` is not \"allow\", \"deny\" or \"local\""),
                            ))
                        }
                    },
                    timeout: self.duration(
                        "cluster.timeout",
                        c.timeout,
                        Duration::from_millis(50),
                    )?,
                    key_prefix: c.key_prefix.unwrap_or_else(|| "keygate".into()),
                    lease,
                    tls: crate::limit::redis::RedisTls {
                        ca_file: c.ca_file.as_deref().map(resolve),
                        client_cert_file: c.client_cert_file.as_deref().map(resolve),
                        client_key_file: c.client_key_file.as_deref().map(resolve),
                    },
                };
                // Built once here so that `check` and `serve` refuse what cannot work.
                crate::limit::redis::client(&cluster)
                    .map_err(|e| self.err(e.field(), e.to_string()))?;
                Some(cluster)
            }
            Some(b) => {
                return Err(self.err(
                    "cluster.backend",
                    format!("`{b}` is not \"local\" or \"redis\""),
                ))
            }
        };

        let metrics = MetricsConfig {
            listen: raw
                .metrics
                .listen
                .as_deref()
                .map(|s| self.addr("metrics.listen", s))
                .transpose()?,
            per_key_labels: raw.metrics.per_key_labels.unwrap_or(false),
        };
        let log = self.log(raw.log, base)?;

        Ok(Config {
            source: source.map(Path::to_path_buf),
            server,
            keys,
            limits,
            upstreams,
            routes,
            cluster,
            metrics,
            log,
        })
    }

    /// `[keys]`.
    fn keys(&self, k: RawKeys, base: &Path) -> Result<KeysConfig, ConfigError> {
        let resolve = |p: &str| resolve(base, p);
        let prefix = k.prefix.unwrap_or_else(|| "sk_kg".to_string());
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || prefix.ends_with('_')
        {
            return Err(self.err(
                "keys.prefix",
                "must be 1–32 letters, digits or `_`, not ending in `_`",
            ));
        }
        let file = resolve(k.file.as_deref().unwrap_or("keys.json"));
        let state_file = match k.state_file {
            Some(p) => resolve(&p),
            None => {
                let mut name = file
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                name.push(".state");
                file.with_file_name(name)
            }
        };
        let keys = KeysConfig {
            file,
            prefix,
            reload: k.reload.unwrap_or(true),
            poll_interval: self.duration(
                "keys.poll_interval",
                k.poll_interval,
                Duration::from_secs(2),
            )?,
            state_file,
            unready_on_load_error: k.unready_on_load_error.unwrap_or(false),
        };
        Ok(keys)
    }

    /// `[log]`.
    fn log(&self, l: RawLog, base: &Path) -> Result<LogConfig, ConfigError> {
        let log = LogConfig {
            format: match l.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(self.err("log.format", format!("`{other}` is not `text` or `json`")))
                }
            },
            level: l.level.unwrap_or_else(|| "info".into()),
            audit_file: l.audit_file.map(|p| resolve(base, &p)),
            probes: l.probes.unwrap_or(false),
        };
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            return Err(self.err(
                "log.level",
                format!("`{}` is not a log level or filter", log.level),
            ));
        }
        Ok(log)
    }

    fn upstream(
        &self,
        i: usize,
        u: RawUpstream,
        base: &Path,
    ) -> Result<UpstreamConfig, ConfigError> {
        let field = |f: &str| format!("upstream[{}].{f}", i + 1);
        let uri: Uri = u
            .url
            .parse()
            .map_err(|_| self.err(&field("url"), format!("`{}` is not a URL", u.url)))?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS)
            .ok_or_else(|| self.err(&field("url"), "must start with http:// or https://"))?;
        let ca_file = u.ca_file.map(|p| resolve(base, &p));
        let tls = crate::server::tls::client_config(ca_file.as_deref())
            .map_err(|e| self.err(&field("ca_file"), e.to_string()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| self.err(&field("url"), "has no host"))?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let patterns = u.models.unwrap_or_else(|| vec!["*".into()]);
        let mut set = globset::GlobSetBuilder::new();
        for p in &patterns {
            set.add(crate::authorize::compile_glob(p).map_err(|e| self.err(&field("models"), e))?);
        }
        let models = set
            .build()
            .map_err(|e| self.err(&field("models"), e.to_string()))?;
        let api_key = match u.api_key_env {
            None => None,
            Some(var) => {
                let v = std::env::var(&var).map_err(|_| {
                    self.err(
                        &field("api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    )
                })?;
                let mut hv =
                    http::HeaderValue::try_from(format!("Bearer {}", v.trim())).map_err(|_| {
                        self.err(
                            &field("api_key_env"),
                            format!("`{var}` holds characters not allowed in a header"),
                        )
                    })?;
                hv.set_sensitive(true);
                Some(hv)
            }
        };
        let health_interval = self.duration(
            &field("health_interval"),
            u.health_interval,
            Duration::from_secs(5),
        )?;
        if health_interval < Duration::from_millis(100) {
            return Err(self.err(&field("health_interval"), "must be at least 100ms"));
        }
        let health = match u.health {
            None => None,
            Some(p) => {
                if !p.starts_with('/') {
                    return Err(self.err(
                        &field("health"),
                        format!("`{p}` is not a path starting with `/` (for example \"/health\")"),
                    ));
                }
                let path = format!("{base_path}{p}").parse().map_err(|_| {
                    self.err(&field("health"), format!("`{p}` is not a valid URL path"))
                })?;
                Some(HealthCheck {
                    path,
                    interval: health_interval,
                })
            }
        };
        Ok(UpstreamConfig {
            health,
            name: u.name.unwrap_or_else(|| format!("upstream{}", i + 1)),
            scheme,
            authority,
            base_path,
            models,
            model_patterns: patterns,
            api_key,
            ca_file,
            tls: Arc::new(tls),
            connect_timeout: self.duration(
                &field("connect_timeout"),
                u.connect_timeout,
                Duration::from_secs(2),
            )?,
            first_byte_timeout: self.duration(
                &field("first_byte_timeout"),
                u.first_byte_timeout,
                Duration::from_secs(120),
            )?,
            idle_timeout: self.duration(
                &field("idle_timeout"),
                u.idle_timeout,
                Duration::from_secs(60),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.keys.prefix, "sk_kg");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.limits.burst, c.limits.requests_per_minute);
    }

    #[test]
    fn unknown_key_names_line() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn upstream_health_check_is_parsed_under_the_base_path() {
        let c = Config::parse(
            "[[upstream]]\nurl = \"http://h:1/vllm\"\nhealth = \"/health\"\nhealth_interval = \"2s\"\n",
            None,
        )
        .unwrap();
        let h = c.upstreams[0].health.as_ref().unwrap();
        assert_eq!(h.path.as_str(), "/vllm/health");
        assert_eq!(h.interval, Duration::from_secs(2));
        assert!(Config::parse("", None).unwrap().upstreams[0]
            .health
            .is_none());
        assert!(!Config::parse("", None).unwrap().log.probes);
        let err = Config::parse(
            "[[upstream]]\nurl = \"http://h:1\"\nhealth = \"health\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstream[1].health"), "{err}");
        let err = Config::parse(
            "[[upstream]]\nurl = \"http://h:1\"\nhealth = \"/h\"\nhealth_interval = \"1ms\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstream[1].health_interval"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = Config::parse("[[upstream]]\nurl = \"ftp://x\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream[1].url"), "{err}");
        let err = Config::parse("[limits]\nrequests_per_minute = 0\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.requests_per_minute"), "{err}");
        let err = Config::parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.trusted_proxies") && err.contains("`nope`"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies() {
        assert!(Config::parse("", None)
            .unwrap()
            .server
            .trusted_proxies
            .is_empty());
        let c = Config::parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\"]\n",
            None,
        )
        .unwrap();
        let t = &c.server.trusted_proxies;
        for ip in ["10.9.8.7", "192.168.1.7", "fd00::1", "::ffff:10.1.1.1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "fe80::1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn cluster_backend_is_built_at_load() {
        let cluster = |url: &str, extra: &str| {
            Config::parse(
                &format!("[cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\n{extra}"),
                None,
            )
        };
        let c = cluster("rediss://127.0.0.1:6380/", "")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.lease, Duration::from_secs(30));
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not PEM").unwrap();
        let ca = format!("ca_file = \"{}\"\n", garbage.display());
        for (url, extra, field) in [
            ("redis://127.0.0.1:port/", "", "cluster.redis_url"),
            ("rediss://127.0.0.1:6380/#insecure", "", "cluster.redis_url"),
            ("rediss://127.0.0.1:6380/", ca.as_str(), "cluster.ca_file"),
            ("redis://127.0.0.1:6380/", ca.as_str(), "cluster.redis_url"),
            (
                "rediss://h/",
                "client_cert_file = \"c.pem\"\n",
                "cluster.client_key_file",
            ),
            ("redis://h/", "lease = \"500ms\"\n", "cluster.lease"),
        ] {
            let err = cluster(url, extra).unwrap_err().to_string();
            assert!(err.contains(field), "{url} {extra}: {err}");
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_name_the_field() {
        let c = Config::parse("", None).unwrap().server;
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.write_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections_per_ip, None);
        let c = Config::parse(
            "[server]\nidle_timeout = \"5s\"\nwrite_timeout = \"2s\"\nmax_connections_per_ip = 3\n",
            None,
        )
        .unwrap()
        .server;
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.write_timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections_per_ip, Some(3));
        for (text, field) in [
            ("idle_timeout = \"0s\"", "server.idle_timeout"),
            ("write_timeout = \"0s\"", "server.write_timeout"),
            ("write_timeout = \"soon\"", "server.write_timeout"),
            (
                "max_connections_per_ip = 0",
                "server.max_connections_per_ip",
            ),
        ] {
            let err = Config::parse(&format!("[server]\n{text}\n"), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
