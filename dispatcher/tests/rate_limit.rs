//! A global rate limit shared by two dispatcher processes in one consumer
//! group: together they stay within 5 % of the endpoint's limit.

mod support;

use std::time::{Duration, Instant};

use dispatcher::seed::SeedEvents;
use support::kafka::produce;
use support::sink::{Behaviour, Sink};
use support::{config_yaml, free_port, metric, Child};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_stay_under_the_endpoint_rate_limit() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: limited\n    url: \"{}\"\n    events: [\"*\"]\n    rate_limit: {{ per_second: 20, burst: 2 }}\n",
        sink.url("/")
    );
    let yaml = config_yaml(kafka.bootstrap(), "rate", "", &endpoints);
    // Enough that neither replica runs dry during the measurement.
    let mut seeds = SeedEvents::new(30);
    let values: Vec<Vec<u8>> = (0..1500)
        .map(|_| seeds.next_event(1_700_000_000_000).2)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;

    let dir = tempfile::tempdir().unwrap();
    let a = Child::spawn(dir.path(), "a", &yaml, free_port());
    let b = Child::spawn(dir.path(), "b", &yaml, free_port());

    // Wait until both have their partitions and their share of the limit.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ma, mb) = (a.metrics().await, b.metrics().await);
        let shares =
            metric(&ma, "dispatcher_rate_limit_share") + metric(&mb, "dispatcher_rate_limit_share");
        let both_assigned = metric(&ma, "dispatcher_assigned_partitions") > 0.0
            && metric(&mb, "dispatcher_assigned_partitions") > 0.0;
        if both_assigned && (shares - 1.0).abs() < 0.01 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never settled: shares {shares}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any burst from before the split pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (start_count, start) = (sink.count(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = sink.count() - start_count;
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    eprintln!("two replicas delivered {sent} in 10 s: {rate:.2}/s against a limit of 20/s");
    assert!(rate <= 20.0 * 1.05, "over the limit: {rate:.2}/s");
    assert!(
        rate >= 20.0 * 0.9,
        "far under the limit: {rate:.2}/s (the shares do not add up)"
    );
    assert!(sent < values.len(), "the backlog must outlast the window");
}
