//! Prometheus metrics on their own listener (`[metrics] listen`), so scrapes never compete
//! with traffic and the endpoint is never exposed with the API by accident.
//!
//! The recorder belongs to the [`Gateway`] (no process-wide recorder), and every series the
//! request path touches is a handle resolved once — at start for the label sets known then
//! (routes × status classes, upstreams × error codes), on first use for an error code — so a
//! request costs an atomic add per counter and a lock-free push per histogram, never a
//! registry lookup with label hashing. Registering them at start also exports them at zero
//! before the first event, so `rate()` and alerts see a series from the first scrape. Gauges
//! that describe state (index size, reload status, expiry, process) are set when scraped.

use crate::account::Finish;
use crate::gateway::Gateway;
use crate::keys::scope::Scope;
use crate::time::Timestamp;
use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

const META: Metadata<'static> = Metadata::new("keygate", Level::INFO, Some("keygate::metrics"));

/// Time the gateway itself adds: microseconds to a second.
const ADDED_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Whole requests and upstream first bytes: an LLM stream or a long prefill lasts minutes, so
/// the buckets reach 20 minutes (past `+Inf` only what outlives any sane timeout).
const DURATION_BUCKETS: [f64; 19] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1200.0,
];

const REQUESTS: &str = "keygate_requests_total";
const RATE_LIMITED: &str = "keygate_rate_limited_total";
const DURATION: &str = "keygate_request_duration_seconds";
const ADDED: &str = "keygate_added_latency_seconds";
const UPSTREAM_LATENCY: &str = "keygate_upstream_latency_seconds";
const UPSTREAM_ERRORS: &str = "keygate_upstream_errors_total";
const UPSTREAM_UP: &str = "keygate_upstream_up";
const TOKENS: &str = "keygate_tokens_total";
const LOG_DROPPED: &str = "keygate_log_lines_dropped_total";

/// The `route` label: `-` for a request that matched no route (probes, console, refusals
/// before routing), else the route's scope.
const ROUTES: usize = Scope::ALL.len() + 1;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every error code the gateway answers with (`GatewayError::code`). A code missing here is
/// still counted, through the registry (slower, same result).
const CODES: [&str; 20] = [
    "invalid_request",
    "missing_api_key",
    "invalid_api_key",
    "expired_api_key",
    "revoked_api_key",
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
    "not_ready",
    "read_only_key_store",
    "internal_error",
];

/// The codes of a 429, exported at zero in `keygate_rate_limited_total`.
const RATE_CODES: [&str; 3] = [
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
    const ALL: [UpstreamError; 5] = [
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
    fn from_gateway_code(code: &str) -> Option<UpstreamError> {
        match code {
            "upstream_unavailable" => Some(UpstreamError::Unavailable),
            "upstream_timeout" => Some(UpstreamError::Timeout),
            _ => None,
        }
    }
}

/// One upstream's series, resolved when the upstream is built (start and config reloads).
#[derive(Debug)]
pub struct UpstreamSeries {
    latency: Histogram,
    errors: [Counter; UpstreamError::ALL.len()],
    /// Only for an upstream with a health check: 0 would otherwise read as "down".
    up: Option<Gauge>,
}

impl UpstreamSeries {
    pub fn error(&self, e: UpstreamError) {
        self.errors[e as usize].increment(1);
    }

    pub fn set_up(&self, up: bool) {
        if let Some(g) = &self.up {
            g.set(if up { 1.0 } else { 0.0 });
        }
    }
}

/// The series that describe state, set just before a scrape.
struct StateGauges {
    in_flight: Gauge,
    ready: Gauge,
    key_reloads_ok: Counter,
    key_reloads_error: Counter,
    config_reloads_ok: Counter,
    config_reloads_error: Counter,
    last_key_reload: Gauge,
    failed_auth_tracked: Gauge,
    keys: Gauge,
    keys_active: Gauge,
    keys_expiring: Gauge,
    log_dropped: Counter,
    key_file_healthy: Gauge,
}

/// The gateway's metrics: the recorder and the handles the request path uses.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    per_key_labels: AtomicBool,
    /// `keygate_requests_total` by (route, status class, code or none), filled on first use.
    requests: Box<[OnceLock<Counter>]>,
    durations: Vec<Histogram>,
    added: Histogram,
    rate_limited: [Counter; RATE_CODES.len()],
    prompt_tokens: Counter,
    completion_tokens: Counter,
    state: StateGauges,
    process: metrics_process::Collector,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn route_name(i: usize) -> &'static str {
    match i {
        0 => "-",
        i => Scope::ALL[i - 1].name(),
    }
}

fn route_index(route: &str) -> usize {
    Scope::ALL
        .iter()
        .position(|s| s.name() == route)
        .map_or(0, |i| i + 1)
}

fn class_index(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn code_index(code: Option<&str>) -> Option<usize> {
    match code {
        None => Some(0),
        Some(c) => CODES.iter().position(|k| *k == c).map(|i| i + 1),
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

impl Metrics {
    pub fn new(per_key_labels: bool) -> Metrics {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(ADDED.into()), &ADDED_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(DURATION.into()), &DURATION_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(UPSTREAM_LATENCY.into()), &DURATION_BUCKETS)
            });
        // The bucket lists are constants and never empty, so this cannot fail; a plain
        // builder (summaries instead of histograms) is still a working recorder.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());

        let counter = |name: &'static str, pairs: &[(&'static str, &str)]| {
            recorder.register_counter(&Key::from_parts(name, labels(pairs)), &META)
        };
        let gauge = |name: &'static str, pairs: &[(&'static str, &str)]| {
            recorder.register_gauge(&Key::from_parts(name, labels(pairs)), &META)
        };
        let histogram = |name: &'static str, pairs: &[(&'static str, &str)]| {
            recorder.register_histogram(&Key::from_parts(name, labels(pairs)), &META)
        };

        let requests: Box<[OnceLock<Counter>]> = (0..ROUTES * CLASSES.len() * (CODES.len() + 1))
            .map(|_| OnceLock::new())
            .collect();
        let durations = (0..ROUTES)
            .map(|r| histogram(DURATION, &[("route", route_name(r))]))
            .collect();
        let state = StateGauges {
            in_flight: gauge("keygate_in_flight", &[]),
            ready: gauge("keygate_ready", &[]),
            key_reloads_ok: counter("keygate_key_reloads_total", &[("result", "ok")]),
            key_reloads_error: counter("keygate_key_reloads_total", &[("result", "error")]),
            config_reloads_ok: counter("keygate_config_reloads_total", &[("result", "ok")]),
            config_reloads_error: counter("keygate_config_reloads_total", &[("result", "error")]),
            last_key_reload: gauge("keygate_key_reload_last_success_timestamp_seconds", &[]),
            failed_auth_tracked: gauge("keygate_failed_auth_tracked_addresses", &[]),
            keys: gauge("keygate_keys", &[]),
            keys_active: gauge("keygate_keys_active", &[]),
            keys_expiring: gauge("keygate_keys_expiring_7d", &[]),
            log_dropped: counter(LOG_DROPPED, &[]),
            key_file_healthy: gauge("keygate_key_file_healthy", &[]),
        };
        let build = gauge(
            "keygate_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "profile",
                    if cfg!(debug_assertions) {
                        "debug"
                    } else {
                        "release"
                    },
                ),
                ("target_os", std::env::consts::OS),
                ("target_arch", std::env::consts::ARCH),
            ],
        );
        build.set(1.0);
        let m = Metrics {
            durations,
            added: histogram(ADDED, &[]),
            rate_limited: RATE_CODES.map(|c| counter(RATE_LIMITED, &[("code", c)])),
            prompt_tokens: counter(TOKENS, &[("kind", "prompt")]),
            completion_tokens: counter(TOKENS, &[("kind", "completion")]),
            state,
            process,
            requests,
            per_key_labels: AtomicBool::new(per_key_labels),
            recorder,
            handle,
        };
        // Every route × status class without an error code exists from the start.
        for r in 0..ROUTES {
            for c in 0..CLASSES.len() {
                m.request_counter(r, c, 0);
            }
        }
        m
    }

    pub fn set_per_key_labels(&self, on: bool) {
        self.per_key_labels.store(on, Ordering::Relaxed);
    }

    fn request_counter(&self, route: usize, class: usize, code: usize) -> &Counter {
        let i = (route * CLASSES.len() + class) * (CODES.len() + 1) + code;
        self.requests[i].get_or_init(|| {
            let code = if code == 0 { "" } else { CODES[code - 1] };
            self.recorder.register_counter(
                &Key::from_parts(
                    REQUESTS,
                    labels(&[
                        ("route", route_name(route)),
                        ("status_class", CLASSES[class]),
                        ("code", code),
                    ]),
                ),
                &META,
            )
        })
    }

    /// The series of upstream `name`, its error counters at zero; `checked` when it has a
    /// health check.
    pub fn upstream(&self, name: &str, checked: bool) -> Arc<UpstreamSeries> {
        let r = &self.recorder;
        Arc::new(UpstreamSeries {
            latency: r.register_histogram(
                &Key::from_parts(UPSTREAM_LATENCY, labels(&[("upstream", name)])),
                &META,
            ),
            errors: UpstreamError::ALL.map(|e| {
                r.register_counter(
                    &Key::from_parts(
                        UPSTREAM_ERRORS,
                        labels(&[("upstream", name), ("code", e.code())]),
                    ),
                    &META,
                )
            }),
            up: checked.then(|| {
                r.register_gauge(
                    &Key::from_parts(UPSTREAM_UP, labels(&[("upstream", name)])),
                    &META,
                )
            }),
        })
    }

    /// Records one finished request.
    pub fn record_request(&self, f: &Finish, total: Duration, added: Duration) {
        let route = route_index(f.route);
        let class = class_index(f.status);
        let code = f.error_code;
        if self.per_key_labels.load(Ordering::Relaxed) {
            // Opt-in and unbounded by nature: one registry lookup per request.
            let key = f.key.as_ref().map_or("", |k| &*k.id);
            self.recorder
                .register_counter(
                    &Key::from_parts(
                        REQUESTS,
                        labels(&[
                            ("route", route_name(route)),
                            ("status_class", CLASSES[class]),
                            ("code", code.unwrap_or("")),
                            ("key_id", key),
                        ]),
                    ),
                    &META,
                )
                .increment(1);
        } else if let Some(c) = code_index(code) {
            self.request_counter(route, class, c).increment(1);
        } else {
            self.recorder
                .register_counter(
                    &Key::from_parts(
                        REQUESTS,
                        labels(&[
                            ("route", route_name(route)),
                            ("status_class", CLASSES[class]),
                            ("code", code.unwrap_or("")),
                        ]),
                    ),
                    &META,
                )
                .increment(1);
        }
        if f.status == 429 {
            match RATE_CODES.iter().position(|c| Some(*c) == code) {
                Some(i) => self.rate_limited[i].increment(1),
                None => self
                    .recorder
                    .register_counter(
                        &Key::from_parts(RATE_LIMITED, labels(&[("code", code.unwrap_or(""))])),
                        &META,
                    )
                    .increment(1),
            }
        }
        self.durations[route].record(total.as_secs_f64());
        self.added.record(added.as_secs_f64());
        if let Some(series) = &f.upstream_series {
            if let Some(u) = f.upstream_latency {
                series.latency.record(u.as_secs_f64());
            }
            let failure = match code {
                Some(c) => UpstreamError::from_gateway_code(c),
                None if f.upstream_latency.is_some() && f.status >= 500 => {
                    Some(UpstreamError::Status5xx)
                }
                None => None,
            };
            if let Some(e) = failure.or(f.stream_error) {
                series.error(e);
            }
        }
        if let Some(t) = f.tokens {
            self.prompt_tokens.increment(t.prompt);
            self.completion_tokens.increment(t.completion);
        }
    }

    /// Drains histogram samples into their buckets, so memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text for `gw`, with the state gauges set now.
    pub fn render(&self, gw: &Gateway) -> String {
        self.refresh(gw);
        self.handle.render()
    }

    /// Sets the gauges that describe state, just before a scrape.
    fn refresh(&self, gw: &Gateway) {
        let live = gw.live();
        let now = Timestamp::now();
        let r = &gw.reloads;
        let s = &self.state;
        s.in_flight.set(gw.capacity.in_use() as f64);
        s.ready.set(if gw.is_ready() { 1.0 } else { 0.0 });
        s.key_reloads_ok
            .absolute(r.key_reloads.load(Ordering::Relaxed));
        s.key_reloads_error
            .absolute(r.key_reload_failures.load(Ordering::Relaxed));
        s.config_reloads_ok
            .absolute(r.config_reloads.load(Ordering::Relaxed));
        s.config_reloads_error
            .absolute(r.config_reload_failures.load(Ordering::Relaxed));
        s.last_key_reload
            .set(r.last_key_reload.load(Ordering::Relaxed) as f64);
        s.failed_auth_tracked.set(gw.failed_auth.tracked() as f64);
        s.key_file_healthy
            .set(if r.key_file_ok.load(Ordering::Acquire) {
                1.0
            } else {
                0.0
            });
        if let Some(l) = gw.logging.get() {
            s.log_dropped.absolute(l.dropped());
        }
        for u in live.upstreams.iter() {
            if let Some(up) = u.health().and_then(|h| h.is_up()) {
                u.series.set_up(up);
            }
        }
        let (mut active, mut expiring) = (0u64, 0u64);
        let per_key = self.per_key_labels.load(Ordering::Relaxed);
        if let Some(idx) = &live.keys {
            s.keys.set(idx.len() as f64);
            for e in idx.entries() {
                if e.revoked_at.is_some() || e.expires_at.is_some_and(|t| t <= now) {
                    continue;
                }
                active += 1;
                if let Some(t) = e.expires_at {
                    let left = now.until(t);
                    if left <= 7 * 86_400 {
                        expiring += 1;
                    }
                    if per_key {
                        self.recorder
                            .register_gauge(
                                &Key::from_parts(
                                    "keygate_key_expiry_seconds",
                                    labels(&[("key_id", &e.id)]),
                                ),
                                &META,
                            )
                            .set(left as f64);
                    }
                }
            }
        }
        s.keys_active.set(active as f64);
        s.keys_expiring.set(expiring as f64);
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
    }
}

/// `# HELP` for every series the gateway exports.
fn describe(r: &PrometheusRecorder) {
    let counters: [(&'static str, &'static str); 7] = [
        (REQUESTS, "Requests answered, by route, status class and error code (empty for none)."),
        (RATE_LIMITED, "Requests refused with 429, by error code."),
        (UPSTREAM_ERRORS, "Upstream failures, by upstream and kind: unreachable, no answer in time, a 5xx answer, a stream that broke off or stalled."),
        (TOKENS, "Tokens reported by upstreams in their usage, by kind (prompt, completion)."),
        ("keygate_key_reloads_total", "Key-file reloads, by result."),
        ("keygate_config_reloads_total", "gateway.toml reloads, by result."),
        (LOG_DROPPED, "Access-log lines dropped because the log writer could not keep up (audit and other lines are never dropped)."),
    ];
    for (name, help) in counters {
        r.describe_counter(name.into(), None, help.into());
    }
    let gauges: [(&'static str, Option<Unit>, &'static str); 11] = [
        ("keygate_in_flight", None, "Requests in flight now, gateway-wide."),
        ("keygate_ready", None, "1 when /readyz answers 200: keys loaded, not draining, every health-checked upstream up."),
        (UPSTREAM_UP, None, "1 when the upstream's last health check answered 2xx, 0 when it did not (only upstreams with `health`)."),
        ("keygate_keys", None, "Keys in the loaded key file, revoked and expired included."),
        ("keygate_key_file_healthy", None, "1 when the last look at the key file loaded it; 0 while it cannot be read or is invalid (the last good keys keep serving)."),
        ("keygate_keys_active", None, "Keys neither revoked nor expired."),
        ("keygate_keys_expiring_7d", None, "Active keys that expire within 7 days."),
        ("keygate_key_expiry_seconds", Some(Unit::Seconds), "Seconds until the key expires (per_key_labels only)."),
        ("keygate_key_reload_last_success_timestamp_seconds", Some(Unit::Seconds), "Unix time of the last successful key-file load."),
        ("keygate_failed_auth_tracked_addresses", None, "Client addresses with recent failed authentications being tracked."),
        ("keygate_build_info", None, "Always 1; the labels say which build is running."),
    ];
    for (name, unit, help) in gauges {
        r.describe_gauge(name.into(), unit, help.into());
    }
    let histograms: [(&'static str, &'static str); 3] = [
        (DURATION, "Time from the request head to the end of the answer (the last byte of a stream), by route."),
        (ADDED, "Time the gateway itself spent before the response head left (all of it when nothing was forwarded)."),
        (UPSTREAM_LATENCY, "Time from sending upstream to the upstream's response head, by upstream."),
    ];
    for (name, help) in histograms {
        r.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut acceptor = crate::server::Acceptor::new("metrics");
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = acceptor.accept(&listener) => accepted,
        };
        let gw = Arc::clone(&gw);
        let freed = acceptor.freed();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gw = Arc::clone(&gw);
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let text = gw.metrics.render(&gw);
                        let mut r = Response::new(http_body_util::Full::new(Bytes::from(text)));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        r
                    } else {
                        let mut r = Response::new(http_body_util::Full::new(Bytes::from_static(
                            b"not found\n",
                        )));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            freed.notify_one();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_error_code_has_a_resolved_slot() {
        use crate::error::GatewayError as E;
        let errors = [
            E::InvalidRequest(String::new()),
            E::MissingKey,
            E::InvalidKey("x"),
            E::RevokedKey,
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
            E::Unready(crate::gateway::NotReady::Draining),
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
