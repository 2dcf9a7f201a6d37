//! Prometheus metrics on their own listener (`[metrics] listen`), so scrapes never compete
//! with traffic and the endpoint is never exposed with the API by accident.
//!
//! Counters are recorded through the `metrics` facade from the request path (one atomic add
//! per series); gauges that describe state (index size, reload status, expiry) are computed
//! when scraped.

use crate::account::Finish;
use crate::state::Gateway;
use crate::time::Timestamp;
use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

static PER_KEY_LABELS: AtomicBool = AtomicBool::new(false);
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0, 30.0,
];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Some(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()?;
    Some(HANDLE.get_or_init(|| handle))
}

pub fn set_per_key_labels(on: bool) {
    PER_KEY_LABELS.store(on, Ordering::Relaxed);
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Records one finished request.
pub fn record_request(f: &Finish, total: Duration, added: Duration) {
    if HANDLE.get().is_none() {
        return;
    }
    let class = status_class(f.status);
    let code = f.error_code.unwrap_or("");
    if PER_KEY_LABELS.load(Ordering::Relaxed) {
        let key = f
            .key
            .as_ref()
            .map_or_else(String::new, |k| k.id.to_string());
        metrics::counter!("keygate_requests_total", "route" => f.route, "status_class" => class, "code" => code, "key_id" => key).increment(1);
    } else {
        metrics::counter!("keygate_requests_total", "route" => f.route, "status_class" => class, "code" => code).increment(1);
    }
    if f.status == 429 {
        metrics::counter!("keygate_rate_limited_total", "code" => code).increment(1);
    }
    metrics::histogram!("keygate_request_duration_seconds", "route" => f.route)
        .record(total.as_secs_f64());
    metrics::histogram!("keygate_added_latency_seconds").record(added.as_secs_f64());
    if let Some(u) = f.upstream_latency {
        let name = f.upstream.as_deref().unwrap_or("").to_string();
        metrics::histogram!("keygate_upstream_latency_seconds", "upstream" => name)
            .record(u.as_secs_f64());
    }
    if let Some(t) = f.tokens {
        metrics::counter!("keygate_tokens_total", "kind" => "prompt").increment(t.prompt);
        metrics::counter!("keygate_tokens_total", "kind" => "completion").increment(t.completion);
    }
}

/// Sets the gauges that describe state, just before a scrape.
fn refresh_gauges(gw: &Gateway) {
    let live = gw.live();
    let now = Timestamp::now();
    let r = &gw.reloads;
    metrics::gauge!("keygate_in_flight").set(gw.capacity.in_use() as f64);
    metrics::gauge!("keygate_ready").set(if gw.is_ready() { 1.0 } else { 0.0 });
    metrics::counter!("keygate_key_reloads_total", "result" => "ok")
        .absolute(r.key_reloads.load(Ordering::Relaxed));
    metrics::counter!("keygate_key_reloads_total", "result" => "error")
        .absolute(r.key_reload_failures.load(Ordering::Relaxed));
    metrics::counter!("keygate_config_reloads_total", "result" => "ok")
        .absolute(r.config_reloads.load(Ordering::Relaxed));
    metrics::counter!("keygate_config_reloads_total", "result" => "error")
        .absolute(r.config_reload_failures.load(Ordering::Relaxed));
    metrics::gauge!("keygate_key_file_healthy").set(if r.key_file_ok.load(Ordering::Acquire) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("keygate_key_reload_last_success_timestamp_seconds")
        .set(r.last_key_reload.load(Ordering::Relaxed) as f64);
    metrics::gauge!("keygate_failed_auth_tracked_addresses").set(gw.failed_auth.tracked() as f64);
    let (mut active, mut expiring) = (0u64, 0u64);
    let per_key = PER_KEY_LABELS.load(Ordering::Relaxed);
    if let Some(idx) = &live.keys {
        metrics::gauge!("keygate_keys").set(idx.len() as f64);
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
                    metrics::gauge!("keygate_key_expiry_seconds", "key_id" => e.id.to_string())
                        .set(left as f64);
                }
            }
        }
    }
    metrics::gauge!("keygate_keys_active").set(active as f64);
    metrics::gauge!("keygate_keys_expiring_7d").set(expiring as f64);
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let Some(handle) = install() else {
        tracing::error!("the metrics recorder could not be installed");
        return;
    };
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
                        refresh_gauges(&gw);
                        let mut r =
                            Response::new(http_body_util::Full::new(Bytes::from(handle.render())));
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
