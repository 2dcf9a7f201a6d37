//! The request path's histograms (request duration, added latency, upstream latency), kept
//! here rather than in the Prometheus exporter: fixed buckets of atomic counters, so a sample
//! is a search of at most 19 bounds and two atomic adds. The exporter's histograms keep every
//! sample, with a clock read each, until the maintenance round folds them into buckets:
//! memory that grows with traffic between rounds, and a fold on the request core every 10 s.
//! Written after the exporter's families, in the same text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One histogram series.
#[derive(Debug)]
pub struct Buckets {
    /// Upper bounds, in seconds, ascending.
    bounds: &'static [f64],
    /// Samples in each bucket (not cumulative): at or below `bounds[i]` and above the bound
    /// before; the last one holds those above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, in microseconds (whole days of streams at thousands of
    /// requests a second for decades before it wraps).
    sum_micros: AtomicU64,
}

impl Buckets {
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the series `name{labels}`: cumulative `_bucket`s up to `+Inf`, `_sum` (in
    /// seconds) and `_count` (the `+Inf` bucket's count, read once, so the two agree).
    pub fn write(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut pairs = String::new();
        for (k, v) in labels {
            let _ = write!(pairs, "{k}=\"{}\",", Escaped(v));
        }
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let _ = match self.bounds.get(i) {
                Some(b) => writeln!(out, "{name}_bucket{{{pairs}le=\"{b}\"}} {total}"),
                None => writeln!(out, "{name}_bucket{{{pairs}le=\"+Inf\"}} {total}"),
            };
        }
        let pairs = pairs.trim_end_matches(',');
        let labels = if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{pairs}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {total}");
    }
}

/// Writes a histogram family's `# HELP` and `# TYPE` lines.
pub fn write_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each sample lands in the first bucket whose bound is at or above it; the buckets are
    /// written cumulatively, with the sum in seconds and a count equal to `+Inf`'s.
    #[test]
    fn samples_land_at_or_below_their_bound_and_are_written_cumulatively() {
        static BOUNDS: [f64; 3] = [0.001, 0.01, 1.0];
        let h = Buckets::new(&BOUNDS);
        for us in [500, 1_000, 1_001, 10_000, 2_000_000] {
            h.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.write(&mut out, "t_seconds", &[("route", "a\"b")]);
        assert_eq!(
            out,
            "t_seconds_bucket{route=\"a\\\"b\",le=\"0.001\"} 2\n\
             t_seconds_bucket{route=\"a\\\"b\",le=\"0.01\"} 4\n\
             t_seconds_bucket{route=\"a\\\"b\",le=\"1\"} 4\n\
             t_seconds_bucket{route=\"a\\\"b\",le=\"+Inf\"} 5\n\
             t_seconds_sum{route=\"a\\\"b\"} 2.012501\n\
             t_seconds_count{route=\"a\\\"b\"} 5\n"
        );
        let mut bare = String::new();
        Buckets::new(&BOUNDS).write(&mut bare, "u", &[]);
        assert!(
            bare.contains("u_bucket{le=\"+Inf\"} 0\nu_sum 0\nu_count 0\n"),
            "{bare}"
        );
    }
}
