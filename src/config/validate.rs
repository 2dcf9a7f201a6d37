//! Raw structs to validated values, one field at a time: every error names the field
//! (`server.listen`, `upstream[2].url`) and says what it must be. It is one cohesive thing, longer
//! than most files: a check per option of `gateway.toml`, with its default beside it.

use super::cluster::{redis_client, ClusterConfig, OnBackendError, RedisTls};
use super::raw::{RawCluster, RawConfig, RawKeys, RawLog, RawUpstream, RawUsage};
use super::{
    Config, ConfigError, HealthCheck, KeysConfig, LimitDefaults, LogConfig, LogFormat,
    MetricsConfig, ServerConfig, TlsConfig, TrustedProxies, UpstreamConfig, UsageConfig,
    DEFAULT_LISTEN,
};
use crate::authorize::routes::{RouteRule, RouteTable};
use crate::keys::models::compile_glob;
use crate::keys::scope::Scopes;
use http::Uri;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A path from the file, relative to the file's directory unless absolute.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
}

impl Validator<'_> {
    pub(super) fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn duration(
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

    pub(super) fn config(
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

        let cluster = self.cluster(raw.cluster, base)?;
        let keys = self.keys(raw.keys, base, cluster.as_ref())?;

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

        let usage = self.usage(raw.usage)?;

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
        let notify = raw
            .notify
            .map(|n| super::notify::validate(n, base))
            .transpose()
            .map_err(|e| self.err(e.field, e.message))?;

        Ok(Config {
            source: source.map(Path::to_path_buf),
            server,
            keys,
            limits,
            upstreams,
            routes,
            cluster,
            usage,
            metrics,
            log,
            notify,
        })
    }

    /// `[cluster]`: `None` unless `backend = "redis"`.
    pub(super) fn cluster(
        &self,
        c: RawCluster,
        base: &Path,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let resolve = |p: &str| resolve(base, p);
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
                let cluster = ClusterConfig {
                    redis_url: url,
                    on_backend_error: match c.on_backend_error.as_deref() {
                        None | Some("local") => OnBackendError::Local,
                        Some("allow") => OnBackendError::Allow,
                        Some("deny") => OnBackendError::Deny,
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
                    tls: RedisTls {
                        ca_file: c.ca_file.as_deref().map(resolve),
                        client_cert_file: c.client_cert_file.as_deref().map(resolve),
                        client_key_file: c.client_key_file.as_deref().map(resolve),
                    },
                };
                // Built once here so that `check` and `serve` refuse what cannot work.
                redis_client(&cluster).map_err(|e| self.err(e.field(), e.to_string()))?;
                Some(cluster)
            }
            Some(b) => {
                return Err(self.err(
                    "cluster.backend",
                    format!("`{b}` is not \"local\" or \"redis\""),
                ))
            }
        };
        Ok(cluster)
    }

    /// `[usage]`.
    pub(super) fn usage(&self, u: RawUsage) -> Result<UsageConfig, ConfigError> {
        let retention = self.duration(
            "usage.retention",
            u.retention,
            Duration::from_secs(90 * 86_400),
        )?;
        if retention < Duration::from_secs(3_600) {
            return Err(self.err("usage.retention", "must be at least 1h"));
        }
        if retention > Duration::from_secs(10 * 366 * 86_400) {
            return Err(self.err("usage.retention", "must be at most 10 years"));
        }
        Ok(UsageConfig { retention })
    }

    /// `[keys]`.
    pub(super) fn keys(
        &self,
        k: RawKeys,
        base: &Path,
        cluster: Option<&ClusterConfig>,
    ) -> Result<KeysConfig, ConfigError> {
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
                Duration::from_secs(1),
            )?,
            state_file,
            unready_on_load_error: k.unready_on_load_error.unwrap_or(false),
            store: self.store_mode(&k.store, k.redis_url, k.redis_prefix, cluster)?,
            snapshot_interval: self.duration(
                "keys.snapshot_interval",
                k.snapshot_interval,
                Duration::from_secs(10),
            )?,
        };
        Ok(keys)
    }

    /// `[log]`.
    pub(super) fn log(&self, l: RawLog, base: &Path) -> Result<LogConfig, ConfigError> {
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
            set.add(compile_glob(p).map_err(|e| self.err(&field("models"), e))?);
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
