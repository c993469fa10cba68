//! A benchmark (ignored by default): how fast spilled backlogs drain,
//! against the same number of events flowing fresh, on the embedded Kafka.
//!
//! E endpoints (default 8) are paused through the endpoint store while N
//! events (default 2,000) are produced, so each endpoint's N deliveries are
//! spilled. Then all are resumed, and the time until every delivery has
//! arrived is the drain. Then N more events flow with nothing paused. The
//! figures (drain and fresh deliveries/s, and their ratio) go to
//! docs/benchmarks.md; they are printed, never asserted:
//!
//! ```text
//! N=2000 E=8 cargo test --release -p dispatcher --test backlog_drain -- --ignored --nocapture
//! ```
//!
//! `FETCH_QUEUE_BACKOFF_MS` sets librdkafka's `fetch.queue.backoff.ms` for
//! every client, to compare with the readers' default.

mod support;

use std::time::{Duration, Instant};

use dispatcher::store::EndpointState;
use serde_json::json;
use support::kafka::produce;
use support::sink::{Behaviour, Sink};
use support::{config, start, wait_until};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn spilled_backlogs_drain_against_fresh_events() {
    support::init_logging();
    let (n, e) = (env("N", 2000), env("E", 8));
    let kafka = support::embedded_kafka(8);
    let sink = Sink::start(Behaviour::Ok).await;
    let mut c = config(kafka.bootstrap(), "backlog-drain", "", "");
    // As the load tester runs the embedded Kafka: its mock cluster answers
    // a waiting fetch only at this wait.
    c.kafka.options.insert(
        "fetch.wait.max.ms".into(),
        dispatcher::config::Scalar("10".into()),
    );
    if let Ok(ms) = std::env::var("FETCH_QUEUE_BACKOFF_MS") {
        c.kafka.options.insert(
            "fetch.queue.backoff.ms".into(),
            dispatcher::config::Scalar(ms),
        );
    }
    let running = start(c).await;
    let ids: Vec<String> = (0..e).map(|i| format!("drain-{i}")).collect();
    let spec = |id: &str| {
        json!({"id": id, "url": sink.url(&format!("/{id}")), "events": ["*"], "max_in_flight": 32})
            .as_object()
            .unwrap()
            .clone()
    };
    let state = |paused| EndpointState {
        paused,
        disabled: false,
    };
    for id in &ids {
        running
            .store
            .write(id, 0, Some((spec(id), state(true))))
            .await
            .unwrap();
    }
    let m = running.metrics.clone();
    wait_until(Duration::from_secs(10), "every endpoint in force", || {
        ids.iter()
            .all(|id| m.endpoint_counters(id).map_or(0, |c| c.paused.get()) == 1)
    })
    .await;

    let mut seeds = dispatcher::seed::SeedEvents::new(5);
    let mut batch = || -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
            .collect()
    };
    produce(kafka.bootstrap(), "events", &batch()).await;
    wait_until(Duration::from_secs(120), "every delivery spilled", || {
        ids.iter()
            .all(|id| m.endpoint_counters(id).map_or(0, |c| c.spilled.get()) as usize == n)
    })
    .await;

    let t = Instant::now();
    for id in &ids {
        running
            .store
            .write(id, 1, Some((spec(id), state(false))))
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(240), "the backlogs drained", || {
        sink.count() >= n * e
    })
    .await;
    let drain = t.elapsed();

    let fresh_events = batch();
    let before = sink.count();
    let t = Instant::now();
    produce(kafka.bootstrap(), "events", &fresh_events).await;
    wait_until(Duration::from_secs(240), "the fresh events arrived", || {
        sink.count() >= before + n * e
    })
    .await;
    let fresh = t.elapsed();

    let rate = |d: Duration| (n * e) as f64 / d.as_secs_f64();
    eprintln!(
        "backlog drain: {e} endpoints x {n} deliveries: drained in {drain:.2?} ({:.0}/s), \
         fresh in {fresh:.2?} ({:.0}/s): drain / fresh = {:.2}",
        rate(drain),
        rate(fresh),
        rate(drain) / rate(fresh)
    );
    running.shutdown().await.unwrap();
}
