//! HdrHistogram's text formats: the percentile distribution (`.hgrm`, as Java's
//! `outputPercentileDistribution` prints it, values in ms) and interval logs (`.hlog`, written
//! with the hdrhistogram crate's interval log writer).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

/// Quantile ticks per half distance to 100%, as Java's default output uses.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// µs recorded, ms printed.
const SCALE: f64 = 1000.0;

/// The percentile distribution of a µs histogram with values in ms, in the format of Java's
/// `AbstractHistogram.outputPercentileDistribution(out, 5, 1000.0)`: readable by HdrHistogram's
/// plotter (hdrhistogram.github.io/HdrHistogram/plotFiles.html).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let digits = usize::from(h.sigfig());
    let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(out, "{value:>12.digits$} {q:2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:>12.digits$} {q:2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() { (0.0, 0.0, 0.0) } else { (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE) };
    let _ = writeln!(out, "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]");
    let _ = writeln!(out, "#[Max     = {max:>12.digits$}, Total count    = {:>12}]", h.len());
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets(h.sigfig()));
    out
}

/// Sub-buckets per bucket for `sigfig` significant digits (as the histogram computes it).
fn sub_buckets(sigfig: u8) -> u64 {
    let single_unit_resolution = 2 * 10u64.pow(u32::from(sigfig));
    single_unit_resolution.next_power_of_two()
}

/// An interval log of 1 s histograms (keyed by whole seconds from `start`), µs values, the
/// interval max column in ms. `start` is both StartTime and BaseTime, so interval timestamps are
/// seconds into the run.
pub fn interval_log(name: &str, start: SystemTime, intervals: &BTreeMap<u64, Histogram<u64>>) -> Result<String, String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        // Headers first, then the legend line Java's HistogramLogWriter writes, then intervals.
        IntervalLogWriterBuilder::new()
            .add_comment(&format!("Latency of {name}, µs from the intended send time, 1 s intervals of intended time"))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(SCALE)
            .begin_log_with(&mut buf, &mut serializer)
            .map_err(|e| format!("cannot write the {name} interval log: {e}"))?;
    }
    buf.extend_from_slice(b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n");
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(SCALE)
            .begin_log_with(&mut buf, &mut serializer)
            .map_err(|e| format!("cannot write the {name} interval log: {e}"))?;
        let tag = Tag::new(name);
        for (second, h) in intervals {
            writer
                .write_histogram(h, Duration::from_secs(*second), Duration::from_secs(1), tag)
                .map_err(|e| format!("cannot write the {name} interval log: {e}"))?;
        }
    }
    // The divisor comment written by the second builder repeats the first: drop it.
    let text = String::from_utf8(buf).map_err(|e| format!("interval log is not text: {e}"))?;
    let mut seen = false;
    Ok(text
        .lines()
        .filter(|l| {
            if l.starts_with("#[MaxValueDivisor") {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        })
        .map(|l| format!("{l}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn filled() -> Histogram<u64> {
        let mut h = crate::record::histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn distribution_looks_like_javas() {
        let text = percentile_distribution(&filled());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        // First value line: the lowest value, quantile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, vec!["0.001", "0.000000000000", "1", "1.00"]);
        // The last value line is quantile 1 with the whole count and no fourth column.
        let last = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols.len(), 3, "{last}");
        assert_eq!(cols[1], "1.000000000000");
        assert_eq!(cols[2], "10000");
        assert!(text.contains("#[Max     =       10.007, Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        // A median near 5 ms.
        let median = lines.iter().find(|l| l.contains(" 0.500000000000 ")).unwrap();
        let v: f64 = median.split_whitespace().next().unwrap().parse().unwrap();
        assert!((4.9..5.1).contains(&v), "{median}");
    }

    #[test]
    fn empty_distribution_has_the_footer() {
        let text = percentile_distribution(&crate::record::histogram());
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn interval_log_reads_back() {
        let mut intervals = BTreeMap::new();
        intervals.insert(0, filled());
        let mut second = Histogram::new(3).unwrap();
        second.record(2_500).unwrap();
        intervals.insert(3, second);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let text = interval_log("capture", start, &intervals).unwrap();
        assert!(text.contains("#[StartTime: 1800000000.000"), "{text}");
        assert!(text.contains("\"StartTimestamp\",\"Interval_Length\""), "{text}");
        assert_eq!(text.matches("#[MaxValueDivisor").count(), 1, "{text}");
        let entries: Vec<_> = IntervalLogIterator::new(text.as_bytes())
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some((i.start_timestamp(), i.max(), i.tag().map(|t| t.as_str().to_string()))),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, Duration::from_secs(3));
        assert!((entries[1].1 - 2.5).abs() < 0.01, "max in ms: {:?}", entries[1]);
        assert_eq!(entries[0].2.as_deref(), Some("capture"));
    }
}
