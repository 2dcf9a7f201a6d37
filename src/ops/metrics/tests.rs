use super::*;
use crate::keys::scope::Scope;

/// `keygate_requests_total` for `route`, status class 2xx, no error code.
fn ok_requests(m: &Metrics, route: &str) -> f64 {
    let text = m.handle.render();
    let want = [
        format!("route=\"{route}\""),
        "status_class=\"2xx\"".to_string(),
        "code=\"\"".to_string(),
    ];
    text.lines()
        .filter(|l| l.starts_with("keygate_requests_total{"))
        .find(|l| want.iter().all(|w| l.contains(w.as_str())))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {want:?} in\n{text}"))
}

/// Without a metrics listener nothing can read the request series, so a request records
/// none of them; with one, each request is counted.
#[test]
fn requests_are_recorded_only_when_the_series_are_served() {
    let route = Scope::ALL[0].name();
    let sample = RequestSample {
        route,
        status: 200,
        code: None,
        key_id: None,
        total: Duration::from_millis(3),
        added: Some(Duration::from_micros(90)),
        upstream: None,
        stream_error: None,
        tokens: None,
    };
    let served = Metrics::new(false, true);
    served.record_request(&sample);
    served.record_request(&sample);
    assert_eq!(ok_requests(&served, route), 2.0);

    let unserved = Metrics::new(false, false);
    unserved.record_request(&sample);
    assert_eq!(ok_requests(&unserved, route), 0.0);
}

/// An upstream rebuilt by a configuration reload keeps its latency series (no counter
/// reset in the scrape), and every upstream seen is written.
#[test]
fn an_upstream_rebuilt_keeps_its_latency_series() {
    let m = Metrics::new(false, true);
    let first = m.upstream("vllm", false);
    first.latency.record(Duration::from_millis(2));
    let rebuilt = m.upstream("vllm", false);
    assert!(Arc::ptr_eq(&first.latency, &rebuilt.latency));
    m.upstream("other", false);
    let mut text = String::new();
    m.write_histograms(&mut text);
    assert!(text.contains("keygate_upstream_latency_seconds_count{upstream=\"vllm\"} 1\n"));
    assert!(text.contains("keygate_upstream_latency_seconds_count{upstream=\"other\"} 0\n"));
}
