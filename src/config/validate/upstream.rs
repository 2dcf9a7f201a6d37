//! One `[[upstream]]` table to an `UpstreamConfig`: its URL, credentials, models, timeouts and
//! health check, each error naming `upstream[N].field`.

use super::{resolve, Validator};
use crate::config::raw::RawUpstream;
use crate::config::{ConfigError, HealthCheck, UpstreamConfig};
use crate::keys::models::compile_glob;
use http::Uri;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn upstream(
        &self,
        i: usize,
        u: RawUpstream,
        base: &Path,
    ) -> Result<UpstreamConfig, ConfigError> {
        let field = |f: &str| format!("upstream[{}].{f}", i + 1);
        // No message repeats the URL: it may hold a password (refused below).
        if u.url.contains('#') {
            return Err(self.err(&field("url"), "must not have a fragment (`#…`)"));
        }
        let uri: Uri = u.url.trim().parse().map_err(|_| {
            self.err(
                &field("url"),
                "is not a URL (for example \"http://127.0.0.1:8000\")",
            )
        })?;
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
        // Dropped silently they would surprise (and a password would go out as the `Host`).
        if authority.as_str().contains('@') {
            return Err(self.err(
                &field("url"),
                "must not hold credentials (user:password@): give the upstream's key with api_key_env",
            ));
        }
        let a = authority.as_str();
        let after_host = a.rsplit_once(']').map_or(a, |(_, rest)| rest);
        if after_host.contains(':') && authority.port_u16().is_none() {
            return Err(self.err(&field("url"), "has a port that is not a number"));
        }
        if uri.query().is_some() {
            return Err(self.err(
                &field("url"),
                "must not have a query (`?…`): each request's own goes upstream",
            ));
        }
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
