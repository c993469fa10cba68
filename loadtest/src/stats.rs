//! Latency histograms and their percentiles, in one unit everywhere:
//! histograms hold microseconds, reports show milliseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value a histogram holds (one hour, in microseconds); larger
/// values are recorded as this.
const MAX_US: u64 = 3_600_000_000;

/// An empty histogram of microseconds with 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// A lighter one for each receiver: 2 significant figures (within 1 %),
/// an eighth of the memory (27 KB), so that ten thousand receivers can
/// keep two each.
pub fn new_endpoint_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("constant histogram bounds are valid")
}

/// The percentiles a report shows, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// `None` for an empty histogram: no figure is better than a zero.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        h.saturating_record(u64::MAX);
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 1001);
        assert!((p.p50_ms - 5.0).abs() < 0.05, "{p:?}");
        assert!((p.max_ms - 3_600_000.0).abs() < 3_600.0, "{p:?}");
        assert!(Percentiles::of(&new_histogram()).is_none());
    }
}
