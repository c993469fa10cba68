//! What production does to the dispatcher, tested: throttling receivers,
//! a panicking transport, rebalance after rebalance while retries are
//! held, a broker outage, a shutdown with the brokers gone, and Kafka
//! refusing the dispatcher for good. Each
//! fault is injected for real (a receiver, a transport, librdkafka's mock
//! cluster) and the test checks the delivery contract through it.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatcher::config::Config;
use dispatcher::seed::SeedEvents;
use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde::Deserialize;
use support::kafka::{committed_total, produce};
use support::sink::{Behaviour, Sink};
use support::{config, config_yaml, raw_data, start, wait_until};
use transports::registry::parse_settings;
use transports::{
    BoxFuture, BuildContext, Delivery, Outcome, Registry, SettingsError, Transport,
    TransportFactory,
};

fn events(seed: u64, event_type: &str, n: usize) -> Vec<Vec<u8>> {
    let mut seeds = SeedEvents::new(seed);
    (0..n)
        .map(|_| {
            seeds
                .event(event_type, chrono::Utc::now().timestamp_millis())
                .1
        })
        .collect()
}

fn unique_data(sink: &Sink) -> BTreeSet<String> {
    sink.received().iter().map(|r| raw_data(&r.body)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_receiver_is_waited_out_and_never_trips_the_breaker() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    // 429 with Retry-After: 2 to the first attempt of every delivery.
    let sink = Sink::start(Behaviour::ThrottleFirst { secs: 2 }).await;
    // The default breaker: it opens at 70 % failures over 10 requests,
    // which 429s would be if they counted.
    let endpoints = format!(
        "  - id: throttled\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "throttle", "", &endpoints)).await;
    let values = events(50, "message.sent", 40);
    produce(kafka.bootstrap(), "events", &values).await;
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(Duration::from_secs(60), "every delivery arrived", || {
        unique_data(&sink) == produced
    })
    .await;

    for r in sink.received() {
        let id = r.header("x-webhook-delivery-id").unwrap();
        let first = sink.first_attempt(id).expect("its first attempt was seen");
        assert!(
            r.at.duration_since(first) >= Duration::from_millis(1950),
            "{id} came back {:?} after its 429 asked for 2 s",
            r.at.duration_since(first)
        );
    }
    let m = running
        .metrics
        .endpoint_counters("throttled")
        .expect("a running endpoint");
    assert_eq!(
        m.breaker_transitions[0].get(),
        0,
        "a request to slow down is not a failure (no transition to open)"
    );
    assert!(m.throttled.get() >= 40);
    assert_eq!(m.dead_lettered.get(), 0);
    running.shutdown().await.unwrap();
}

/// Panics on the first attempt of every delivery whose data has
/// `"panic": true`; delivers everything else (and later attempts).
struct Panicky {
    attempts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Transport for Panicky {
    fn kind(&self) -> &'static str {
        "panicky"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let data = std::str::from_utf8(delivery.event.data()).unwrap_or_default();
            if delivery.attempt == 1 && data.contains("\"panic\":true") {
                panic!("a transport bug met a delivery it cannot handle");
            }
            self.seen.lock().unwrap().push(delivery.body.to_vec());
            Outcome::Delivered { status: None }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

struct PanickyFactory(Arc<AtomicUsize>, Arc<Mutex<Vec<Vec<u8>>>>);

impl TransportFactory for PanickyFactory {
    fn type_name(&self) -> &'static str {
        "panicky"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        let _: NoSettings = parse_settings(settings)?;
        Ok(Arc::new(Panicky {
            attempts: self.0.clone(),
            seen: self.1.clone(),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_panics_costs_an_attempt_not_the_lane() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::builtin();
    registry.register(Box::new(PanickyFactory(attempts.clone(), seen.clone())));
    let endpoints = "  - id: fragile\n    transport: panicky\n    events: [\"*\"]\n    retry: { schedule: [100ms, 100ms] }\n";
    let yaml = config_yaml(kafka.bootstrap(), "panicky", "", endpoints);
    let config = Config::from_yaml_with(&yaml, &|_| None, &registry).unwrap();
    let running = dispatcher::app::start_with(config, &registry)
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "joined", || {
        running.ready.load(Ordering::Acquire)
    })
    .await;

    let mut values = events(51, "contact.created", 10);
    values
        .push(br#"{"event":"contact.created","data":{"panic":true,"contact_id":"c-1"}}"#.to_vec());
    values.extend(events(52, "contact.updated", 10));
    produce(kafka.bootstrap(), "events", &values).await;
    wait_until(
        Duration::from_secs(30),
        "every delivery, the one that made it panic included",
        || seen.lock().unwrap().len() >= 21,
    )
    .await;
    let got: BTreeSet<String> = seen.lock().unwrap().iter().map(|b| raw_data(b)).collect();
    assert_eq!(got, values.iter().map(|v| raw_data(v)).collect());
    assert!(
        attempts.load(Ordering::SeqCst) >= 22,
        "one attempt panicked"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), running.failed())
            .await
            .is_err(),
        "the dispatcher carries on"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_while_retries_are_held_leak_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let healthy = Sink::start(Behaviour::Ok).await;
    let down = Sink::start(Behaviour::Status(503)).await;
    // The failing endpoint's retries wait in the retry tiers (held there,
    // not due), and the in-flight budget is as small as it goes.
    let endpoints = format!(
        "  - id: healthy\n    url: \"{}\"\n    events: [\"*\"]\n\
         \x20 - id: down\n    url: \"{}\"\n    events: [\"*\"]\n    circuit_breaker: {{ min_requests: 100000 }}\n    retry: {{ schedule: [1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms, 1500ms], max_age: 1h }}\n",
        healthy.url("/h"),
        down.url("/d")
    );
    let pipeline = "  max_events_in_flight: 4\n";
    let first = start(config(kafka.bootstrap(), "rebalance", pipeline, &endpoints)).await;
    let before = events(53, "message.received", 20);
    produce(kafka.bootstrap(), "events", &before).await;
    wait_until(
        Duration::from_secs(30),
        "the first events delivered",
        || healthy.count() >= 20,
    )
    .await;

    // Eight rebalances: a second member joins and leaves, four times.
    let assigns = || {
        first
            .metrics
            .rebalances
            .with_label_values(&["assign"])
            .get()
    };
    for round in 0..4u64 {
        let second = start(config(kafka.bootstrap(), "rebalance", pipeline, &endpoints)).await;
        wait_until(
            Duration::from_secs(30),
            "the first member took part in the join",
            || assigns() >= 2 * round + 2,
        )
        .await;
        second.shutdown().await.unwrap();
        wait_until(
            Duration::from_secs(30),
            "the first member took part in the leave",
            || assigns() >= 2 * round + 3,
        )
        .await;
    }

    // The first member still has room for new work: nothing leaked.
    let after = events(54, "message.delivered", 20);
    produce(kafka.bootstrap(), "events", &after).await;
    let want: BTreeSet<String> = before.iter().chain(&after).map(|v| raw_data(v)).collect();
    wait_until(
        Duration::from_secs(30),
        "new events still flow to the healthy endpoint",
        || {
            healthy
                .received()
                .iter()
                .map(|r| raw_data(&r.body))
                .collect::<BTreeSet<_>>()
                == want
        },
    )
    .await;
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_run_loses_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Delay { ms: 20 }).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n    queue_capacity: 8\n",
        sink.url("/")
    );
    let running = start(config(
        kafka.bootstrap(),
        "outage",
        "  spill_after: 200ms\n",
        &endpoints,
    ))
    .await;
    let values = events(55, "message.read", 300);
    produce(kafka.bootstrap(), "events", &values).await;
    // Mid-run, with deliveries spilled and in flight: the broker goes away
    // for a few seconds and comes back.
    wait_until(Duration::from_secs(30), "the run is under way", || {
        sink.count() >= 20
    })
    .await;
    kafka.set_broker_up(false).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    kafka.set_broker_up(true).unwrap();

    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(Duration::from_secs(120), "every delivery arrived", || {
        unique_data(&sink) == produced
    })
    .await;
    let bootstrap = kafka.bootstrap().to_owned();
    wait_until(Duration::from_secs(30), "and was committed", || {
        committed_total(&bootstrap, "outage", "events") == 300
    })
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refusing_the_dispatcher_for_good_stops_it_with_the_reason() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Status(503)).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n    retry: {{ schedule: [200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms, 200ms] }}\n",
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "refused", "", &endpoints)).await;
    produce(
        kafka.bootstrap(),
        "events",
        &events(56, "contact.created", 1),
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the delivery is being retried",
        || sink.attempts() >= 1,
    )
    .await;
    // From now on the cluster refuses the dispatcher's writes as
    // unauthorized, and the receiver refuses the payload: its dead letter
    // can never be written.
    kafka
        .fail_requests(
            RDKafkaApiKey::Produce,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            1000,
        )
        .unwrap();
    sink.set(Behaviour::Status(400));
    tokio::time::timeout(Duration::from_secs(60), running.failed())
        .await
        .expect("the dispatcher stops by itself");
    let error = running
        .shutdown()
        .await
        .expect_err("and reports a failure, for a non-zero exit");
    let text = format!("{error:#}");
    assert!(
        text.contains("dispatcher.dlq") && text.to_lowercase().contains("authoriz"),
        "the reason names the topic and the refusal: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_the_brokers_gone_still_ends() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Status(200)).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "gone", "", &endpoints)).await;
    let values = events(57, "message.delivered", 20);
    produce(kafka.bootstrap(), "events", &values).await;
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(Duration::from_secs(60), "every delivery arrived", || {
        unique_data(&sink) == produced
    })
    .await;
    // SIGTERM while the brokers cannot be reached (a network partition, the
    // cluster restarting): the final commit and the group goodbye cannot
    // happen. The process must still end, within the grace and the client
    // timeouts (the revoke's commit gives up after `session.timeout.ms`),
    // rather than hang until the orchestrator kills it. What was delivered
    // and not committed is delivered again by the next owner, same ids.
    drop(kafka);
    let stopped = tokio::time::timeout(Duration::from_secs(120), running.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "the shutdown did not end within 120 s with the broker gone"
    );
}
