//! One endpoint's numbers: plain atomics owned by its lane, not series in
//! the registry.
//!
//! A registered series costs its label strings and a map entry for as long
//! as it exists, and every one of them is in every scrape. At 100,000
//! endpoints that was ~50 series each, millions per replica. Here an
//! endpoint's counters are a few hundred bytes of atomics, allocated by
//! its first count (see [`LazyCounters`]); which of them
//! become series, and which are only summed into their tenant's, is decided
//! at scrape time by [`super::table`]. The lane's hot path is the same
//! `fetch_add` a registered counter does.

use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use prometheus::{Histogram, IntCounter};

use super::{BREAKER_STATES, PARK_REASONS};

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge in seconds (an age), stored as the bits of an `f64`.
#[derive(Debug, Default)]
pub struct SecondsGauge(AtomicU64);

impl SecondsGauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Upper bounds of [`Latency`]: 1 ms doubling to ~65 s, as webhook answers
/// span local sinks to the 10 s timeout.
pub const LATENCY_BOUNDS: [f64; 17] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768, 65.536,
];

/// A histogram of answer times with the fixed `LATENCY_BOUNDS`. Buckets
/// hold their own counts (the scrape accumulates them) plus one past the
/// last bound, so the total is their sum and never disagrees with them.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Saturating float-to-int: a negative or NaN time counts as 0.
        let nanos = (seconds * 1e9) as u64;
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts at each bound, then the total and the sum in
    /// seconds.
    pub fn snapshot(&self) -> ([u64; LATENCY_BOUNDS.len()], u64, f64) {
        let mut cumulative = [0; LATENCY_BOUNDS.len()];
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            if let Some(c) = cumulative.get_mut(i) {
                *c = total;
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, total, sum)
    }
}

/// Everything counted for one endpoint. Field names match the series they
/// become (see `docs/metrics.md`).
#[derive(Debug, Default)]
pub struct EndpointCounters {
    // dispatcher_deliveries_total, by outcome
    pub delivered: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
    pub parked: Counter,
    pub deduplicated: Counter,
    // dispatcher_delivery_attempts_total, by result
    pub attempt_delivered: Counter,
    pub attempt_retry: Counter,
    pub attempt_permanent: Counter,
    pub attempt_duration: Latency,
    /// dispatcher_parked_total, in [`PARK_REASONS`] order.
    pub parked_by_reason: [Counter; PARK_REASONS.len()],
    /// dispatcher_endpoint_breaker_transitions_total, in [`BREAKER_STATES`]
    /// order.
    pub breaker_transitions: [Counter; BREAKER_STATES.len()],
    pub rate_limit_waits: Counter,
    pub spilled: Counter,
    pub backlog_drained: Counter,
    pub backlog_lost: Counter,
    pub throttled: Counter,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub breaker_state: Gauge,
    pub paused: Gauge,
    pub disabled: Gauge,
    pub backlog: Gauge,
    pub spilling: Gauge,
    pub backlog_age: SecondsGauge,
    /// An ordered endpoint's keys whose head waits for a retry.
    pub blocked_keys: Gauge,
    /// When the longest blocked of them started waiting (Unix ms; 0: none),
    /// so that a scrape reads its age as of the scrape.
    pub blocked_since_ms: Gauge,
}

impl EndpointCounters {
    /// The counter of one `reason` of `dispatcher_parked_total`; `None` for
    /// a reason a running dispatcher does not write (`replay`).
    pub fn parked_for(&self, reason: &str) -> Option<&Counter> {
        let i = PARK_REASONS.iter().position(|r| *r == reason)?;
        self.parked_by_reason.get(i)
    }

    /// Count a breaker transition into `to` (a [`BREAKER_STATES`] name).
    pub fn breaker_transition(&self, to: &str) {
        if let Some(i) = BREAKER_STATES.iter().position(|s| *s == to) {
            self.breaker_transitions[i].inc();
        }
    }

    /// `dispatcher_deliveries_total` of one `outcome` (0 for an unknown one).
    pub fn outcome(&self, outcome: &str) -> u64 {
        super::DELIVERY_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.outcomes()[i])
    }

    /// `dispatcher_delivery_attempts_total` of one `result`.
    pub fn result(&self, result: &str) -> u64 {
        super::ATTEMPT_RESULTS
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.results()[i])
    }

    /// `dispatcher_parked_total` of one `reason`.
    pub fn parked_count(&self, reason: &str) -> u64 {
        self.parked_for(reason).map_or(0, Counter::get)
    }

    /// `dispatcher_endpoint_breaker_transitions_total` into `to`.
    pub fn transitions_to(&self, to: &str) -> u64 {
        BREAKER_STATES
            .iter()
            .position(|s| *s == to)
            .map_or(0, |i| self.breaker_transitions[i].get())
    }

    /// Deliveries by outcome, in [`super::DELIVERY_OUTCOMES`] order.
    pub fn outcomes(&self) -> [u64; 5] {
        [
            self.delivered.get(),
            self.dead_lettered.get(),
            self.retried.get(),
            self.parked.get(),
            self.deduplicated.get(),
        ]
    }

    /// Attempts by result, in [`super::ATTEMPT_RESULTS`] order.
    pub fn results(&self) -> [u64; 3] {
        [
            self.attempt_delivered.get(),
            self.attempt_retry.get(),
            self.attempt_permanent.get(),
        ]
    }

    /// Something is wrong or lagging right now: the breaker is not closed,
    /// the endpoint is paused or disabled, or it has a backlog in Kafka.
    pub fn unwell(&self) -> bool {
        self.breaker_state.get() != 0
            || self.paused.get() != 0
            || self.disabled.get() != 0
            || self.spilling.get() != 0
            || self.backlog.get() > 0
    }
}

/// One endpoint's numbers, allocated when it first counts something: an
/// endpoint that has done nothing since start-up reads as zeros from a
/// shared instance ([`LazyCounters::peek`], what a scrape uses), so
/// 100,000 idle endpoints cost a few dozen bytes each here instead of
/// ~400. Everything else (`Deref`, [`EndpointMetrics`]) allocates them
/// first.
#[derive(Debug, Default)]
pub struct LazyCounters {
    /// Kept outside, as it is set when the endpoint is added, before any
    /// work:
    /// `dispatcher_endpoint_concurrency_limit`.
    pub concurrency_limit: Gauge,
    /// The endpoint is ordered per key: it has series of its blocked keys.
    pub ordered: std::sync::atomic::AtomicBool,
    counters: OnceLock<Box<EndpointCounters>>,
}

/// What an endpoint that never counted anything reads.
static ZERO: LazyLock<EndpointCounters> = LazyLock::new(EndpointCounters::default);

impl LazyCounters {
    /// The counters, allocated now if they were not.
    pub fn touch(&self) -> &EndpointCounters {
        self.counters.get_or_init(Box::default)
    }

    /// Whether the counters exist: the endpoint counted something, or
    /// something read them through `Deref`.
    pub fn allocated(&self) -> bool {
        self.counters.get().is_some()
    }

    /// The counters to read, without allocating them: the shared zeros
    /// while nothing was counted. Only for reading: a write through it
    /// would change what every such endpoint reads.
    pub fn peek(&self) -> &EndpointCounters {
        self.counters.get().map_or(&*ZERO, |c| c)
    }
}

impl Deref for LazyCounters {
    type Target = EndpointCounters;

    fn deref(&self) -> &EndpointCounters {
        self.touch()
    }
}

/// A lane's handle on its endpoint's numbers, and on the replica-wide
/// series it also feeds (by transport, bounded by the transports).
#[derive(Clone)]
pub struct EndpointMetrics {
    counters: Arc<LazyCounters>,
    pub event_age: Histogram,
    pub dispatch_latency: Histogram,
    pub spill_write_errors: IntCounter,
}

impl EndpointMetrics {
    pub(super) fn new(
        counters: Arc<LazyCounters>,
        event_age: Histogram,
        dispatch_latency: Histogram,
        spill_write_errors: IntCounter,
    ) -> EndpointMetrics {
        EndpointMetrics {
            counters,
            event_age,
            dispatch_latency,
            spill_write_errors,
        }
    }
}

impl EndpointMetrics {
    pub fn concurrency_limit(&self) -> &Gauge {
        &self.counters.concurrency_limit
    }

    /// Whether the endpoint is ordered per key (set when it is added or
    /// changed).
    pub fn set_ordered(&self, ordered: bool) {
        self.counters.ordered.store(ordered, Ordering::Relaxed);
    }

    /// Whether the endpoint is ordered per key, as last set. Kept here, with
    /// the series it decides, rather than in the lane's core, which has no
    /// room to spare at 100,000 endpoints.
    pub fn ordered(&self) -> bool {
        self.counters.ordered.load(Ordering::Relaxed)
    }

    /// The counters to read, without allocating them (see
    /// [`LazyCounters::peek`]).
    pub fn peek(&self) -> &EndpointCounters {
        self.counters.peek()
    }
}

/// Writes allocate the counters (see [`LazyCounters`]).
impl Deref for EndpointMetrics {
    type Target = EndpointCounters;

    fn deref(&self) -> &EndpointCounters {
        self.counters.touch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_and_total_agrees() {
        let l = Latency::default();
        for s in [0.0005, 0.001, 0.003, 0.5, 100.0] {
            l.observe(s);
        }
        let (cumulative, total, sum) = l.snapshot();
        assert_eq!(
            cumulative[0], 2,
            "0.5 ms and 1 ms are within the 1 ms bound"
        );
        assert_eq!(cumulative[2], 3, "3 ms is within 4 ms");
        assert_eq!(cumulative[9], 4, "0.5 s is within 0.512 s");
        assert_eq!(cumulative[16], 4, "100 s is past the last bound");
        assert_eq!(total, 5, "the total counts the one past every bound");
        assert!((sum - 100.5045).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_negative_or_nan_time_counts_without_breaking_the_sum() {
        let l = Latency::default();
        l.observe(-1.0);
        l.observe(f64::NAN);
        let (_, total, sum) = l.snapshot();
        assert_eq!(total, 2);
        assert_eq!(sum, 0.0);
    }

    #[test]
    fn counters_are_allocated_by_the_first_write_not_by_reads() {
        let lazy = Arc::new(LazyCounters::default());
        lazy.concurrency_limit.set(8);
        assert_eq!(lazy.peek().delivered.get(), 0);
        assert!(!lazy.peek().unwell());
        assert!(!lazy.allocated(), "a read allocated them");
        let registry = prometheus::Registry::new();
        let histogram = || {
            let h = Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
            registry.register(Box::new(h.clone())).ok();
            h
        };
        let handle = EndpointMetrics::new(
            lazy.clone(),
            histogram(),
            histogram(),
            IntCounter::new("c", "c").unwrap(),
        );
        assert_eq!(handle.concurrency_limit().get(), 8);
        assert!(!lazy.allocated());
        handle.delivered.inc();
        assert!(lazy.allocated());
        assert_eq!(lazy.peek().delivered.get(), 1);
        // The shared zeros are untouched by it.
        assert_eq!(LazyCounters::default().peek().delivered.get(), 0);
    }

    #[test]
    fn unknown_reasons_and_states_are_ignored() {
        let c = EndpointCounters::default();
        assert!(c.parked_for("replay").is_none());
        c.parked_for("retry").unwrap().inc();
        assert_eq!(c.parked_by_reason[0].get(), 1);
        c.breaker_transition("sideways");
        c.breaker_transition("open");
        assert_eq!(
            c.breaker_transitions.iter().map(Counter::get).sum::<u64>(),
            1
        );
    }
}
