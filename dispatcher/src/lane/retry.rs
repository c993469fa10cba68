//! How long to wait between attempts.
//!
//! Exponential backoff with full jitter (a random wait between zero and the
//! exponential bound) spreads the retries of many deliveries that failed
//! together, so a recovering endpoint is not hit by a synchronized wave.
//! A receiver's `Retry-After` is a floor, clamped so that one answer cannot
//! hold an in-flight slot for hours.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Bound of the first wait; doubles with each further attempt.
    pub base: Duration,
    /// Largest exponential bound.
    pub max_backoff: Duration,
    /// Largest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, base: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base,
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }

    /// The wait before attempt number `next_attempt` (2 for the first retry).
    pub fn wait_before(&self, next_attempt: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(20);
        let bound = self
            .base
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let jittered = Duration::from_nanos(rand::rng().random_range(0..=bound.as_nanos() as u64));
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_within_the_exponential_bound() {
        let p = RetryPolicy::new(5, Duration::from_millis(100));
        for _ in 0..200 {
            assert!(p.wait_before(2, None) <= Duration::from_millis(100));
            assert!(p.wait_before(3, None) <= Duration::from_millis(200));
            assert!(p.wait_before(4, None) <= Duration::from_millis(400));
            assert!(p.wait_before(40, None) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let p = RetryPolicy::new(5, Duration::from_secs(1));
        let waits: std::collections::HashSet<_> = (0..50).map(|_| p.wait_before(3, None)).collect();
        assert!(waits.len() > 40, "full jitter should rarely repeat a wait");
    }

    #[test]
    fn retry_after_is_a_clamped_floor() {
        let p = RetryPolicy::new(5, Duration::from_millis(10));
        for _ in 0..50 {
            assert!(p.wait_before(2, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
        assert_eq!(
            p.wait_before(2, Some(Duration::from_secs(86_400))),
            Duration::from_secs(300)
        );
    }
}
