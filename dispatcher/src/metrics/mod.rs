//! Prometheus metrics: one registry per dispatcher, documented in
//! `docs/metrics.md`.
//!
//! Replica-wide series (by topic, transport, stage) are registered here.
//! Endpoints' numbers are atomics each lane owns (`endpoint.rs`); which of
//! them become series of their own, and the per-tenant sums that stand for
//! the rest, is `table.rs`'s business, decided at scrape time so that the
//! series count stays bounded at any number of endpoints. Hot paths hold
//! their handles and never look a label up per event.

mod endpoint;
mod table;

pub use endpoint::{
    Counter, EndpointCounters, EndpointMetrics, Gauge, Latency, LazyCounters, SecondsGauge,
};
pub use table::EndpointTable;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use serde::Deserialize;

use crate::config::Config;
use crate::park::Tiers;

/// `metrics:` of the config: how many endpoints get series of their own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `auto` or `all` (see [`EndpointSeries`]).
    pub endpoint_series: EndpointSeries,
    /// With `auto`: up to this many endpoints, all have their own series;
    /// past it, at most this many do (marked, then troubled ones).
    pub endpoint_series_max: usize,
    /// How long an endpoint keeps its own series after its last trouble.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            endpoint_series: EndpointSeries::Auto,
            endpoint_series_max: 500,
            linger: Duration::from_secs(600),
        }
    }
}

/// Which endpoints have series of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointSeries {
    /// All while there are few; past `endpoint_series_max`, the marked and
    /// the troubled ones.
    #[default]
    Auto,
    /// Every endpoint, however many (the series grow with the endpoints).
    All,
}

/// `metrics:` of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointDetail {
    /// Its own series when the replica's `metrics.endpoint_series` says so.
    #[default]
    Auto,
    /// Always its own series (within `metrics.endpoint_series_max`).
    Detailed,
}

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
    /// Times the memory budget held the source back (`held`), and times
    /// that lasted long enough to pause the consumer (`paused`).
    pub source_backpressure: IntCounterVec,
    /// Pauses by the memory budget that lasted `spill_after`, by what the
    /// source did (`spilled`, `waited`).
    pub budget_stalls: IntCounterVec,
    pub event_age: HistogramVec,
    pub dispatch_latency: HistogramVec,
    pub dead_letters: IntCounterVec,
    pub dead_letter_errors: IntCounter,
    pub park_write_errors: IntCounter,
    pub parked_held: IntGauge,
    pub rate_limit_share: prometheus::Gauge,
    pub committed_offset: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub commits: IntCounterVec,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub lane_tasks: IntGauge,
    pub lanes_made: IntGauge,
    pub endpoint_changes: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub memory_used: IntGauge,
    pub memory_budget: IntGauge,
    pub partitions_over_cap: IntGauge,
    pub spill_write_errors: IntCounter,
    pub spill_superseded: IntCounter,
    pub internal_records_lost: IntCounterVec,
    pub store_bad_records: IntCounter,
    pub store_endpoints: IntGauge,
    /// Every endpoint's counters, and what of them the scrape shows.
    pub endpoints: Arc<EndpointTable>,
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
                "1 while the memory budget holds the source back: it takes no records, and past half a second its consumer's partitions are paused.",
            ),
            source_backpressure: counter(
                &r,
                "dispatcher_source_backpressure_total",
                "Times the memory budget started holding the source back (action=held), and times that lasted half a second and the consumer's partitions were paused (action=paused).",
                &["action"],
            ),
            budget_stalls: counter(
                &r,
                "dispatcher_budget_stalls_total",
                "Times the memory budget kept the source paused for pipeline.spill_after, by outcome: spilled (the lanes holding fresh deliveries spilled them), waited (most lanes were behind alike; back-pressure), nothing_fresh (no lane held fresh deliveries).",
                &["outcome"],
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
            endpoint_changes: counter(
                &r,
                "dispatcher_endpoint_changes_total",
                "Endpoint changes this replica applied, by kind (added, updated, deleted).",
                &["kind"],
            ),
            lane_tasks: gauge(
                &r,
                "dispatcher_lane_tasks",
                "Endpoint lanes running a task now: those with work; an idle endpoint holds none.",
            ),
            lanes_made: gauge(
                &r,
                "dispatcher_lanes_made",
                "Endpoint lanes made and alive: those of endpoints that had work (or were deleted) since the replica started; the others hold only their settings.",
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
            spill_write_errors: IntCounter::new(
                "dispatcher_spill_write_errors_total",
                "Failed writes to the spill topic (each is retried until it succeeds).",
            )
            .expect("static metric definition"),
            spill_superseded: IntCounter::new(
                "dispatcher_spill_superseded_total",
                "Spilled deliveries of ordered endpoints that came back after a later assignment of their source partition read their record again and routed it to the endpoint again: left final, the copy read again is delivered in its place, in order.",
            )
            .expect("static metric definition"),
            internal_records_lost: counter(
                &r,
                "dispatcher_internal_records_lost_total",
                "Records of an internal topic (spill, retry tiers) deleted (retention) before the dispatcher read them: each a lost delivery, of an endpoint it cannot tell.",
                &["topic"],
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
            endpoints: Arc::new(EndpointTable::new()),
            registry: r,
        };
        for c in [
            &m.dead_letter_errors,
            &m.park_write_errors,
            &m.spill_write_errors,
            &m.spill_superseded,
            &m.store_bad_records,
        ] {
            m.registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
        m.registry
            .register(Box::new(table::TableCollector(m.endpoints.clone())))
            .expect("metric registered once");
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The handle of endpoint `id`'s lane on its numbers: created at zero
    /// the first time, the same counters on a later call.
    pub fn endpoint(&self, id: &str, transport: &str) -> EndpointMetrics {
        self.endpoint_of(id, transport, None, EndpointDetail::Auto)
    }

    /// [`Metrics::endpoint`] for an endpoint of `tenant`, with its detail.
    pub fn endpoint_of(
        &self,
        id: &str,
        transport: &str,
        tenant: Option<&str>,
        detail: EndpointDetail,
    ) -> EndpointMetrics {
        let counters =
            self.endpoints
                .register(id, transport, tenant, detail == EndpointDetail::Detailed);
        EndpointMetrics::new(
            counters,
            self.event_age.with_label_values(&[transport]),
            self.dispatch_latency.with_label_values(&[transport]),
            self.spill_write_errors.clone(),
        )
    }

    /// An endpoint's tenant, detail or transport changed.
    pub fn endpoint_changed(
        &self,
        id: &str,
        transport: &str,
        tenant: Option<&str>,
        detail: EndpointDetail,
    ) {
        self.endpoints
            .update(id, transport, tenant, detail == EndpointDetail::Detailed);
    }

    /// The counters of endpoint `id`, if it runs here.
    pub fn endpoint_counters(&self, id: &str) -> Option<Arc<LazyCounters>> {
        self.endpoints.get(id)
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
        self.endpoints.configure(config.metrics.clone());
        for ep in config.endpoints.iter().filter(|e| e.enabled) {
            self.init_transport_series(&ep.transport);
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
        for outcome in ["spilled", "waited", "nothing_fresh"] {
            touch(&self.budget_stalls, &[outcome]);
        }
        for action in ["held", "paused"] {
            touch(&self.source_backpressure, &[action]);
        }
        // Not `assign`: its first increment is the DispatcherNotReady
        // alert's sign that the consumer joined its group.
        for kind in ["revoke", "error"] {
            touch(&self.rebalances, &[kind]);
        }
    }

    /// Create a transport's series at zero (see [`Metrics::init_series`]):
    /// at start-up for the file's endpoints, and when one is added later.
    /// An endpoint's own series need nothing: the scrape writes them whole.
    pub fn init_transport_series(&self, transport: &str) {
        self.event_age.with_label_values(&[transport]);
        self.dispatch_latency.with_label_values(&[transport]);
    }

    /// A deleted endpoint: its series end (what it counted stays in its
    /// tenant's sums), so endpoints that come and go do not grow the scrape.
    pub fn forget_endpoint(&self, id: &str) {
        self.endpoints.forget(id);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# failed to encode metrics: {e}\n"))
    }
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
        // The lane of the enabled endpoint registers it.
        let _acme = m.endpoint("acme", "http");
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
