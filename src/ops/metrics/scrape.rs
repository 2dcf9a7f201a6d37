//! What a scrape sees: the gauges that describe the gateway's state, set just before each
//! scrape, and the `/metrics` listener.

use super::histogram::write_header;
use super::names::{
    labels, route_name, ADDED, ADDED_HELP, CLUSTER_BACKEND_UP, DURATION, DURATION_HELP, META,
    TLS_EXPIRES, UPSTREAM_LATENCY, UPSTREAM_LATENCY_HELP,
};
use super::Metrics;
use crate::gateway::Gateway;
use crate::proxy::health::Status;
use crate::server::accept::Acceptor;
use crate::time::Timestamp;
use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{Key, Recorder};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A scrape's text without the samples labelled by key (`key_id` is only ever a first label
/// or a later one; an escaped quote in another label's value cannot match).
fn without_key_series(text: String) -> String {
    if !text.contains("key_id=\"") {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !(line.contains("{key_id=\"") || line.contains(",key_id=\"")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Metrics {
    /// The Prometheus text for `gw`, with the state gauges set now.
    pub fn render(&self, gw: &Gateway) -> String {
        self.refresh(gw);
        let mut text = self.handle.render();
        if !self.per_key_labels.load(Ordering::Relaxed) {
            // Switched off by a reload: the per-key series made while it was on stay in the
            // registry (it removes none) but are no longer exported.
            text = without_key_series(text);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        self.write_histograms(&mut text);
        text
    }

    /// Appends the three histogram families to a scrape's text.
    pub(super) fn write_histograms(&self, out: &mut String) {
        write_header(out, DURATION, DURATION_HELP);
        for (r, h) in self.durations.iter().enumerate() {
            h.write(out, DURATION, &[("route", route_name(r))]);
        }
        write_header(out, ADDED, ADDED_HELP);
        self.added.write(out, ADDED, &[]);
        write_header(out, UPSTREAM_LATENCY, UPSTREAM_LATENCY_HELP);
        let upstreams = self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, h) in upstreams.iter() {
            h.write(out, UPSTREAM_LATENCY, &[("upstream", name)]);
        }
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
        s.tls_reloads_ok
            .absolute(r.tls_reloads.load(Ordering::Relaxed));
        s.tls_reloads_error
            .absolute(r.tls_reload_failures.load(Ordering::Relaxed));
        let expires = r.tls_expires_at.load(Ordering::Relaxed);
        if expires != 0 {
            // Only with TLS: elsewhere there is no certificate to expire.
            self.recorder
                .register_gauge(&Key::from_name(TLS_EXPIRES), &META)
                .set(expires as f64);
        }
        s.index_rebuilds
            .absolute(r.index_rebuilds.load(Ordering::Relaxed));
        s.index_changes_applied
            .absolute(r.index_changes_applied.load(Ordering::Relaxed));
        s.index_compactions
            .absolute(r.index_compactions.load(Ordering::Relaxed));
        s.failed_auth_tracked.set(gw.failed_auth.tracked() as f64);
        s.key_file_healthy
            .set(if r.key_file_ok.load(Ordering::Acquire) {
                1.0
            } else {
                0.0
            });
        if let Some(k) = &gw.key_sync {
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            s.key_store_connected
                .set(flag(k.connected.load(Ordering::Relaxed)));
            s.key_store_stale.set(k.stale_seconds() as f64);
            s.key_store_diverged
                .set(flag(k.diverged.load(Ordering::Relaxed)));
            s.key_store_version.set(k.applied().version as f64);
            s.key_store_changes
                .absolute(k.changes_applied.load(Ordering::Relaxed));
            s.key_store_resyncs
                .absolute(k.resyncs.load(Ordering::Relaxed));
            s.key_store_skipped
                .absolute(k.store.skipped.load(Ordering::Relaxed));
            s.key_snapshot_healthy
                .set(flag(k.snapshot_error().is_none()));
        }
        if let Some(l) = gw.logging.get() {
            s.log_dropped.absolute(l.dropped());
        }
        if let Some(backend) = &gw.redis {
            // Only in cluster mode: elsewhere there is no backend to be down.
            self.recorder
                .register_gauge(&Key::from_name(CLUSTER_BACKEND_UP), &META)
                .set(if backend.is_up() { 1.0 } else { 0.0 });
        }
        for u in live.upstreams.iter() {
            match u.health().map(|h| h.status()) {
                Some(Status::Up) => u.series.set_up(true),
                Some(Status::Down) => u.series.set_up(false),
                Some(Status::Unknown) | None => {}
            }
        }
        let (mut active, mut expiring) = (0u64, 0u64);
        let per_key = self.per_key_labels.load(Ordering::Relaxed);
        if let Some(idx) = &live.keys {
            s.keys.set(idx.len() as f64);
            s.index_overlay.set(idx.overlay_len() as f64);
            for e in idx.entries() {
                if e.revoked_at.is_some()
                    || e.disabled_at.is_some()
                    || e.expires_at.is_some_and(|t| t <= now)
                {
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

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut acceptor = Acceptor::new("metrics");
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
