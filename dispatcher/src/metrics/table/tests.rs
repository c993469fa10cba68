use std::collections::BTreeMap;

use super::*;
use crate::metrics::{EndpointSeries, MetricsConfig};

fn table(max: usize) -> EndpointTable {
    let t = EndpointTable::new();
    t.configure(MetricsConfig {
        endpoint_series: EndpointSeries::Auto,
        endpoint_series_max: max,
        linger: Duration::from_secs(600),
    });
    t
}

/// The ids with series of their own in a scrape at `now`.
fn shown_at(t: &EndpointTable, now: Instant) -> Vec<String> {
    let families = t.families(now);
    let mut ids: Vec<String> = families
        .iter()
        .find(|f| f.name() == "dispatcher_endpoint_queue_depth")
        .map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_label()[0].value().to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// `family{labels}` -> value of every sample in a scrape at `now`.
fn samples_at(t: &EndpointTable, now: Instant) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in t.families(now) {
        for m in f.get_metric() {
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            let value = match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => m.get_histogram().get_sample_count() as f64,
            };
            out.insert(format!("{}{{{}}}", f.name(), labels.join(",")), value);
        }
    }
    out
}

fn tenant_delivered(t: &EndpointTable, tenant: &str) -> Option<f64> {
    samples_at(t, Instant::now())
        .get(&format!(
            "dispatcher_tenant_deliveries_total{{outcome=delivered,tenant={tenant}}}"
        ))
        .copied()
}

#[test]
fn while_few_every_endpoint_has_its_series() {
    let t = table(3);
    for id in ["a", "b", "c"] {
        t.register(id, "http", None, false);
    }
    assert_eq!(shown_at(&t, Instant::now()), ["a", "b", "c"]);
}

#[test]
fn past_the_max_only_marked_and_troubled_endpoints_have_series() {
    let t = table(3);
    let c: Vec<_> = (0..6)
        .map(|i| t.register(&format!("e{i}"), "http", Some("acme"), i == 0))
        .collect();
    let now = Instant::now();
    assert_eq!(
        shown_at(&t, now),
        ["e0"],
        "only the marked one while all is well"
    );

    c[1].attempt_retry.inc(); // a failed attempt
    c[2].breaker_state.set(1); // an open breaker
    c[3].delivered.inc(); // a success is no trouble
    c[4].in_flight.set(3); // nor is being busy
    assert_eq!(shown_at(&t, now), ["e0", "e1", "e2"]);

    // Each still shows every series it has, with its lifetime values.
    let s = samples_at(&t, now);
    assert_eq!(
        s["dispatcher_delivery_attempts_total{endpoint=e1,result=retry,transport=http}"],
        1.0
    );
    assert_eq!(s["dispatcher_endpoint_breaker_state{endpoint=e2}"], 1.0);
    assert!(!s.keys().any(|k| k.contains("endpoint=e3")), "{s:?}");
    assert_eq!(s["dispatcher_metrics_endpoints_shown{}"], 3.0);
}

#[test]
fn trouble_keeps_the_series_for_the_linger_then_they_go() {
    let t = table(1);
    let c: Vec<_> = (0..3)
        .map(|i| t.register(&format!("e{i}"), "http", None, false))
        .collect();
    let t0 = Instant::now();
    c[1].throttled.inc();
    assert_eq!(shown_at(&t, t0), ["e1"]);
    // Nothing new: still shown within the linger, gone after it.
    assert_eq!(shown_at(&t, t0 + Duration::from_secs(599)), ["e1"]);
    assert!(shown_at(&t, t0 + Duration::from_secs(601)).is_empty());
    // A state that lasts (a backlog in Kafka) is trouble at every scrape.
    c[2].backlog.set(10);
    let later = t0 + Duration::from_secs(3600);
    assert_eq!(shown_at(&t, later), ["e2"]);
    assert_eq!(shown_at(&t, later + Duration::from_secs(3600)), ["e2"]);
}

#[test]
fn the_cap_prefers_marked_endpoints_then_the_latest_trouble() {
    let t = table(2);
    let c: Vec<_> = (0..4)
        .map(|i| t.register(&format!("e{i}"), "http", None, i == 3))
        .collect();
    let t0 = Instant::now();
    c[0].dead_lettered.inc();
    shown_at(&t, t0);
    c[1].dead_lettered.inc();
    let t1 = t0 + Duration::from_secs(1);
    shown_at(&t, t1);
    c[2].dead_lettered.inc();
    // e0, e1, e2 troubled and e3 marked: 4 candidates for 2 places. The
    // marked one, then the one already shown: a series does not come and go.
    let t2 = t1 + Duration::from_secs(1);
    assert_eq!(shown_at(&t, t2), ["e0", "e3"]);
    let s = samples_at(&t, t2);
    assert_eq!(s["dispatcher_metrics_troubled_endpoints_hidden{}"], 2.0);
}

#[test]
fn a_fresh_failure_takes_the_place_of_a_lasting_state() {
    let t = table(1);
    let c: Vec<_> = (0..3)
        .map(|i| t.register(&format!("e{i}"), "http", None, false))
        .collect();
    let t0 = Instant::now();
    c[0].paused.set(1);
    assert_eq!(shown_at(&t, t0), ["e0"]);
    // A paused endpoint is in trouble at every scrape, and shown already;
    // a receiver that starts failing still gets the place.
    c[2].attempt_permanent.inc();
    let t1 = t0 + Duration::from_secs(15);
    assert_eq!(shown_at(&t, t1), ["e2"]);
    assert_eq!(
        samples_at(&t, t1)["dispatcher_metrics_troubled_endpoints_hidden{}"],
        1.0
    );
}

#[test]
fn a_first_showing_carries_the_values_of_the_scrape_before() {
    let t = table(1);
    let c: Vec<_> = (0..2)
        .map(|i| t.register(&format!("e{i}"), "http", None, false))
        .collect();
    let t0 = Instant::now();
    c[1].delivered.inc_by(1000);
    assert!(shown_at(&t, t0).is_empty());
    // A burst of 50 dead letters between two scrapes: the first scrape that
    // shows e1 says what it had before them, the next one says 50, so
    // increase() sees the burst.
    c[1].dead_lettered.inc_by(50);
    let key = "dispatcher_deliveries_total{endpoint=e1,outcome=dead_lettered,transport=http}";
    let first = samples_at(&t, t0 + Duration::from_secs(15));
    assert_eq!(first[key], 0.0);
    assert_eq!(
        first["dispatcher_deliveries_total{endpoint=e1,outcome=delivered,transport=http}"],
        1000.0
    );
    assert_eq!(samples_at(&t, t0 + Duration::from_secs(30))[key], 50.0);
}

#[test]
fn with_all_every_endpoint_has_series_however_many() {
    let t = EndpointTable::new();
    t.configure(MetricsConfig {
        endpoint_series: EndpointSeries::All,
        endpoint_series_max: 1,
        ..MetricsConfig::default()
    });
    for i in 0..5 {
        t.register(&format!("e{i}"), "http", None, false);
    }
    assert_eq!(shown_at(&t, Instant::now()).len(), 5);
}

#[test]
fn tenant_sums_cover_every_endpoint_and_never_fall() {
    let t = table(0);
    let a1 = t.register("a1", "http", Some("acme"), false);
    let a2 = t.register("a2", "http", Some("acme"), true);
    let b1 = t.register("b1", "http", Some("bolt"), false);
    let n1 = t.register("n1", "http", None, false);
    a1.delivered.inc_by(3);
    a2.delivered.inc_by(4);
    b1.delivered.inc_by(5);
    n1.delivered.inc_by(6);
    // Shown or not, an endpoint counts in its tenant's sums.
    assert_eq!(tenant_delivered(&t, "acme"), Some(7.0));
    assert_eq!(tenant_delivered(&t, "bolt"), Some(5.0));
    assert_eq!(
        tenant_delivered(&t, ""),
        Some(6.0),
        "no tenant: tenant=\"\""
    );

    // Deleted: what it counted stays with its tenant.
    t.forget("a1");
    assert_eq!(tenant_delivered(&t, "acme"), Some(7.0));

    // Moved: the old tenant keeps what it counted there, the new one gets
    // only what it counts from now on.
    t.update("a2", "http", Some("bolt"), true);
    assert_eq!(
        tenant_delivered(&t, "acme"),
        None,
        "no endpoint left: no series"
    );
    assert_eq!(tenant_delivered(&t, "bolt"), Some(5.0));
    a2.delivered.inc();
    assert_eq!(tenant_delivered(&t, "bolt"), Some(6.0));
    let s = samples_at(&t, Instant::now());
    assert_eq!(s["dispatcher_tenant_endpoints{tenant=bolt}"], 2.0);
}

#[test]
fn a_tenant_keeps_a_deleted_endpoints_counts_while_it_has_others() {
    let t = table(0);
    let a1 = t.register("a1", "http", Some("acme"), false);
    let a2 = t.register("a2", "http", Some("acme"), false);
    a1.dead_lettered.inc_by(2);
    a2.dead_lettered.inc();
    t.forget("a1");
    a2.dead_lettered.inc();
    let s = samples_at(&t, Instant::now());
    assert_eq!(
        s["dispatcher_tenant_deliveries_total{outcome=dead_lettered,tenant=acme}"],
        4.0
    );
    // Registering the same id again is a new endpoint, from zero.
    let again = t.register("a1", "http", Some("acme"), false);
    assert_eq!(again.dead_lettered.get(), 0);
}

#[test]
fn registering_twice_returns_the_same_counters() {
    let t = table(10);
    let first = t.register("a", "http", None, false);
    first.delivered.inc();
    let second = t.register("a", "http", None, false);
    assert_eq!(second.delivered.get(), 1);
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn a_backlog_shows_its_endpoint_and_counts_it_troubled() {
    let t = table(1);
    let a1 = t.register("a1", "http", Some("acme"), false);
    t.register("a2", "http", Some("acme"), false);
    a1.backlog.set(10);
    a1.backlog_age.set(3.5);
    let now = Instant::now();
    assert_eq!(shown_at(&t, now), ["a1"]);
    let s = samples_at(&t, now);
    assert_eq!(
        s["dispatcher_endpoint_backlog_deliveries{endpoint=a1}"],
        10.0
    );
    assert_eq!(
        s["dispatcher_endpoint_backlog_oldest_age_seconds{endpoint=a1}"],
        3.5
    );
    assert_eq!(s["dispatcher_tenant_endpoints_troubled{tenant=acme}"], 1.0);
    assert_eq!(s["dispatcher_tenant_endpoints{tenant=acme}"], 2.0);
}

#[test]
fn an_update_to_another_transport_relabels_the_endpoint() {
    let t = table(10);
    let c = t.register("a", "http", None, false);
    c.delivered.inc();
    t.update("a", "kafka", None, false);
    let s = samples_at(&t, Instant::now());
    assert_eq!(
        s["dispatcher_deliveries_total{endpoint=a,outcome=delivered,transport=kafka}"],
        1.0
    );
    assert!(!s.keys().any(|k| k.contains("transport=http")), "{s:?}");
}
