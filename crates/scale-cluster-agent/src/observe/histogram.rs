//! A Prometheus histogram (cumulative buckets, sum, count) rendered in the text format.
//!
//! Hand-made rather than from `prometheus-client`: that crate speaks OpenMetrics (`# EOF`, its own
//! naming rules), while the agent's `/metrics` is the Prometheus 0.0.4 text it always was, and a
//! histogram is a few counters.

use std::fmt::Write as _;

/// Bucket bounds (seconds) for phases that take from a fraction of a second to many minutes,
/// in the spirit of Kubernetes' `*_duration_seconds` histograms (roughly doubling).
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 1800.0,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::seconds()
    }
}

impl Histogram {
    /// A histogram with [`SECONDS_BUCKETS`].
    pub fn seconds() -> Self {
        Self {
            bounds: &SECONDS_BUCKETS,
            counts: vec![0; SECONDS_BUCKETS.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The `_bucket`, `_sum` and `_count` lines of series `name` with `labels` (`k="v",…` or
    /// empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_in_inf() {
        let mut h = Histogram::seconds();
        h.observe(0.1);
        h.observe(3.0);
        h.observe(5000.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "phase=\"p\"");
        assert!(
            out.contains("x_seconds_bucket{phase=\"p\",le=\"0.25\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{phase=\"p\",le=\"4\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{phase=\"p\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{phase=\"p\"} 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
