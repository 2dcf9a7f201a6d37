//! `gateway.toml` as people write it: every field optional, unknown keys rejected with their
//! line (`deny_unknown_fields`). Validated into `Config` by `validate`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub log: RawLog,
    /// Absent: no notifications.
    pub notify: Option<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_headers: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub http2_max_header_list_size: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub shutdown_delay: Option<String>,
    pub drain_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub max_connections_per_ip: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub file: Option<String>,
    pub prefix: Option<String>,
    pub reload: Option<bool>,
    pub poll_interval: Option<String>,
    pub state_file: Option<String>,
    pub unready_on_load_error: Option<bool>,
    pub store: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub snapshot_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_in_flight: Option<u32>,
    pub failed_auth_per_minute: Option<u32>,
    pub estimated_completion_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Option<String>,
    pub url: String,
    pub models: Option<Vec<String>>,
    pub api_key_env: Option<String>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub health: Option<String>,
    pub health_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub method: Option<String>,
    pub path: String,
    pub scope: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub on_backend_error: Option<String>,
    pub timeout: Option<String>,
    pub key_prefix: Option<String>,
    pub lease: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
    pub per_key_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub audit_file: Option<String>,
    pub probes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook_url: Option<String>,
    pub format: Option<String>,
    pub expiry_days: Option<Vec<u64>>,
    pub timeout: Option<String>,
    pub header_env: Option<String>,
    pub ca_file: Option<String>,
}
