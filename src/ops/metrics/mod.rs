//! Prometheus metrics, served on their own listener (`[metrics] listen`, `scrape`), so scrapes
//! never compete with traffic and the endpoint is never exposed with the API by accident.
//!
//! The recorder belongs to the `Gateway` (no process-wide recorder), and every series the
//! request path touches is a handle resolved once — at start for the label sets known then
//! (routes × status classes, upstreams × error codes), on first use for an error code — so a
//! request costs an atomic add per counter and two per histogram (`histogram`), never a
//! registry lookup with label hashing. Registering them at start also exports them at zero
//! before the first event, so `rate()` and alerts see a series from the first scrape. Gauges
//! that describe state (index size, reload status, expiry, process) are set when scraped.

mod histogram;
mod names;
pub mod scrape;

use crate::keys::entry::KeyId;
use crate::keys::usage::Tokens;
use histogram::Buckets;
use metrics::{Counter, Gauge, Key, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use names::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use names::{Delivery, UpstreamError};

/// One finished request, as the metrics count it (`account::RequestRecord` fills it in).
pub struct RequestSample<'a> {
    pub route: &'static str,
    pub status: u16,
    pub code: Option<&'static str>,
    pub key_id: Option<&'a KeyId>,
    /// From the request head to the end of the answer.
    pub total: Duration,
    /// The time the gateway itself added, when known.
    pub added: Option<Duration>,
    /// The upstream's series and its latency to the response head, when forwarded.
    pub upstream: Option<(&'a UpstreamSeries, Option<Duration>)>,
    pub stream_error: Option<UpstreamError>,
    pub tokens: Option<Tokens>,
}

/// One upstream's series, resolved when the upstream is built (start and config reloads).
#[derive(Debug)]
pub struct UpstreamSeries {
    latency: Arc<Buckets>,
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
    tls_reloads_ok: Counter,
    tls_reloads_error: Counter,
    last_key_reload: Gauge,
    failed_auth_tracked: Gauge,
    keys: Gauge,
    keys_active: Gauge,
    keys_expiring: Gauge,
    log_dropped: Counter,
    key_file_healthy: Gauge,
    index_rebuilds: Counter,
    index_changes_applied: Counter,
    index_compactions: Counter,
    index_overlay: Gauge,
    key_store_connected: Gauge,
    key_store_stale: Gauge,
    key_store_diverged: Gauge,
    key_store_version: Gauge,
    key_store_changes: Counter,
    key_store_resyncs: Counter,
    key_store_skipped: Counter,
    key_snapshot_healthy: Gauge,
}

/// The gateway's metrics: the recorder and the handles the request path uses.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    per_key_labels: AtomicBool,
    /// Whether the request series can be read at all: without `[metrics] listen` (which
    /// only a restart changes) nothing serves them, and a request records none.
    served: bool,
    /// `keygate_requests_total` by (route, status class, code or none), filled on first use.
    requests: Box<[OnceLock<Counter>]>,
    /// `keygate_request_duration_seconds` by route.
    durations: Box<[Buckets]>,
    added: Buckets,
    /// `keygate_upstream_latency_seconds` by upstream name: an upstream rebuilt by a reload
    /// keeps its series.
    upstream_latency: Mutex<BTreeMap<String, Arc<Buckets>>>,
    rate_limited: [Counter; RATE_CODES.len()],
    prompt_tokens: Counter,
    completion_tokens: Counter,
    state: StateGauges,
    /// `keygate_notifications_total` by event (`NOTIFY_EVENTS`) and result (`Delivery`).
    notifications: [[Counter; Delivery::ALL.len()]; NOTIFY_EVENTS.len()],
    process: metrics_process::Collector,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a gateway whose request series are `served` (`[metrics] listen` is
    /// set), with or without `per_key_labels`.
    pub fn new(per_key_labels: bool, served: bool) -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
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

        let requests: Box<[OnceLock<Counter>]> = (0..ROUTES * CLASSES.len() * (CODES.len() + 1))
            .map(|_| OnceLock::new())
            .collect();
        let durations = (0..ROUTES)
            .map(|_| Buckets::new(&DURATION_BUCKETS))
            .collect();
        let state = StateGauges {
            in_flight: gauge("keygate_in_flight", &[]),
            ready: gauge("keygate_ready", &[]),
            key_reloads_ok: counter("keygate_key_reloads_total", &[("result", "ok")]),
            key_reloads_error: counter("keygate_key_reloads_total", &[("result", "error")]),
            config_reloads_ok: counter("keygate_config_reloads_total", &[("result", "ok")]),
            config_reloads_error: counter("keygate_config_reloads_total", &[("result", "error")]),
            tls_reloads_ok: counter(TLS_RELOADS, &[("result", "ok")]),
            tls_reloads_error: counter(TLS_RELOADS, &[("result", "error")]),
            last_key_reload: gauge("keygate_key_reload_last_success_timestamp_seconds", &[]),
            failed_auth_tracked: gauge("keygate_failed_auth_tracked_addresses", &[]),
            keys: gauge("keygate_keys", &[]),
            keys_active: gauge("keygate_keys_active", &[]),
            keys_expiring: gauge("keygate_keys_expiring_7d", &[]),
            log_dropped: counter(LOG_DROPPED, &[]),
            key_file_healthy: gauge("keygate_key_file_healthy", &[]),
            index_rebuilds: counter("keygate_key_index_rebuilds_total", &[]),
            index_changes_applied: counter("keygate_key_index_changes_applied_total", &[]),
            index_compactions: counter("keygate_key_index_compactions_total", &[]),
            index_overlay: gauge("keygate_key_index_overlay_keys", &[]),
            key_store_connected: gauge("keygate_key_store_connected", &[]),
            key_store_stale: gauge("keygate_key_store_stale_seconds", &[]),
            key_store_diverged: gauge("keygate_key_store_diverged", &[]),
            key_store_version: gauge("keygate_key_store_applied_version", &[]),
            key_store_changes: counter("keygate_key_store_changes_applied_total", &[]),
            key_store_resyncs: counter("keygate_key_store_resyncs_total", &[]),
            key_store_skipped: counter("keygate_key_store_records_skipped_total", &[]),
            key_snapshot_healthy: gauge("keygate_key_snapshot_healthy", &[]),
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
            added: Buckets::new(&ADDED_BUCKETS),
            upstream_latency: Mutex::new(BTreeMap::new()),
            rate_limited: RATE_CODES.map(|c| counter(RATE_LIMITED, &[("code", c)])),
            prompt_tokens: counter(TOKENS, &[("kind", "prompt")]),
            completion_tokens: counter(TOKENS, &[("kind", "completion")]),
            state,
            notifications: NOTIFY_EVENTS.map(|e| {
                Delivery::ALL.map(|d| counter(NOTIFICATIONS, &[("event", e), ("result", d.name())]))
            }),
            process,
            requests,
            per_key_labels: AtomicBool::new(per_key_labels),
            served,
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

    /// Counts one notification outcome of `event` (one of `NOTIFY_EVENTS`).
    pub fn notification(&self, event: &str, result: Delivery) {
        if let Some(i) = NOTIFY_EVENTS.iter().position(|e| *e == event) {
            self.notifications[i][result as usize].increment(1);
        }
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

    /// The latency series of upstream `name`: the one it had, if an upstream of that name
    /// was built before.
    fn upstream_latency(&self, name: &str) -> Arc<Buckets> {
        let mut all = self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            all.entry(name.to_string())
                .or_insert_with(|| Arc::new(Buckets::new(&DURATION_BUCKETS))),
        )
    }

    /// The series of upstream `name`, its error counters at zero; `checked` when it has a
    /// health check.
    pub fn upstream(&self, name: &str, checked: bool) -> Arc<UpstreamSeries> {
        let r = &self.recorder;
        Arc::new(UpstreamSeries {
            latency: self.upstream_latency(name),
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

    /// Records one finished request, when the series are served.
    pub fn record_request(&self, f: &RequestSample<'_>) {
        if !self.served {
            return;
        }
        let route = route_index(f.route);
        let class = class_index(f.status);
        let code = f.code;
        if self.per_key_labels.load(Ordering::Relaxed) {
            // Opt-in and unbounded by nature: one registry lookup per request.
            let key = f.key_id.map_or("", |k| k.as_str());
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
        if let Some(d) = self.durations.get(route) {
            d.record(f.total);
        }
        if let Some(added) = f.added {
            self.added.record(added);
        }
        if let Some((series, latency)) = f.upstream {
            if let Some(u) = latency {
                series.latency.record(u);
            }
            let failure = match code {
                Some(c) => UpstreamError::from_gateway_code(c),
                None if latency.is_some() && f.status >= 500 => Some(UpstreamError::Status5xx),
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
}

#[cfg(test)]
mod tests;
