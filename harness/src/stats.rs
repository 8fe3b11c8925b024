//! Small latency statistics for reports.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latency percentiles in microseconds, the one shape every report here shows them in (the
/// harness's bench and demo, the load test's `summary.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Percentiles {
    /// Exact nearest-rank percentiles of `samples` (any order; zeros when empty), for runs
    /// short enough to keep every sample.
    pub fn of_samples(samples: &[Duration]) -> Percentiles {
        let mut us: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        let Some(&max_us) = us.last() else {
            return Percentiles::default();
        };
        let rank = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Percentiles { count: us.len() as u64, p50_us: rank(0.50), p99_us: rank(0.99), p999_us: rank(0.999), max_us }
    }

    /// Percentiles of a histogram of microseconds (zeros when empty), for runs recorded into
    /// HdrHistograms (within the histogram's precision).
    pub fn of_histogram(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Seconds since the epoch, for report directory names.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Microseconds as milliseconds with three decimals.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of_samples(&s);
        assert_eq!((p.count, p.p50_us, p.p99_us, p.p999_us, p.max_us), (100, 50, 99, 100, 100));
        assert_eq!(Percentiles::of_samples(&[]), Percentiles::default());
    }

    #[test]
    fn of_a_histogram() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of_histogram(&h);
        assert_eq!((p.count, p.p50_us, p.p99_us, p.p999_us, p.max_us), (1000, 500, 990, 999, 1000));
        assert_eq!(Percentiles::of_histogram(&Histogram::new(3).unwrap()), Percentiles::default());
    }

    #[test]
    fn both_constructors_agree_on_small_values() {
        let samples: Vec<Duration> = [7, 3, 900, 12, 12, 40].into_iter().map(Duration::from_micros).collect();
        let mut h = Histogram::<u64>::new(3).unwrap();
        for s in &samples {
            h.record(s.as_micros() as u64).unwrap();
        }
        assert_eq!(Percentiles::of_samples(&samples), Percentiles::of_histogram(&h));
    }

    #[test]
    fn the_report_fields_stay() {
        let p = Percentiles { count: 1, p50_us: 2, p99_us: 3, p999_us: 4, max_us: 5 };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"count":1,"p50_us":2,"p99_us":3,"p999_us":4,"max_us":5}"#);
    }
}
