//! `[keys] store`: the key file, or a Redis shared by every replica (`keys::shared`), with
//! the client settings it takes from `[keys] redis_url` or `[cluster]`.

use super::cluster::{redis_client, ClusterConfig, OnBackendError, RedisTls};
use super::validate::Validator;
use super::{ConfigError, RedisKeyStore, StoreMode};
use std::time::Duration;

impl Validator<'_> {
    /// `[keys] store`, `redis_url`, `redis_prefix`.
    pub(super) fn store_mode(
        &self,
        store: &Option<String>,
        url: Option<String>,
        prefix: Option<String>,
        cluster: Option<&ClusterConfig>,
    ) -> Result<StoreMode, ConfigError> {
        match store.as_deref() {
            None | Some("file") => {
                for (field, set) in [
                    ("keys.redis_url", url.is_some()),
                    ("keys.redis_prefix", prefix.is_some()),
                ] {
                    if set {
                        return Err(self.err(field, "needs `store = \"redis\"`"));
                    }
                }
                Ok(StoreMode::File)
            }
            Some("redis") => {
                let mut client = match (url, cluster) {
                    (Some(url), c) => {
                        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                            return Err(
                                self.err("keys.redis_url", "must start with redis:// or rediss://")
                            );
                        }
                        let mut client = c.cloned().unwrap_or_else(|| ClusterConfig {
                            redis_url: String::new(),
                            on_backend_error: OnBackendError::Local,
                            timeout: Duration::from_secs(2),
                            key_prefix: String::new(),
                            lease: Duration::from_secs(30),
                            tls: RedisTls::default(),
                        });
                        client.redis_url = url;
                        client
                    }
                    (None, Some(c)) => c.clone(),
                    (None, None) => {
                        return Err(self.err(
                            "keys.redis_url",
                            "is required with store = \"redis\" unless [cluster] sets a redis_url",
                        ))
                    }
                };
                // Writes carry a record and wait for Redis: a limit check's 50 ms is too short.
                client.timeout = client.timeout.max(Duration::from_secs(2));
                redis_client(&client).map_err(|e| {
                    let field = match e.field() {
                        "cluster.redis_url" if client.redis_url.starts_with("redis") => {
                            "keys.redis_url"
                        }
                        f => f,
                    };
                    self.err(field, e.to_string())
                })?;
                let prefix = prefix.unwrap_or_else(|| "keygate:keys".into());
                if prefix.is_empty()
                    || prefix.len() > 64
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
                {
                    return Err(self.err(
                        "keys.redis_prefix",
                        "must be 1–64 letters, digits, `_`, `:`, `.` or `-`",
                    ));
                }
                Ok(StoreMode::Redis(RedisKeyStore { client, prefix }))
            }
            Some(other) => Err(self.err(
                "keys.store",
                format!("`{other}` is not \"file\" or \"redis\""),
            )),
        }
    }
}
