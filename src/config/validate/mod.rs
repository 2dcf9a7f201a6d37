//! Raw structs to validated values, one field at a time: every error names the field
//! (`server.listen`, `upstream[2].url`) and says what it must be. It is one cohesive thing, longer
//! than most files: a check per option of `gateway.toml`, with its default beside it
//! (`[[upstream]]` tables are checked in `upstream.rs`, `[cluster]` in `cluster.rs`).

use super::cluster::ClusterConfig;
use super::raw::{RawConfig, RawKeys, RawLog, RawUpstream, RawUsage};
use super::{
    Config, ConfigError, KeysConfig, LimitDefaults, LogConfig, LogFormat, MetricsConfig,
    ServerConfig, TlsConfig, TrustedProxies, UsageConfig, DEFAULT_LISTEN,
};
use crate::authorize::routes::{RouteRule, RouteTable};
use crate::keys::scope::Scopes;
use crate::keys::store::beside;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cluster;
mod upstream;

/// A path from the file, relative to the file's directory unless absolute.
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
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
            None => beside(&file, ".state"),
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
        if let Some(word) = not_a_level(&log.level) {
            return Err(self.err(
                "log.level",
                format!(
                    "`{word}` is not a log level (trace, debug, info, warn, error or off); a filter names a target with its level (`keygate=debug`)"
                ),
            ));
        }
        Ok(log)
    }
}

/// The first directive of a log filter that is a bare word but no level. The filter syntax
/// reads a bare word as a target to log at every level, with no level for anything else, so
/// `warning` (a typo of `warn`) would switch every other line off, errors included. Empty
/// does the same.
fn not_a_level(spec: &str) -> Option<&str> {
    if spec.trim().is_empty() {
        return Some(spec);
    }
    spec.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains('=')
            && !d.contains('[')
            && d.parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
    })
}
