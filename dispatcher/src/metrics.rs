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
use prometheus::{Gauge, GaugeVec};

use crate::config::Config;
use crate::park::Tiers;

/// Every `outcome` of `dispatcher_deliveries_total`.
pub const DELIVERY_OUTCOMES: &[&str] = &[
    "delivered",
    "dead_lettered",
    "retried",
    "parked",
    "deduplicated",
];
/// Every `result` of `dispatcher_delivery_attempts_total`.
pub const ATTEMPT_RESULTS: &[&str] = &["delivered", "retry", "permanent"];
/// Every `reason` of `dispatcher_parked_total` that a running dispatcher
/// writes (`replay` is the replay command's, in its own process).
pub const PARK_REASONS: &[&str] = &["retry", "throttled", "breaker_open", "paused", "not_due"];
/// Every `to` of `dispatcher_endpoint_breaker_transitions_total`.
pub const BREAKER_STATES: &[&str] = &["open", "half_open", "closed"];
/// Every `reason` of `dispatcher_dead_letters_total{stage="delivery"}`.
pub const DELIVERY_DEAD_LETTER_REASONS: &[&str] = &[
    "retries_exhausted",
    "expired",
    "permanent_failure",
    "endpoint_gone",
    "endpoint_disabled",
    "rejected_payload",
    "unparkable",
];
/// Every `reason` of `dispatcher_dead_letters_total{stage="park"}`.
pub const PARK_DEAD_LETTER_REASONS: &[&str] = &["damaged", "unknown_endpoint"];

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
    pub dispatch_latency: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub dead_letter_errors: IntCounter,
    pub parked: IntCounterVec,
    pub park_write_errors: IntCounter,
    pub parked_held: IntGauge,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub concurrency_limit: IntGaugeVec,
    pub rate_limit_waits: IntCounterVec,
    pub endpoint_paused: IntGaugeVec,
    pub endpoint_disabled: IntGaugeVec,
    pub rate_limit_share: prometheus::Gauge,
    pub committed_offset: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub commits: IntCounterVec,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub build_info: IntGaugeVec,
    pub memory_used: IntGauge,
    pub memory_budget: IntGauge,
    pub partitions_over_cap: IntGauge,
    pub spilled: IntCounterVec,
    pub spill_write_errors: IntCounter,
    pub backlog: IntGaugeVec,
    pub backlog_age: GaugeVec,
    pub backlog_drained: IntCounterVec,
    pub backlog_lost: IntCounterVec,
    pub internal_records_lost: IntCounterVec,
    pub endpoint_spilling: IntGaugeVec,
    pub throttled: IntCounterVec,
    pub store_bad_records: IntCounter,
    pub store_endpoints: IntGauge,
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
                "Records read, from the source topics and the internal topics (retry tiers, spill).",
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
                "Deliveries by outcome: delivered and dead_lettered are final; retried (waiting in memory), parked (waiting in a retry topic) and deduplicated (already delivered, not sent again) are steps.",
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
            dispatch_latency: histogram(
                &r,
                "dispatcher_dispatch_latency_seconds",
                "From this replica reading the record to the delivery's 2xx: the dispatcher's own share of the age.",
                // Edges at the latency targets (20 ms, 100 ms) and the
                // 10 s answer rule, so the quantiles there are exact.
                vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ],
                &["transport"],
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
                "Deliveries waiting in an endpoint's inbox (in memory; a backlog beyond it waits in Kafka).",
                &["endpoint"],
            ),
            in_flight: gauge_vec(
                &r,
                "dispatcher_endpoint_in_flight",
                "Sends in flight to an endpoint.",
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
            parked: counter(
                &r,
                "dispatcher_parked_total",
                "Deliveries written to a retry topic to wait there (retry, throttled, breaker_open, paused, not_due, replay).",
                &["endpoint", "reason"],
            ),
            park_write_errors: IntCounter::new(
                "dispatcher_park_write_errors_total",
                "Failed writes to a retry topic (each is retried until it succeeds).",
            )
            .expect("static metric definition"),
            parked_held: gauge(
                &r,
                "dispatcher_parked_held",
                "Parked deliveries read back and held until due (at most one per retry-topic partition).",
            ),
            breaker_state: gauge_vec(
                &r,
                "dispatcher_endpoint_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["endpoint"],
            ),
            breaker_transitions: counter(
                &r,
                "dispatcher_endpoint_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["endpoint", "to"],
            ),
            concurrency_limit: gauge_vec(
                &r,
                "dispatcher_endpoint_concurrency_limit",
                "Sends an endpoint may have in flight now (max_in_flight, or the adaptive limit).",
                &["endpoint"],
            ),
            rate_limit_waits: counter(
                &r,
                "dispatcher_endpoint_rate_limit_waits_total",
                "Times a send waited for the endpoint's rate limit.",
                &["endpoint"],
            ),
            endpoint_paused: gauge_vec(
                &r,
                "dispatcher_endpoint_paused",
                "1 while an endpoint is paused (its deliveries wait in Kafka).",
                &["endpoint"],
            ),
            endpoint_disabled: gauge_vec(
                &r,
                "dispatcher_endpoint_disabled",
                "1 after an endpoint answered 410 Gone (its deliveries are dead-lettered until resumed).",
                &["endpoint"],
            ),
            rate_limit_share: {
                let g = prometheus::Gauge::new(
                    "dispatcher_rate_limit_share",
                    "This replica's share of every endpoint's rate limit: its share of all the partitions it consumes (source, retry and spill topics).",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            committed_offset: gauge_vec(
                &r,
                "dispatcher_committed_offset",
                "Last offset this consumer committed for a partition (the next record to read), as the broker confirmed it.",
                &["topic", "partition"],
            ),
            consumer_lag: gauge_vec(
                &r,
                "dispatcher_consumer_lag",
                "Records between a partition's end and the group's committed offset (librdkafka statistics, every 5 s). On retry topics this is the parked backlog.",
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
            memory_used: gauge(
                &r,
                "dispatcher_memory_used_bytes",
                "Bytes the memory budget counts now: records and deliveries held in memory, and request bodies in flight.",
            ),
            memory_budget: gauge(
                &r,
                "dispatcher_memory_budget_bytes",
                "pipeline.memory_budget: past it the source pauses.",
            ),
            partitions_over_cap: gauge(
                &r,
                "dispatcher_partitions_over_pending_cap",
                "Partitions paused because more than pipeline.max_pending_per_partition records wait behind one that is not final.",
            ),
            spilled: counter(
                &r,
                "dispatcher_spilled_total",
                "Deliveries written to the spill topic because their endpoint did not keep up (each is written once).",
                &["endpoint"],
            ),
            spill_write_errors: IntCounter::new(
                "dispatcher_spill_write_errors_total",
                "Failed writes to the spill topic (each is retried until it succeeds).",
            )
            .expect("static metric definition"),
            backlog: gauge_vec(
                &r,
                "dispatcher_endpoint_backlog_deliveries",
                "Deliveries of an endpoint waiting in Kafka (spilled, or due retries) for room in its lane, in the partitions this replica owns.",
                &["endpoint"],
            ),
            backlog_age: {
                let g = GaugeVec::new(
                    Opts::new(
                        "dispatcher_endpoint_backlog_oldest_age_seconds",
                        "How long the oldest delivery of an endpoint's backlog in Kafka has waited there.",
                    ),
                    &["endpoint"],
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            backlog_drained: counter(
                &r,
                "dispatcher_backlog_drained_total",
                "Deliveries brought back from an endpoint's backlog in Kafka to its lane.",
                &["endpoint"],
            ),
            internal_records_lost: counter(
                &r,
                "dispatcher_internal_records_lost_total",
                "Records of an internal topic (spill, retry tiers) deleted (retention) before the dispatcher read them: each a lost delivery, of an endpoint it cannot tell.",
                &["topic"],
            ),
            backlog_lost: counter(
                &r,
                "dispatcher_backlog_lost_total",
                "Deliveries of an endpoint's backlog deleted from Kafka (retention) before they came back: lost.",
                &["endpoint"],
            ),
            endpoint_spilling: gauge_vec(
                &r,
                "dispatcher_endpoint_spilling",
                "1 while an endpoint's fresh deliveries go to the spill topic (it did not keep up and its backlog is not drained yet).",
                &["endpoint"],
            ),
            throttled: counter(
                &r,
                "dispatcher_endpoint_throttled_total",
                "Answers asking the dispatcher to slow down (429, or 502/503/504 with Retry-After): the endpoint waits, no attempt is spent, the breaker does not count it.",
                &["endpoint"],
            ),
            store_bad_records: IntCounter::new(
                "dispatcher_endpoint_store_bad_records_total",
                "Records of the endpoints topic that could not be read (skipped; the previous version stays in force).",
            )
            .expect("static metric definition"),
            store_endpoints: gauge(
                &r,
                "dispatcher_endpoint_store_endpoints",
                "Endpoints in the endpoint store, as this replica reads it.",
            ),
            registry: r,
        };
        for c in [
            &m.dead_letter_errors,
            &m.park_write_errors,
            &m.spill_write_errors,
            &m.store_bad_records,
        ] {
            m.registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
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
            retried: self
                .deliveries
                .with_label_values(&[endpoint, transport, "retried"]),
            parked: self
                .deliveries
                .with_label_values(&[endpoint, transport, "parked"]),
            deduplicated: self
                .deliveries
                .with_label_values(&[endpoint, transport, "deduplicated"]),
            breaker_state: self.breaker_state.with_label_values(&[endpoint]),
            breaker_transitions: self.breaker_transitions.clone(),
            concurrency_limit: self.concurrency_limit.with_label_values(&[endpoint]),
            rate_limit_waits: self.rate_limit_waits.with_label_values(&[endpoint]),
            paused: self.endpoint_paused.with_label_values(&[endpoint]),
            disabled: self.endpoint_disabled.with_label_values(&[endpoint]),
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
            dispatch_latency: self.dispatch_latency.with_label_values(&[transport]),
            queue_depth: self.queue_depth.with_label_values(&[endpoint]),
            in_flight: self.in_flight.with_label_values(&[endpoint]),
            spilled: self.spilled.with_label_values(&[endpoint]),
            spill_write_errors: self.spill_write_errors.clone(),
            backlog: self.backlog.with_label_values(&[endpoint]),
            backlog_age: self.backlog_age.with_label_values(&[endpoint]),
            backlog_drained: self.backlog_drained.with_label_values(&[endpoint]),
            backlog_lost: self.backlog_lost.with_label_values(&[endpoint]),
            spilling: self.endpoint_spilling.with_label_values(&[endpoint]),
            throttled: self.throttled.with_label_values(&[endpoint]),
        }
    }

    /// Create every series whose label values the config determines, at
    /// zero: each enabled endpoint's per-endpoint counters with every
    /// outcome and reason, each source topic's event counters with every
    /// decode failure, every dead-letter stage and reason, the commit and
    /// rebalance results.
    ///
    /// A labelled series otherwise appears only when first incremented, and
    /// `rate()` and `increase()` need a sample before the change: the first
    /// dead letter or invalid record of each kind would go unseen by the
    /// dashboards and the alerts. Only creates: values already set stay.
    pub fn init_series(&self, config: &Config) {
        let touch = |vec: &IntCounterVec, labels: &[&str]| {
            vec.with_label_values(labels);
        };
        for ep in config.endpoints.iter().filter(|e| e.enabled) {
            self.init_endpoint_series(&ep.id, &ep.transport);
        }
        let k = &config.kafka;
        for topic in &k.topics {
            touch(&self.events_consumed, &[topic]);
            touch(&self.events_routed, &[topic]);
            touch(&self.events_unrouted, &[topic]);
            for reason in transports::EventError::CODES {
                touch(&self.events_invalid, &[topic, reason]);
            }
        }
        for topic in Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic).internal_topics() {
            touch(&self.events_consumed, &[topic]);
            touch(&self.internal_records_lost, &[topic]);
        }
        for reason in transports::EventError::CODES {
            touch(&self.dead_letters, &["decode", reason]);
        }
        for reason in DELIVERY_DEAD_LETTER_REASONS {
            touch(&self.dead_letters, &["delivery", reason]);
        }
        for reason in PARK_DEAD_LETTER_REASONS {
            touch(&self.dead_letters, &["park", reason]);
        }
        for result in ["ok", "error"] {
            touch(&self.commits, &[result]);
        }
        // Not `assign`: its first increment is the DispatcherNotReady
        // alert's sign that the consumer joined its group.
        for kind in ["revoke", "error"] {
            touch(&self.rebalances, &[kind]);
        }
    }

    /// Create an endpoint's series at zero (see [`Metrics::init_series`]):
    /// at start-up for the file's endpoints, and when one is added later.
    pub fn init_endpoint_series(&self, id: &str, transport: &str) {
        let touch = |vec: &IntCounterVec, labels: &[&str]| {
            vec.with_label_values(labels);
        };
        for outcome in DELIVERY_OUTCOMES {
            touch(&self.deliveries, &[id, transport, outcome]);
        }
        for result in ATTEMPT_RESULTS {
            touch(&self.attempts, &[id, transport, result]);
        }
        for reason in PARK_REASONS {
            touch(&self.parked, &[id, reason]);
        }
        for to in BREAKER_STATES {
            touch(&self.breaker_transitions, &[id, to]);
        }
        touch(&self.rate_limit_waits, &[id]);
        touch(&self.spilled, &[id]);
        touch(&self.backlog_drained, &[id]);
        touch(&self.backlog_lost, &[id]);
        touch(&self.throttled, &[id]);
        self.backlog_age.with_label_values(&[id]);
        // Gauges whose zero is the truth until the lane says otherwise.
        for gauge in [
            &self.queue_depth,
            &self.in_flight,
            &self.breaker_state,
            &self.endpoint_paused,
            &self.endpoint_disabled,
            &self.backlog,
            &self.endpoint_spilling,
        ] {
            gauge.with_label_values(&[id]);
        }
        self.attempt_duration.with_label_values(&[id, transport]);
        self.event_age.with_label_values(&[transport]);
        self.dispatch_latency.with_label_values(&[transport]);
    }

    /// Drop a deleted endpoint's series, so endpoints that come and go do
    /// not grow the scrape for ever.
    pub fn forget_endpoint(&self, id: &str, transport: &str) {
        for outcome in DELIVERY_OUTCOMES {
            let _ = self
                .deliveries
                .remove_label_values(&[id, transport, outcome]);
        }
        for result in ATTEMPT_RESULTS {
            let _ = self.attempts.remove_label_values(&[id, transport, result]);
        }
        for reason in PARK_REASONS {
            let _ = self.parked.remove_label_values(&[id, reason]);
        }
        for to in BREAKER_STATES {
            let _ = self.breaker_transitions.remove_label_values(&[id, to]);
        }
        for vec in [
            &self.rate_limit_waits,
            &self.spilled,
            &self.backlog_drained,
            &self.backlog_lost,
            &self.throttled,
        ] {
            let _ = vec.remove_label_values(&[id]);
        }
        for gauge in [
            &self.queue_depth,
            &self.in_flight,
            &self.breaker_state,
            &self.endpoint_paused,
            &self.endpoint_disabled,
            &self.backlog,
            &self.endpoint_spilling,
            &self.concurrency_limit,
        ] {
            let _ = gauge.remove_label_values(&[id]);
        }
        let _ = self.backlog_age.remove_label_values(&[id]);
        let _ = self.attempt_duration.remove_label_values(&[id, transport]);
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
    pub retried: IntCounter,
    pub parked: IntCounter,
    pub deduplicated: IntCounter,
    pub breaker_state: IntGauge,
    pub breaker_transitions: IntCounterVec,
    pub concurrency_limit: IntGauge,
    pub rate_limit_waits: IntCounter,
    pub paused: IntGauge,
    pub disabled: IntGauge,
    pub attempt_delivered: IntCounter,
    pub attempt_retry: IntCounter,
    pub attempt_permanent: IntCounter,
    pub attempt_duration: Histogram,
    pub event_age: Histogram,
    pub dispatch_latency: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub spilled: IntCounter,
    pub spill_write_errors: IntCounter,
    pub backlog: IntGauge,
    pub backlog_age: Gauge,
    pub backlog_drained: IntCounter,
    pub backlog_lost: IntCounter,
    pub spilling: IntGauge,
    pub throttled: IntCounter,
}

#[cfg(test)]
mod series_tests {
    use super::*;

    fn config() -> Config {
        let yaml = r#"
kafka:
  brokers: "127.0.0.1:9092"
  topics: [events, orders]
endpoints:
  - id: acme
    url: "https://hooks.acme.example/in"
    events: ["*"]
  - id: off
    url: "https://hooks.off.example/in"
    events: ["*"]
    enabled: false
"#;
        Config::from_yaml(yaml, &|_| None).expect("valid config")
    }

    fn has(text: &str, series: &str) -> bool {
        text.lines().any(|l| l == format!("{series} 0"))
    }

    #[test]
    fn known_label_sets_are_exported_at_zero() {
        let m = Metrics::new();
        m.init_series(&config());
        let text = m.render();
        for series in [
            r#"dispatcher_deliveries_total{endpoint="acme",outcome="dead_lettered",transport="http"}"#,
            r#"dispatcher_delivery_attempts_total{endpoint="acme",result="permanent",transport="http"}"#,
            r#"dispatcher_parked_total{endpoint="acme",reason="breaker_open"}"#,
            r#"dispatcher_endpoint_breaker_transitions_total{endpoint="acme",to="open"}"#,
            r#"dispatcher_events_invalid_total{reason="not_json",topic="orders"}"#,
            r#"dispatcher_events_consumed_total{topic="dispatcher.retry.4h"}"#,
            r#"dispatcher_dead_letters_total{reason="invalid_field",stage="decode"}"#,
            r#"dispatcher_dead_letters_total{reason="retries_exhausted",stage="delivery"}"#,
            r#"dispatcher_dead_letters_total{reason="unknown_endpoint",stage="park"}"#,
            r#"dispatcher_offset_commits_total{result="error"}"#,
            r#"dispatcher_rebalances_total{kind="revoke"}"#,
        ] {
            assert!(has(&text, series), "{series} not at 0 in:\n{text}");
        }
        // A disabled endpoint has no series; `assign` appears only once the
        // consumer joined its group (DispatcherNotReady relies on it).
        assert!(!text.contains(r#"endpoint="off""#), "{text}");
        assert!(!text.contains(r#"kind="assign""#), "{text}");
    }

    #[test]
    fn values_already_there_are_kept() {
        let m = Metrics::new();
        let ep = m.endpoint("acme", "http");
        ep.paused.set(1);
        ep.dead_lettered.inc();
        m.init_series(&config());
        assert_eq!(ep.paused.get(), 1);
        assert_eq!(ep.dead_lettered.get(), 1);
    }
}
