//! How many sends an endpoint may have in flight: a fixed cap, or an
//! adaptive limit that finds the endpoint's sustainable concurrency.
//!
//! The adaptive mode is AIMD, per endpoint (in the spirit of Vector's
//! adaptive request concurrency, which shares one limit per sink): while
//! responses come back as fast as the endpoint's usual pace and the limit is
//! in use, it grows by one per round trip; on a sign of overload (429, 503,
//! a timeout, a connection error, or latency well above the usual) it shrinks
//! by a quarter, at most once per round trip so one burst of bad answers
//! counts once.

use std::time::{Duration, Instant};

/// Latency above this multiple of the baseline counts as overload.
const LATENCY_OVERLOAD: f64 = 2.0;
/// Multiplicative decrease.
const DECREASE: f64 = 0.75;
/// Weight of a new sample in the moving averages.
const EWMA: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Concurrency {
    max: usize,
    adaptive: bool,
    limit: f64,
    /// Slow-moving average of latency: what "usual" means for this endpoint.
    baseline: Option<f64>,
    last_decrease: Option<Instant>,
}

/// How one send went, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Ok,
    /// The endpoint failed in a way that suggests load (503, a timeout, a
    /// connection error).
    Overload,
    /// The endpoint asked us to slow down (429, or 503 with Retry-After):
    /// obeyed in fixed mode too, then earned back.
    Throttled,
    /// A failure that says nothing about load (a 400, say).
    Neutral,
}

impl Concurrency {
    pub fn new(max: usize, adaptive: bool) -> Concurrency {
        let max = max.max(1);
        Concurrency {
            max,
            adaptive,
            // Start low and earn the rest: a new endpoint is not flooded.
            limit: if adaptive {
                max.min(4) as f64
            } else {
                max as f64
            },
            baseline: None,
            last_decrease: None,
        }
    }

    /// Sends allowed in flight now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(1, self.max)
    }

    /// Feed back one finished send. `in_flight` is the count before it ended.
    pub fn record(&mut self, signal: Signal, latency: Duration, in_flight: usize, now: Instant) {
        if !self.adaptive {
            // A fixed cap still yields to a receiver that asks for less, and
            // grows back to the cap, one step per round trip, once it stops.
            match signal {
                Signal::Throttled => self.decrease(latency.as_secs_f64(), now),
                Signal::Ok if self.limit < self.max as f64 => {
                    self.limit = (self.limit + 1.0 / self.limit).min(self.max as f64);
                }
                _ => {}
            }
            return;
        }
        let secs = latency.as_secs_f64();
        let baseline = *self.baseline.get_or_insert(secs);
        let slow = secs > baseline * LATENCY_OVERLOAD && secs > 0.001;
        match signal {
            Signal::Overload | Signal::Throttled => self.decrease(secs, now),
            Signal::Ok if slow => self.decrease(secs, now),
            Signal::Ok => {
                self.baseline = Some(baseline + EWMA * (secs - baseline));
                // Grow only when the limit is what holds sends back.
                if in_flight + 1 >= self.limit() {
                    self.limit = (self.limit + 1.0 / self.limit).min(self.max as f64);
                }
            }
            Signal::Neutral => {}
        }
    }

    fn decrease(&mut self, latency: f64, now: Instant) {
        let rtt = Duration::from_secs_f64(self.baseline.unwrap_or(latency).max(0.001));
        if self
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < rtt)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.limit = (self.limit * DECREASE).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(10);

    #[test]
    fn fixed_mode_ignores_failures_but_yields_to_throttling() {
        let mut c = Concurrency::new(32, false);
        let mut t = Instant::now();
        c.record(Signal::Overload, FAST, 32, t);
        assert_eq!(c.limit(), 32, "failures are the breaker's business");
        c.record(Signal::Throttled, FAST, 32, t);
        assert_eq!(c.limit(), 24, "a 429 lowers even a fixed cap");
        for _ in 0..1000 {
            t += FAST;
            c.record(Signal::Ok, FAST, 24, t);
        }
        assert_eq!(c.limit(), 32, "and it grows back to the cap");
    }

    #[test]
    fn grows_while_used_and_healthy_up_to_the_cap() {
        let mut c = Concurrency::new(16, true);
        assert_eq!(c.limit(), 4);
        let mut t = Instant::now();
        for _ in 0..2000 {
            t += FAST;
            let used = c.limit();
            c.record(Signal::Ok, FAST, used, t);
        }
        assert_eq!(c.limit(), 16);
    }

    #[test]
    fn does_not_grow_when_the_limit_is_not_in_use() {
        let mut c = Concurrency::new(16, true);
        let t = Instant::now();
        for _ in 0..500 {
            c.record(Signal::Ok, FAST, 0, t);
        }
        assert_eq!(c.limit(), 4);
    }

    #[test]
    fn shrinks_on_overload_once_per_round_trip() {
        let mut c = Concurrency::new(64, true);
        let mut t = Instant::now();
        for _ in 0..5000 {
            t += FAST;
            let used = c.limit();
            c.record(Signal::Ok, FAST, used, t);
        }
        assert_eq!(c.limit(), 64);
        // A burst of 503s within one round trip: one decrease.
        for _ in 0..10 {
            c.record(Signal::Overload, FAST, 64, t);
        }
        assert_eq!(c.limit(), 48);
        // Sustained overload keeps shrinking, down to one.
        for _ in 0..100 {
            t += Duration::from_millis(20);
            c.record(Signal::Overload, FAST, 1, t);
        }
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn latency_far_above_the_usual_counts_as_overload() {
        let mut c = Concurrency::new(64, true);
        let mut t = Instant::now();
        for _ in 0..5000 {
            t += FAST;
            let used = c.limit();
            c.record(Signal::Ok, FAST, used, t);
        }
        t += Duration::from_secs(1);
        c.record(Signal::Ok, Duration::from_millis(200), 64, t);
        assert!(c.limit() < 64);
    }
}
