//! `[cluster]` to a `ClusterConfig`: the Redis URL, TLS files, timeouts and the failure
//! policy, each error naming `cluster.field`.

use super::{resolve, Validator};
use crate::config::cluster::{
    redis_client, ClusterConfig, OnBackendError, RedisTls, DEFAULT_KEY_PREFIX,
};
use crate::config::raw::RawCluster;
use crate::config::ConfigError;
use std::path::Path;
use std::time::Duration;

impl Validator<'_> {
    /// `[cluster]`: `None` unless `backend = "redis"`.
    pub(in crate::config) fn cluster(
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
                    key_prefix: c.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into()),
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
}
