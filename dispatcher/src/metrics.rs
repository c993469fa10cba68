//! Prometheus metrics: one registry per dispatcher, documented in
//! `docs/metrics.md`.
//!
//! Per-endpoint series use the configured endpoint id as label, so their
//! number is bounded by the config, never by traffic. Hot paths hold resolved
//! children ([`EndpointMetrics`]) instead of looking labels up per event.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_invalid: IntCounterVec,
    pub events_routed: IntCounterVec,
    pub events_unrouted: IntCounterVec,
    pub events_in_flight: IntGauge,
    pub source_paused: IntGauge,
    pub deliveries: IntCounterVec,
    pub attempts: IntCounterVec,
    pub attempt_duration: HistogramVec,
    pub event_age: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub dead_letter_errors: IntCounter,
    pub committed_offset: IntGaugeVec,
    pub commits: IntCounterVec,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub build_info: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        // 1 ms .. ~65 s: webhook latencies span local sinks to the 10 s timeout.
        let latency = exponential_buckets(0.001, 2.0, 17).expect("valid buckets");
        // 1 ms .. ~4.7 h: an event can wait through long retries.
        let age = exponential_buckets(0.001, 2.0, 25).expect("valid buckets");
        let m = Metrics {
            events_consumed: counter(
                &r,
                "dispatcher_events_consumed_total",
                "Records read from the source topics.",
                &["topic"],
            ),
            events_invalid: counter(
                &r,
                "dispatcher_events_invalid_total",
                "Records that could not be decoded and went to the dead-letter topic.",
                &["topic", "reason"],
            ),
            events_routed: counter(
                &r,
                "dispatcher_events_routed_total",
                "Events that matched at least one endpoint.",
                &["topic"],
            ),
            events_unrouted: counter(
                &r,
                "dispatcher_events_unrouted_total",
                "Valid events that no endpoint subscribes to.",
                &["topic"],
            ),
            events_in_flight: gauge(
                &r,
                "dispatcher_events_in_flight",
                "Events read whose deliveries are not all final yet.",
            ),
            source_paused: gauge(
                &r,
                "dispatcher_source_paused",
                "1 while the consumer is paused by back-pressure.",
            ),
            deliveries: counter(
                &r,
                "dispatcher_deliveries_total",
                "Deliveries that reached a final outcome (delivered, dead_lettered).",
                &["endpoint", "transport", "outcome"],
            ),
            attempts: counter(
                &r,
                "dispatcher_delivery_attempts_total",
                "Send attempts by result (delivered, retry, permanent).",
                &["endpoint", "transport", "result"],
            ),
            attempt_duration: histogram(
                &r,
                "dispatcher_delivery_attempt_duration_seconds",
                "Time of one send attempt, from request to classified response.",
                latency,
                &["endpoint", "transport"],
            ),
            event_age: histogram(
                &r,
                "dispatcher_event_age_seconds",
                "Event timestamp to successful delivery (end-to-end age).",
                age,
                &["transport"],
            ),
            queue_depth: gauge_vec(
                &r,
                "dispatcher_endpoint_queue_depth",
                "Deliveries waiting in an endpoint's queue.",
                &["endpoint"],
            ),
            in_flight: gauge_vec(
                &r,
                "dispatcher_endpoint_in_flight",
                "Deliveries being sent (or waiting to retry) for an endpoint.",
                &["endpoint"],
            ),
            dead_letters: counter(
                &r,
                "dispatcher_dead_letters_total",
                "Records written to the dead-letter topic, by stage (decode, delivery) and reason.",
                &["stage", "reason"],
            ),
            dead_letter_errors: IntCounter::new(
                "dispatcher_dead_letter_write_errors_total",
                "Failed writes to the dead-letter topic (each is retried until it succeeds).",
            )
            .expect("static metric definition"),
            committed_offset: gauge_vec(
                &r,
                "dispatcher_committed_offset",
                "Last offset this consumer committed for a partition (the next record to read). Periodic commits are asynchronous: this is the position sent to the broker.",
                &["topic", "partition"],
            ),
            commits: counter(
                &r,
                "dispatcher_offset_commits_total",
                "Offset commits by result (ok, error).",
                &["result"],
            ),
            rebalances: counter(
                &r,
                "dispatcher_rebalances_total",
                "Consumer group rebalance events (assign, revoke, error).",
                &["kind"],
            ),
            assigned_partitions: gauge(
                &r,
                "dispatcher_assigned_partitions",
                "Partitions assigned to this consumer.",
            ),
            build_info: gauge_vec(
                &r,
                "dispatcher_build_info",
                "Build information; always 1.",
                &["version"],
            ),
            registry: r,
        };
        m.registry
            .register(Box::new(m.dead_letter_errors.clone()))
            .expect("metric registered once");
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Resolved per-endpoint handles, so deliveries touch no label maps.
    pub fn endpoint(&self, endpoint: &str, transport: &str) -> EndpointMetrics {
        EndpointMetrics {
            delivered: self
                .deliveries
                .with_label_values(&[endpoint, transport, "delivered"]),
            dead_lettered: self.deliveries.with_label_values(&[
                endpoint,
                transport,
                "dead_lettered",
            ]),
            attempt_delivered: self
                .attempts
                .with_label_values(&[endpoint, transport, "delivered"]),
            attempt_retry: self
                .attempts
                .with_label_values(&[endpoint, transport, "retry"]),
            attempt_permanent: self
                .attempts
                .with_label_values(&[endpoint, transport, "permanent"]),
            attempt_duration: self
                .attempt_duration
                .with_label_values(&[endpoint, transport]),
            event_age: self.event_age.with_label_values(&[transport]),
            queue_depth: self.queue_depth.with_label_values(&[endpoint]),
            in_flight: self.in_flight.with_label_values(&[endpoint]),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# failed to encode metrics: {e}\n"))
    }
}

#[derive(Clone)]
pub struct EndpointMetrics {
    pub delivered: IntCounter,
    pub dead_lettered: IntCounter,
    pub attempt_delivered: IntCounter,
    pub attempt_retry: IntCounter,
    pub attempt_permanent: IntCounter,
    pub attempt_duration: Histogram,
    pub event_age: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
}
