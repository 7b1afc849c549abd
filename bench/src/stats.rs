//! Percentiles and ratios: the small arithmetic every table row needs, kept pure and tested.
//!
//! Percentiles use the nearest-rank method (the smallest sample such that at least `p` % of the
//! samples are at or below it), so a p99 over 100 samples is the 99th smallest, never an
//! interpolated value that no request actually took.

use std::time::Duration;

/// p50 and p99 of a set of samples, with how many there were.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
}

/// The nearest-rank `p`-th percentile (`0 < p <= 100`) of `sorted` (ascending); `None` when
/// `sorted` is empty or `p` is out of range.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// p50/p99 of unsorted samples (NaNs are dropped); `None` when there is no sample.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        count: sorted.len(),
        p50: percentile(&sorted, 50.0)?,
        p99: percentile(&sorted, 99.0)?,
    })
}

/// Durations as milliseconds, the unit the tables print.
pub fn millis(durations: &[Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// `value / base`, or `None` when either is missing or the base is not a positive number.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => Some(v / b),
        _ => None,
    }
}

/// Envoy CPU microseconds per request from clock ticks spent and requests served.
/// `None` when no request was served.
pub fn cpu_us_per_request(ticks: u64, ticks_per_second: u64, requests: u64) -> Option<f64> {
    if requests == 0 || ticks_per_second == 0 {
        return None;
    }
    Some(ticks as f64 * 1e6 / ticks_per_second as f64 / requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_hundred_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
    }

    #[test]
    fn percentile_single_sample_is_that_sample() {
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 1.0), Some(7.0));
    }

    #[test]
    fn percentile_empty_or_bad_p_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 0.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
    }

    #[test]
    fn summarize_unsorted_sorts_and_drops_nan() {
        let s = summarize(&[3.0, f64::NAN, 1.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.p99, 4.0);
    }

    #[test]
    fn summarize_empty_is_none() {
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratio_zero_base_is_none() {
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn cpu_us_per_request_converts_ticks() {
        // 250 ticks at 100 Hz = 2.5 s over 50 000 requests = 50 µs each.
        assert_eq!(cpu_us_per_request(250, 100, 50_000), Some(50.0));
        assert_eq!(cpu_us_per_request(250, 100, 0), None);
    }

    #[test]
    fn millis_converts_durations() {
        assert_eq!(millis(&[Duration::from_micros(1500)]), vec![1.5]);
    }
}
