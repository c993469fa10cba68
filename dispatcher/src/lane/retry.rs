//! The retry schedule: how long to wait before each further attempt.
//!
//! `retry.schedule[n]` bounds the wait after the (n+1)-th failed attempt;
//! the wait itself is drawn uniformly below that bound (full jitter), so
//! deliveries that failed together do not come back together and a
//! recovering endpoint sees a smooth return instead of a wave. A receiver's
//! `Retry-After` is a floor, clamped to [`MAX_RETRY_AFTER`]. When the schedule
//! is spent, or the delivery is older than `retry.max_age`, it is final:
//! dead-lettered.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// Longest `Retry-After` honoured: one answer must not park a delivery for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "crate::config::duration_list")]
    pub schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            schedule: [5, 30, 120, 600, 3600, 4 * 3600]
                .map(Duration::from_secs)
                .to_vec(),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryConfig {
    /// The wait before the next attempt, after `attempts` failed ones, or
    /// `None` when the schedule is spent.
    pub fn next_wait(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let bound = *self.schedule.get(attempts.checked_sub(1)? as usize)?;
        let jittered = Duration::from_nanos(rand::rng().random_range(0..=bound.as_nanos() as u64));
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &[u64]) -> RetryConfig {
        RetryConfig {
            schedule: schedule
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn waits_stay_below_each_step_and_the_schedule_ends() {
        let p = policy(&[100, 1000, 10_000]);
        for _ in 0..200 {
            assert!(p.next_wait(1, None).unwrap() <= Duration::from_millis(100));
            assert!(p.next_wait(2, None).unwrap() <= Duration::from_millis(1000));
            assert!(p.next_wait(3, None).unwrap() <= Duration::from_millis(10_000));
        }
        assert_eq!(p.next_wait(4, None), None, "three retries, then final");
        assert_eq!(p.next_wait(0, None), None);
    }

    #[test]
    fn jitter_spreads_waits() {
        let p = policy(&[1000]);
        let waits: std::collections::HashSet<_> = (0..50).map(|_| p.next_wait(1, None)).collect();
        assert!(waits.len() > 40, "full jitter should rarely repeat a wait");
    }

    #[test]
    fn retry_after_is_a_clamped_floor() {
        let p = policy(&[10]);
        for _ in 0..50 {
            assert!(
                p.next_wait(1, Some(Duration::from_secs(3))).unwrap() >= Duration::from_secs(3)
            );
        }
        assert_eq!(
            p.next_wait(1, Some(Duration::from_secs(10 * 86_400))),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn the_documented_default() {
        let d = RetryConfig::default();
        assert_eq!(d.schedule.len(), 6);
        assert_eq!(d.schedule[5], Duration::from_secs(4 * 3600));
        assert_eq!(d.max_age, Duration::from_secs(86_400));
    }
}
