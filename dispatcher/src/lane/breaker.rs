//! One endpoint's circuit breaker: closed, open, half-open.
//!
//! Closed, it counts outcomes over a sliding time window (in ten buckets, so
//! old failures age out smoothly). When at least `min_requests` outcomes
//! were seen and the failure ratio reaches `failure_ratio`, it opens: no
//! sends for `open_for`, and the lane accepts nothing meanwhile (its work
//! waits in Kafka, see [`crate::lane`]). Then it half-opens:
//! up to `half_open_probes` sends go through; if that many succeed it closes,
//! any failure opens it again.
//!
//! Only transient failures count (timeouts, connection errors, 408, 5xx
//! without Retry-After): a 400 says the payload was refused, not that the
//! endpoint is unwell, and a 429 (or a 503 with Retry-After) is the receiver
//! asking us to slow down, which the lane does instead (see
//! [`Breaker::record_neutral`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failure_ratio: f64,
    pub min_requests: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: 0.7,
            min_requests: 10,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

impl State {
    /// The value of the `dispatcher_endpoint_breaker_state` gauge.
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// What the breaker says about a send about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Not now; try again after this long.
    No(Duration),
}

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct Breaker {
    /// Shared with the lane's settings (and, when alike, other lanes').
    config: Arc<BreakerConfig>,
    state: State,
    /// (successes, failures) per bucket, [`Breaker::bucket_span`] each,
    /// ring-indexed.
    buckets: [(u32, u32); BUCKETS],
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
}

impl Breaker {
    pub fn new(config: impl Into<Arc<BreakerConfig>>, now: Instant) -> Breaker {
        let config = config.into();
        Breaker {
            config,
            state: State::Closed,
            buckets: [(0, 0); BUCKETS],
            head_start: now,
            head: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Would a send be admitted now? Changes nothing: for checks made before
    /// the send is sure to start.
    pub fn peek(&self, now: Instant) -> Admit {
        match self.state {
            State::Open { until } if now < until => Admit::No(until - now),
            _ => Admit::Yes,
        }
    }

    /// May a send start now? A `Yes` in half-open state reserves a probe,
    /// which the matching `record` call gives back.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Yes,
            State::Open { until } if now < until => Admit::No(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                };
                Admit::Yes
            }
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight + succeeded < self.config.half_open_probes {
                    self.state = State::HalfOpen {
                        in_flight: in_flight + 1,
                        succeeded,
                    };
                    Admit::Yes
                } else {
                    // Probes are out; their answers decide. Check back soon.
                    Admit::No(self.config.open_for.min(Duration::from_secs(1)))
                }
            }
        }
    }

    /// Record a finished send. Returns the new state when it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<State> {
        let before = self.state;
        match self.state {
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if !success {
                    self.open(now);
                } else if succeeded + 1 >= self.config.half_open_probes {
                    self.close(now);
                } else {
                    self.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        succeeded: succeeded + 1,
                    };
                }
            }
            // A late answer from before the breaker opened changes nothing.
            State::Open { .. } => {}
            State::Closed => {
                self.advance(now);
                let b = &mut self.buckets[self.head];
                if success {
                    b.0 += 1;
                } else {
                    b.1 += 1;
                }
                let (ok, failed) = self
                    .buckets
                    .iter()
                    .fold((0u32, 0u32), |acc, b| (acc.0 + b.0, acc.1 + b.1));
                let total = ok + failed;
                if total >= self.config.min_requests
                    && failed as f64 >= self.config.failure_ratio * total as f64
                {
                    self.open(now);
                }
            }
        }
        (self.state.gauge() != before.gauge()).then_some(self.state)
    }

    /// A send finished with an answer that says nothing about health (the
    /// receiver asked us to slow down: 429, or 503 with Retry-After). It
    /// neither counts toward opening nor closes a half-open breaker; a
    /// half-open probe slot is given back, so another probe can go.
    pub fn record_neutral(&mut self) {
        if let State::HalfOpen {
            in_flight,
            succeeded,
        } = self.state
        {
            self.state = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                succeeded,
            };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.config.open_for,
        };
    }

    fn close(&mut self, now: Instant) {
        self.state = State::Closed;
        self.buckets = [(0, 0); BUCKETS];
        self.head_start = now;
    }

    /// How long one bucket lasts.
    fn bucket_span(&self) -> Duration {
        (self.config.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    /// Move the ring forward to the bucket that contains `now`, clearing
    /// the buckets that fell out of the window.
    fn advance(&mut self, now: Instant) {
        let span = self.bucket_span();
        let mut steps = 0;
        while now.saturating_duration_since(self.head_start) >= span && steps < BUCKETS {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = (0, 0);
            self.head_start += span;
            steps += 1;
        }
        if now.saturating_duration_since(self.head_start) >= span {
            // Idle for more than a whole window: start over.
            self.head_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_on_failure_ratio_after_min_requests() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(
            b.record(false, t0),
            None,
            "3 requests are under min_requests"
        );
        assert!(
            matches!(b.record(true, t0), Some(State::Open { .. })),
            "3 of 4 failed"
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1)),
            Admit::No(Duration::from_secs(4))
        );
    }

    #[test]
    fn half_opens_after_the_wait_and_closes_on_probe_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..4 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(later), Admit::Yes);
        assert!(matches!(b.state(), State::HalfOpen { .. }));
        assert_eq!(b.admit(later), Admit::Yes);
        assert!(
            matches!(b.admit(later), Admit::No(_)),
            "only two probes at a time"
        );
        assert_eq!(b.record(true, later), None);
        assert_eq!(b.record(true, later), Some(State::Closed));
        assert_eq!(b.admit(later), Admit::Yes);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..4 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(later), Admit::Yes);
        assert!(
            matches!(b.record(false, later), Some(State::Open { until }) if until == later + Duration::from_secs(5))
        );
    }

    #[test]
    fn throttle_answers_never_open_it_and_give_probes_back() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..100 {
            b.record_neutral();
        }
        assert_eq!(b.state(), State::Closed, "429s are not failures");
        for _ in 0..4 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(later), Admit::Yes);
        assert_eq!(b.admit(later), Admit::Yes);
        assert!(matches!(b.admit(later), Admit::No(_)));
        // A probe answered 429: its slot comes back, the breaker stays half-open.
        b.record_neutral();
        assert!(matches!(b.state(), State::HalfOpen { .. }));
        assert_eq!(b.admit(later), Admit::Yes);
        assert_eq!(b.record(true, later), None);
        assert_eq!(b.record(true, later), Some(State::Closed));
    }

    #[test]
    fn old_failures_age_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..3 {
            b.record(false, t0);
        }
        // Eleven seconds later those three are outside the 10 s window.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.record(false, later), None);
        assert_eq!(b.record(true, later), None);
        assert_eq!(b.record(true, later), None);
        assert_eq!(b.state(), State::Closed);
    }
}
