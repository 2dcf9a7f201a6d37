//! The names of what the gateway exports: series, label values and buckets, the `# HELP`
//! of each, and how an upstream failure is named.

use crate::keys::scope::Scope;
use metrics::{Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;

/// Listener certificate reloads, by result.
pub const TLS_RELOADS: &str = "keygate_tls_reloads_total";
/// When the listener's certificate expires.
pub const TLS_EXPIRES: &str = "keygate_tls_certificate_expires_at_seconds";
pub const META: Metadata<'static> = Metadata::new("keygate", Level::INFO, Some("keygate::metrics"));

/// Time the gateway itself adds: microseconds to a second.
pub const ADDED_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Whole requests and upstream first bytes: an LLM stream or a long prefill lasts minutes, so
/// the buckets reach 20 minutes (past `+Inf` only what outlives any sane timeout).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1200.0,
];

pub const REQUESTS: &str = "keygate_requests_total";
pub const RATE_LIMITED: &str = "keygate_rate_limited_total";
pub const DURATION: &str = "keygate_request_duration_seconds";
pub const ADDED: &str = "keygate_added_latency_seconds";
pub const UPSTREAM_LATENCY: &str = "keygate_upstream_latency_seconds";

// The request path's histograms' help (they are kept by `histogram`, not the exporter).
pub const DURATION_HELP: &str =
    "Time from the request head to the end of the answer (the last byte of a stream), by route.";
pub const ADDED_HELP: &str = "Time the gateway itself spent before the response head left (all of it when nothing was forwarded).";
pub const UPSTREAM_LATENCY_HELP: &str =
    "Time from sending upstream to the upstream's response head, by upstream.";
pub const UPSTREAM_ERRORS: &str = "keygate_upstream_errors_total";
pub const UPSTREAM_UP: &str = "keygate_upstream_up";
pub const CLUSTER_BACKEND_UP: &str = "keygate_cluster_backend_up";
pub const TOKENS: &str = "keygate_tokens_total";
pub const LOG_DROPPED: &str = "keygate_log_lines_dropped_total";
pub const NOTIFICATIONS: &str = "keygate_notifications_total";

/// The `event` label of `keygate_notifications_total`: every event `ops::notify` sends.
pub const NOTIFY_EVENTS: [&str; 4] = [
    "key.expiring",
    "key.revoked",
    "key.disabled",
    "key.quota_exhausted",
];

/// What became of one delivery attempt, or of a notification, in
/// `keygate_notifications_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx.
    Sent,
    /// An attempt failed (network, timeout, 408, 429, 5xx) and will be retried.
    Retry,
    /// The receiver refused it (another 4xx, a 3xx): not retried.
    Rejected,
    /// Still failing a day after it was queued: dropped.
    GaveUp,
    /// Another replica claimed it (cluster mode) and sent it or is sending it.
    Elsewhere,
}

impl Delivery {
    pub const ALL: [Delivery; 5] = [
        Delivery::Sent,
        Delivery::Retry,
        Delivery::Rejected,
        Delivery::GaveUp,
        Delivery::Elsewhere,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Retry => "retry",
            Delivery::Rejected => "rejected",
            Delivery::GaveUp => "gave_up",
            Delivery::Elsewhere => "elsewhere",
        }
    }
}

/// The `route` label: `-` for a request that matched no route (probes, console, refusals
/// before routing), else the route's scope.
pub const ROUTES: usize = Scope::ALL.len() + 1;
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every error code the gateway answers with (`GatewayError::code`). A code missing here is
/// still counted, through the registry (slower, same result).
pub const CODES: [&str; 23] = [
    "invalid_request",
    "missing_api_key",
    "invalid_api_key",
    "expired_api_key",
    "revoked_api_key",
    "disabled_api_key",
    "insufficient_permissions",
    "model_not_allowed",
    "unknown_route",
    "not_found",
    "model_not_found",
    "request_too_large",
    "rate_limit_exceeded",
    "overloaded",
    "concurrency_limit_exceeded",
    "too_many_failed_attempts",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_stream_broken",
    "upstream_idle_timeout",
    "not_ready",
    "read_only_key_store",
    "internal_error",
];

/// The codes of a 429, exported at zero in `keygate_rate_limited_total`.
pub const RATE_CODES: [&str; 3] = [
    "rate_limit_exceeded",
    "concurrency_limit_exceeded",
    "too_many_failed_attempts",
];

/// How an upstream failed, in `keygate_upstream_errors_total{upstream,code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, reset or unreachable before a response head (502).
    Unavailable,
    /// No response head within `first_byte_timeout` (504).
    Timeout,
    /// The upstream answered with a 5xx status of its own.
    Status5xx,
    /// The response stream broke off before its end.
    StreamBroken,
    /// The response stream paused longer than `idle_timeout`.
    IdleTimeout,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 5] = [
        UpstreamError::Unavailable,
        UpstreamError::Timeout,
        UpstreamError::Status5xx,
        UpstreamError::StreamBroken,
        UpstreamError::IdleTimeout,
    ];

    pub fn code(self) -> &'static str {
        match self {
            UpstreamError::Unavailable => "upstream_unavailable",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Status5xx => "upstream_status_5xx",
            UpstreamError::StreamBroken => "upstream_stream_broken",
            UpstreamError::IdleTimeout => "upstream_idle_timeout",
        }
    }

    /// The upstream failure a gateway error code stands for, if any.
    pub fn from_gateway_code(code: &str) -> Option<UpstreamError> {
        match code {
            "upstream_unavailable" => Some(UpstreamError::Unavailable),
            "upstream_timeout" => Some(UpstreamError::Timeout),
            _ => None,
        }
    }
}

pub fn route_name(i: usize) -> &'static str {
    match i {
        0 => "-",
        i => Scope::ALL[i - 1].name(),
    }
}

pub fn route_index(route: &str) -> usize {
    Scope::ALL
        .iter()
        .position(|s| s.name() == route)
        .map_or(0, |i| i + 1)
}

pub fn class_index(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

pub fn code_index(code: Option<&str>) -> Option<usize> {
    match code {
        None => Some(0),
        Some(c) => CODES.iter().position(|k| *k == c).map(|i| i + 1),
    }
}

pub fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

/// `# HELP` for every series the gateway exports.
pub fn describe(r: &PrometheusRecorder) {
    let counters: [(&'static str, &'static str); 15] = [
        (REQUESTS, "Requests answered, by route, status class and error code (empty for none)."),
        (RATE_LIMITED, "Requests refused with 429, by error code."),
        (UPSTREAM_ERRORS, "Upstream failures, by upstream and kind: unreachable, no answer in time, a 5xx answer, a stream that broke off or stalled."),
        (TOKENS, "Tokens used, by kind (prompt, completion): what upstreams reported, plus the gateway's estimate for streams cut short before their usage."),
        ("keygate_key_reloads_total", "Key-file reloads, by result."),
        ("keygate_config_reloads_total", "gateway.toml reloads, by result."),
        (TLS_RELOADS, "Listener certificate reloads, by result: ok when changed files were put in force; error at every attempt (each poll) while they cannot be (unreadable, mismatched, expired or not yet valid; the current certificate keeps serving)."),
        ("keygate_key_index_rebuilds_total", "Key indexes built from scratch (start, a reload that changed many keys, changed [limits])."),
        ("keygate_key_store_changes_applied_total", "Redis key store: key records from the store put in force on this replica."),
        ("keygate_key_store_resyncs_total", "Redis key store: full resyncs (first contact, a new epoch, the store went backwards, the change log trimmed)."),
        ("keygate_key_store_records_skipped_total", "Redis key store: records from the store left out, at each read, because this version cannot use them (they do not parse, or are invalid); what the replica held for those keys stays in force."),
        ("keygate_key_index_changes_applied_total", "Keys changed, added or removed by applying only them to the index in force."),
        ("keygate_key_index_compactions_total", "Overlays of changed keys folded into a new index base, off the request path."),
        (LOG_DROPPED, "Log lines dropped because the log writer could not keep up: access lines past 8 MiB waiting, warnings and errors past 16 MiB; audit lines never."),
        (NOTIFICATIONS, "Webhook notifications ([notify]), by event and result: sent, retry (an attempt failed; retried), rejected (a 4xx; not retried), gave_up (failing for a day), elsewhere (another replica sends it)."),
    ];
    for (name, help) in counters {
        r.describe_counter(name.into(), None, help.into());
    }
    let gauges: [(&'static str, Option<Unit>, &'static str); 19] = [
        ("keygate_in_flight", None, "Requests in flight now, gateway-wide."),
        ("keygate_ready", None, "1 when /readyz answers 200: keys loaded, not draining, every health-checked upstream up."),
        (UPSTREAM_UP, None, "1 when the upstream's last health check answered 2xx, 0 when it did not (only upstreams with `health`)."),
        ("keygate_keys", None, "Keys in the loaded key file, revoked and expired included."),
        ("keygate_key_file_healthy", None, "1 when the last look at the key file loaded it; 0 while it cannot be read or is invalid (the last good keys keep serving)."),
        (CLUSTER_BACKEND_UP, None, "Cluster mode: 1 while the Redis limit backend is connected and answering (its circuit breaker closed); 0 while the failure policy applies."),
        ("keygate_key_store_connected", None, "Redis key store: 1 while this replica's follower is connected to the store."),
        ("keygate_key_store_stale_seconds", Some(Unit::Seconds), "Redis key store: seconds since this replica last knew it had every change of the store (about 1 while connected; grows while Redis is down and the snapshot serves)."),
        ("keygate_key_store_diverged", None, "Redis key store: 1 while the store is marked behind a replica's snapshot (writes refused until `keygate keys push`)."),
        ("keygate_key_store_applied_version", None, "Redis key store: the store version whose changes are in force on this replica."),
        ("keygate_key_snapshot_healthy", None, "Redis key store: 0 while this replica's snapshot cannot take the changes in force (a full or read-only disk): they are in force, and the snapshot is set aside until the disk takes them."),
        ("keygate_key_index_overlay_keys", None, "Key versions applied since the index base was built, waiting to be folded into the next one."),
        ("keygate_keys_active", None, "Keys that work: neither revoked, disabled nor expired."),
        ("keygate_keys_expiring_7d", None, "Active keys that expire within 7 days."),
        ("keygate_key_expiry_seconds", Some(Unit::Seconds), "Seconds until the key expires (per_key_labels only)."),
        ("keygate_key_reload_last_success_timestamp_seconds", Some(Unit::Seconds), "Unix time of the last successful key-file load."),
        ("keygate_failed_auth_tracked_addresses", None, "Client addresses with recent failed authentications being tracked."),
        ("keygate_build_info", None, "Always 1; the labels say which build is running."),
        (TLS_EXPIRES, Some(Unit::Seconds), "Unix time at which the listener's certificate expires (only with [server.tls])."),
    ];
    for (name, unit, help) in gauges {
        r.describe_gauge(name.into(), unit, help.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_gateway_error_code_has_a_resolved_slot() {
        use crate::error::GatewayError as E;
        let errors = [
            E::InvalidRequest(String::new()),
            E::MissingKey,
            E::InvalidKey("x"),
            E::RevokedKey,
            E::DisabledKey,
            E::ExpiredKey(String::new()),
            E::MissingScope(Scope::Chat),
            E::ModelNotAllowed(String::new()),
            E::UnknownRoute(http::Method::GET, String::new()),
            E::TooLarge(1),
            E::RateLimited {
                limit: 1,
                retry_after: Duration::ZERO,
            },
            E::LimiterUnavailable,
            E::ConcurrencyLimited(1),
            E::TooManyFailedAttempts {
                retry_after: Duration::ZERO,
            },
            E::UpstreamUnavailable(String::new()),
            E::UpstreamTimeout(String::new()),
            E::NotReady,
            E::Unready(crate::error::NotReady::Draining),
            E::Overloaded,
            E::NotFound(String::new()),
            E::ModelNotFound(String::new()),
            E::ReadOnlyKeyStore,
            E::Internal(String::new()),
        ];
        for e in errors {
            assert!(code_index(Some(e.code())).is_some(), "{}", e.code());
        }
    }

    #[test]
    fn route_labels_round_trip() {
        for r in 0..ROUTES {
            assert_eq!(route_index(route_name(r)), r);
        }
        assert_eq!(route_index("no such route"), 0);
    }
}
