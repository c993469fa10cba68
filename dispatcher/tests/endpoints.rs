//! Endpoints as live data: what is written to the endpoint store applies to
//! the running dispatcher, with no restart: a new endpoint gets deliveries,
//! a changed one changes in place without losing any, a paused one waits,
//! a deleted one's pending work is dead-lettered as `endpoint_deleted`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dispatcher::seed::SeedEvents;
use dispatcher::store::EndpointState;
use serde_json::json;
use support::kafka::{header, produce, read_all};
use support::sink::{Behaviour, Sink};
use support::{config, raw_data, start, wait_until};

fn events(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut seeds = SeedEvents::new(seed);
    (0..n)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect()
}

fn data(values: &[Vec<u8>]) -> BTreeSet<String> {
    values.iter().map(|v| raw_data(v)).collect()
}

fn got(sink: &Sink) -> BTreeSet<String> {
    sink.received().iter().map(|r| raw_data(&r.body)).collect()
}

fn endpoint(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().expect("an object").clone()
}

const RUNNING: EndpointState = EndpointState {
    paused: false,
    disabled: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_written_to_the_store_gets_deliveries_without_a_restart() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let file_sink = Sink::start(Behaviour::Ok).await;
    let live_sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: from-file\n    url: \"{}\"\n    events: [\"*\"]\n",
        file_sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "live", "", &endpoints)).await;
    let before = events(60, 10);
    produce(kafka.bootstrap(), "events", &before).await;
    wait_until(Duration::from_secs(30), "the file's endpoint works", || {
        got(&file_sink) == data(&before)
    })
    .await;

    let written = Instant::now();
    let version = running
        .store
        .write(
            "from-store",
            0,
            Some((
                endpoint(json!({"id": "from-store", "url": live_sink.url("/"), "events": ["contact.*", "message.*"]})),
                RUNNING,
            )),
        )
        .await
        .unwrap();
    assert_eq!(version, 1);
    // It applies within a second: events produced a second after the write
    // reach it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = events(61, 30);
    produce(kafka.bootstrap(), "events", &after).await;
    let subscribed: BTreeSet<String> = after
        .iter()
        .filter(|v| {
            let text = String::from_utf8_lossy(v);
            text.contains("\"event\":\"contact.") || text.contains("\"event\":\"message.")
        })
        .map(|v| raw_data(v))
        .collect();
    assert!(!subscribed.is_empty());
    wait_until(
        Duration::from_secs(30),
        "the new endpoint gets what it subscribed to",
        || got(&live_sink) == subscribed,
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "and the others still everything",
        || got(&file_sink) == data(&before).union(&data(&after)).cloned().collect(),
    )
    .await;
    eprintln!(
        "written to delivered: {:?}",
        live_sink.received()[0].at.duration_since(written)
    );
    assert!(
        running
            .metrics
            .endpoint_counters("from-store")
            .map_or(0, |c| c.outcome("delivered"))
            > 0,
        "it has its own series"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_changed_mid_flow_loses_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let old = Sink::start(Behaviour::Delay { ms: 5 }).await;
    let new = Sink::start(Behaviour::Delay { ms: 5 }).await;
    let running = start(config(kafka.bootstrap(), "move", "", "")).await;
    let store = running.store.clone();
    store
        .write(
            "moving",
            0,
            Some((
                endpoint(json!({"id": "moving", "url": old.url("/"), "events": ["*"], "max_in_flight": 4})),
                RUNNING,
            )),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let values = events(62, 300);
    let bootstrap = kafka.bootstrap().to_owned();
    let feeder = {
        let values = values.clone();
        tokio::spawn(async move {
            for chunk in values.chunks(20) {
                produce(&bootstrap, "events", chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_until(Duration::from_secs(30), "the old URL gets some", || {
        old.count() >= 50
    })
    .await;
    store
        .write(
            "moving",
            1,
            Some((
                endpoint(json!({"id": "moving", "url": new.url("/"), "events": ["*"], "max_in_flight": 4})),
                RUNNING,
            )),
        )
        .await
        .unwrap();
    feeder.await.unwrap();
    wait_until(
        Duration::from_secs(60),
        "every event at the old URL or the new one",
        || {
            got(&old)
                .union(&got(&new))
                .cloned()
                .collect::<BTreeSet<_>>()
                == data(&values)
        },
    )
    .await;
    assert!(new.count() > 0, "the new URL took over");
    support::assert_one_id_per_event(&old);
    support::assert_one_id_per_event(&new);
    running.shutdown().await.unwrap();
}

/// An endpoint's lane is made at its first delivery, with the settings in
/// force then: a change written before it replaces what the lane will be
/// made from, and an endpoint no event is routed to has no lane at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_is_made_at_its_first_delivery_with_the_settings_in_force_then() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let before = Sink::start(Behaviour::Ok).await;
    let after = Sink::start(Behaviour::Ok).await;
    let running = start(config(kafka.bootstrap(), "made", "", "")).await;
    let moving = |url: String| endpoint(json!({"id": "moving", "url": url, "events": ["*"]}));
    running
        .store
        .write("moving", 0, Some((moving(before.url("/")), RUNNING)))
        .await
        .unwrap();
    let nobody = json!({"id": "never", "url": after.url("/never"), "events": ["*"],
        "filter": {"data.whatsapp_account_id": "nobody-has-this"}});
    running
        .store
        .write("never", 0, Some((endpoint(nobody), RUNNING)))
        .await
        .unwrap();
    let m = running.metrics.clone();
    wait_until(
        Duration::from_secs(30),
        "both endpoints are in force",
        || m.store_endpoints.get() == 2,
    )
    .await;
    assert_eq!(m.lanes_made.get(), 0, "no lane before any work");
    running
        .store
        .write("moving", 1, Some((moving(after.url("/")), RUNNING)))
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the change is applied", || {
        m.endpoint_changes.with_label_values(&["updated"]).get() == 1
    })
    .await;
    assert_eq!(m.lanes_made.get(), 0, "a change makes no lane");

    let values = events(66, 20);
    produce(kafka.bootstrap(), "events", &values).await;
    wait_until(
        Duration::from_secs(30),
        "the new URL gets everything",
        || got(&after) == data(&values),
    )
    .await;
    assert_eq!(before.count(), 0, "the old URL gets nothing");
    assert_eq!(
        m.lanes_made.get(),
        1,
        "only the endpoint that had work has a lane"
    );
    assert!(
        m.render().contains("dispatcher_lanes_made 1"),
        "and the scrape says so"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_in_the_store_waits_and_resumes() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(config(kafka.bootstrap(), "pause-store", "", "")).await;
    let spec = endpoint(json!({"id": "p", "url": sink.url("/"), "events": ["*"]}));
    let paused = EndpointState {
        paused: true,
        disabled: false,
    };
    running
        .store
        .write("p", 0, Some((spec.clone(), paused)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let values = events(63, 10);
    produce(kafka.bootstrap(), "events", &values).await;
    let m = running.metrics.clone();
    wait_until(
        Duration::from_secs(30),
        "its deliveries wait in Kafka",
        || m.endpoint_counters("p").map_or(0, |c| c.spilled.get()) == 10,
    )
    .await;
    assert_eq!(sink.count(), 0, "nothing is sent while paused");
    running
        .store
        .write("p", 1, Some((spec, RUNNING)))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "resumed, everything arrives",
        || got(&sink) == data(&values),
    )
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoints_pending_work_is_dead_lettered_as_endpoint_deleted() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let down = Sink::start(Behaviour::Status(503)).await;
    let running = start(config(kafka.bootstrap(), "delete", "", "")).await;
    let store = running.store.clone();
    store
        .write(
            "doomed",
            0,
            Some((
                endpoint(json!({
                    "id": "doomed", "url": down.url("/"), "events": ["*"],
                    "circuit_breaker": {"min_requests": 100000},
                    "retry": {"schedule": ["300ms", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s"]}
                })),
                RUNNING,
            )),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let values = events(64, 20);
    produce(kafka.bootstrap(), "events", &values).await;
    // Each attempted and now waiting for a retry: in memory or parked.
    wait_until(
        Duration::from_secs(30),
        "every delivery failed once",
        || down.attempts() >= 40,
    )
    .await;
    store.write("doomed", 1, None).await.unwrap();

    let letters = read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        20,
        Duration::from_secs(60),
    );
    let deleted: Vec<_> = letters
        .iter()
        .filter(|l| header(l, "dlq.reason") == Some("endpoint_deleted"))
        .collect();
    assert_eq!(
        deleted.len(),
        20,
        "every pending delivery dead-lettered as endpoint_deleted: {:?}",
        letters
            .iter()
            .map(|l| header(l, "dlq.reason"))
            .collect::<Vec<_>>()
    );
    // From the lane (stage delivery) or, for a retry that came due after
    // the lane ended, from the source (stage park, with its park.* headers).
    let ids: BTreeSet<&str> = deleted
        .iter()
        .map(|l| {
            header(l, "dlq.delivery_id")
                .or(header(l, "park.delivery_id"))
                .expect("a delivery id")
        })
        .collect();
    assert_eq!(ids.len(), 20, "one per delivery, under its delivery id");
    // Its lane ends once nothing of it is left, and its series go.
    wait_until(Duration::from_secs(30), "its metrics are gone", || {
        !running.metrics.render().contains("endpoint=\"doomed\"")
    })
    .await;
    running.shutdown().await.unwrap();
}

/// A restart reads the store's whole history (the topic keeps old versions
/// until it is compacted, and never compacts its active segment): an
/// endpoint changed, deleted and created again, and another deleted for
/// good, must come up as they are now, and stay so, not be replayed
/// through their past (which deleted the live one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_the_stores_latest_versions_not_its_history() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Ok).await;
    let first = start(config(kafka.bootstrap(), "history", "", "")).await;
    let store = first.store.clone();
    let at = |path: &str| endpoint(json!({"id": "reborn", "url": sink.url(path), "events": ["*"]}));
    let v1 = store
        .write("reborn", 0, Some((at("/v1"), RUNNING)))
        .await
        .unwrap();
    let v2 = store
        .write("reborn", v1, Some((at("/v2"), RUNNING)))
        .await
        .unwrap();
    let v3 = store.write("reborn", v2, None).await.unwrap();
    store
        .write("reborn", v3, Some((at("/now"), RUNNING)))
        .await
        .unwrap();
    let gone = endpoint(json!({"id": "gone", "url": sink.url("/gone"), "events": ["*"]}));
    let g1 = store.write("gone", 0, Some((gone, RUNNING))).await.unwrap();
    store.write("gone", g1, None).await.unwrap();
    drop(store);
    first.shutdown().await.unwrap();

    let running = start(config(kafka.bootstrap(), "history", "", "")).await;
    let values = events(62, 20);
    produce(kafka.bootstrap(), "events", &values).await;
    wait_until(
        Duration::from_secs(30),
        "the live version gets everything",
        || sink.data_at("/now") == data(&values),
    )
    .await;
    // Nothing went anywhere else, and the history changed nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.count(), values.len(), "only /now received");
    let changes = |kind: &str| {
        running
            .metrics
            .endpoint_changes
            .with_label_values(&[kind])
            .get()
    };
    assert_eq!(
        (changes("added"), changes("updated"), changes("deleted")),
        (0, 0, 0),
        "the store's past was applied again"
    );
    running.shutdown().await.unwrap();
}
