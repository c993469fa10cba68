//! Per-endpoint delivery policy against the Kafka protocol (mock cluster)
//! and real HTTP receivers: circuit breaker, Retry-After, 410/400 rules,
//! durable parking through a long outage, pause/resume, and replay.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use dispatcher::seed::SeedEvents;
use support::kafka::{committed_total, header, produce, read_all};
use support::sink::{Behaviour, Sink};
use support::{api, config, config_yaml, raw_data, start, verify_signature, wait_until, SECRET_A};

fn events(seed: u64, event_type: &str, n: usize) -> Vec<Vec<u8>> {
    let mut s = SeedEvents::new(seed);
    (0..n)
        .map(|_| s.event(event_type, chrono::Utc::now().timestamp_millis()).1)
        .collect()
}

fn unique_data(sink: &Sink) -> BTreeSet<String> {
    sink.received().iter().map(|r| raw_data(&r.body)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_parks_deliveries_and_closes_when_the_endpoint_returns() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Status(503)).await;
    let endpoints = format!(
        r#"
  - id: flaky
    url: "{}"
    events: ["*"]
    max_in_flight: 4
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_probes: 2 }}
    retry: {{ schedule: [50ms, 100ms, 200ms, 400ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], max_age: 5m }}
"#,
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "breaker", "", &endpoints)).await;
    let values = events(20, "contact.created", 30);
    produce(kafka.bootstrap(), "events", &values).await;

    let m = running.metrics.clone();
    let transitions = |to: &str| {
        m.endpoint_counters("flaky")
            .map_or(0, |c| c.transitions_to(to))
    };
    wait_until(
        Duration::from_secs(30),
        "the breaker opened and parked deliveries",
        || {
            transitions("open") >= 1
                && m.endpoint_counters("flaky")
                    .map_or(0, |c| c.parked_count("breaker_open"))
                    >= 1
        },
    )
    .await;
    // While it is open the backlog sits in the retry topics, so the source
    // offsets move on.
    let bootstrap = kafka.bootstrap().to_owned();
    wait_until(
        Duration::from_secs(30),
        "source offsets committed during the outage",
        || committed_total(&bootstrap, "breaker", "events") == 30,
    )
    .await;
    assert_eq!(sink.count(), 0);

    sink.set(Behaviour::Ok);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(
        Duration::from_secs(60),
        "every delivery after recovery",
        || unique_data(&sink) == produced,
    )
    .await;
    assert!(transitions("half_open") >= 1, "it half-opened to probe");
    assert!(transitions("closed") >= 1, "and closed on success");
    assert_eq!(
        m.endpoint_counters("flaky")
            .map_or(0, |c| c.breaker_state.get()),
        0
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_out_410_disables_and_400_dead_letters_at_once() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let throttled = Sink::start(Behaviour::Throttle { times: 1, secs: 3 }).await;
    let gone = Sink::start(Behaviour::Status(410)).await;
    let bad = Sink::start(Behaviour::Status(400)).await;
    let endpoints = format!(
        r#"
  - id: throttled
    url: "{}"
    events: [contact.created]
    max_in_flight: 1
  - id: gone
    url: "{}"
    events: [message.sent]
    max_in_flight: 1
  - id: bad
    url: "{}"
    events: [conversation.opened]
"#,
        throttled.url("/"),
        gone.url("/"),
        bad.url("/")
    );
    let running = start(config(kafka.bootstrap(), "rules", "", &endpoints)).await;
    let mut values = events(21, "contact.created", 1);
    values.extend(events(22, "message.sent", 3));
    values.extend(events(23, "conversation.opened", 2));
    produce(kafka.bootstrap(), "events", &values).await;

    wait_until(
        Duration::from_secs(30),
        "the throttled delivery arrived",
        || throttled.count() == 1,
    )
    .await;
    let arrivals = throttled.arrivals();
    assert_eq!(arrivals.len(), 2, "one 429, then one success");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(2950),
        "Retry-After: 3 was not waited out ({waited:?})"
    );

    let letters = read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        5,
        Duration::from_secs(30),
    );
    let reasons = |endpoint: &str| -> Vec<String> {
        let mut r: Vec<String> = letters
            .iter()
            .filter(|l| header(l, "dlq.endpoint_id") == Some(endpoint))
            .map(|l| header(l, "dlq.reason").unwrap().to_owned())
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        reasons("gone"),
        vec!["endpoint_disabled", "endpoint_disabled", "endpoint_gone"]
    );
    assert_eq!(gone.attempts(), 1, "after a 410 nothing more is sent");
    assert_eq!(
        reasons("bad"),
        vec!["permanent_failure", "permanent_failure"]
    );
    assert_eq!(bad.attempts(), 2, "a 400 is not retried");
    for l in letters
        .iter()
        .filter(|l| header(l, "dlq.endpoint_id") == Some("bad"))
    {
        let attempts: Vec<serde_json::Value> =
            serde_json::from_str(header(l, "dlq.attempts").unwrap()).unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["status"], 400);
    }
    let (status, body) = api(&running, "GET", "/endpoints").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let gone_state = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "gone")
        .unwrap();
    assert_eq!(gone_state["disabled"], true);
    // A plain resume does not undo the receiver's 410; an explicit one does.
    let (status, body) = api(&running, "POST", "/endpoints/gone/resume").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api(&running, "GET", "/endpoints/gone").await;
    assert_eq!(
        (status, body.contains(r#""disabled":true"#)),
        (200, true),
        "{body}"
    );
    assert_eq!(
        running
            .metrics
            .endpoint_counters("gone")
            .map_or(0, |c| c.disabled.get()),
        1
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_moves_the_backlog_to_retry_topics_and_it_all_arrives_later() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Status(503)).await;
    let endpoints = format!(
        r#"
  - id: down
    url: "{}"
    events: ["*"]
    circuit_breaker: {{ min_requests: 100000 }}
    retry: {{ schedule: [100ms, 3s, 3s, 3s, 3s, 3s, 3s, 3s, 3s, 3s, 3s, 3s], max_age: 10m }}
"#,
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "outage", "", &endpoints)).await;
    let mut seeds = SeedEvents::new(24);
    let values: Vec<Vec<u8>> = (0..200)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;

    let bootstrap = kafka.bootstrap().to_owned();
    wait_until(
        Duration::from_secs(60),
        "the whole backlog parked and the source committed",
        || committed_total(&bootstrap, "outage", "events") == 200,
    )
    .await;
    assert_eq!(sink.count(), 0);
    assert!(
        running
            .metrics
            .endpoint_counters("down")
            .map_or(0, |c| c.parked_count("retry"))
            >= 200
    );
    assert!(
        running.metrics.events_in_flight.get() < 200,
        "parked deliveries do not hold memory"
    );

    sink.set(Behaviour::Ok);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(
        Duration::from_secs(90),
        "every delivery once the endpoint is back",
        || unique_data(&sink) == produced,
    )
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_management_api() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n    paused: true\n",
        sink.url("/")
    );
    let running = start(config(
        kafka.bootstrap(),
        "pause",
        "  paused_recheck: 500ms\n",
        &endpoints,
    ))
    .await;
    let first = events(25, "contact.updated", 10);
    produce(kafka.bootstrap(), "events", &first).await;
    let bootstrap = kafka.bootstrap().to_owned();
    wait_until(
        Duration::from_secs(30),
        "paused deliveries spilled to Kafka, offsets committed",
        || committed_total(&bootstrap, "pause", "events") == 10,
    )
    .await;
    assert_eq!(sink.count(), 0, "nothing is sent to a paused endpoint");
    let spilled = || {
        running
            .metrics
            .endpoint_counters("ep")
            .map_or(0, |c| c.spilled.get())
    };
    assert_eq!(spilled(), 10, "each waits in the spill topic, written once");

    let (status, body) = api(&running, "POST", "/endpoints/ep/resume").await;
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(30), "delivered after resume", || {
        sink.count() == 10
    })
    .await;

    let (status, _) = api(&running, "POST", "/endpoints/ep/pause").await;
    assert_eq!(status, 200);
    produce(
        kafka.bootstrap(),
        "events",
        &events(26, "contact.updated", 5),
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "new deliveries spilled while paused",
        || committed_total(&bootstrap, "pause", "events") == 15,
    )
    .await;
    assert_eq!(sink.count(), 10);
    assert_eq!(spilled(), 15, "nothing was written twice");
    assert_eq!(api(&running, "POST", "/endpoints/nope/pause").await.0, 404);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_dead_letters_with_their_ids_and_valid_signatures() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Status(400)).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    secret: \"{SECRET_A}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let yaml = config_yaml(kafka.bootstrap(), "replay", "", &endpoints);
    let running = start(config(kafka.bootstrap(), "replay", "", &endpoints)).await;
    let values = events(27, "campaign.completed", 5);
    produce(kafka.bootstrap(), "events", &values).await;
    let letters = read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        5,
        Duration::from_secs(30),
    );
    assert_eq!(letters.len(), 5);
    let dead_ids: BTreeSet<String> = letters
        .iter()
        .map(|l| header(l, "dlq.delivery_id").unwrap().to_owned())
        .collect();

    sink.set(Behaviour::Ok);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.yaml");
    std::fs::write(&file, yaml).unwrap();
    let replay = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .args([
                "replay",
                "--config",
                file.to_str().unwrap(),
                "--endpoint",
                "ep",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = replay(&["--dry-run"]);
    assert!(dry.contains("5 matched, 5 would be replayed"), "{dry}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), 0, "a dry run changes nothing");

    let out = replay(&["--since", "1h"]);
    assert!(out.contains("5 replayed"), "{out}");
    wait_until(
        Duration::from_secs(30),
        "replayed deliveries arrive",
        || sink.count() == 5,
    )
    .await;
    let got = sink.received();
    let ids: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("x-webhook-delivery-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, dead_ids, "replay keeps the delivery ids");
    for r in &got {
        verify_signature(SECRET_A, r);
    }

    // Replaying again (say, after a crash mid-replay): the ids were just
    // delivered, so the dedup cache holds them back.
    replay(&[]);
    let m = running.metrics.clone();
    wait_until(
        Duration::from_secs(30),
        "second replay deduplicated",
        || {
            m.endpoint_counters("ep")
                .is_some_and(|c| c.deduplicated.get() == 5)
        },
    )
    .await;
    assert_eq!(sink.count(), 5);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_parked_record_is_dead_lettered_and_the_source_goes_on() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let running = start(config(kafka.bootstrap(), "damaged", "", &endpoints)).await;

    // A parked record whose due time is years away (the timer wheel would
    // panic on it), and one whose attempt count is negative.
    let value = events(28, "contact.created", 1).remove(0);
    let far = (chrono::Utc::now().timestamp_millis() + 10 * 365 * 86_400_000).to_string();
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let id = "6b1f3c52-9e0d-5a8b-9347-2d61c50e7f18";
    let headers = |due: &'static str, attempts: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("park.endpoint_id", "ep".into()),
            ("park.delivery_id", id.into()),
            ("park.reason", "retry".into()),
            (
                "park.due_ms",
                if due == "far" {
                    far.clone()
                } else {
                    now.clone()
                },
            ),
            ("park.not_before_ms", now.clone()),
            ("park.attempts", attempts.into()),
            ("park.first_attempt_ms", now.clone()),
            ("park.event_ms", now.clone()),
            ("park.source.topic", "events".into()),
            ("park.source.partition", "0".into()),
            ("park.source.offset", "0".into()),
        ]
    };
    for h in [headers("far", "1"), headers("now", "-1")] {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        support::kafka::produce_with_headers(
            kafka.bootstrap(),
            support::RETRY_TOPICS[0],
            vec![(value.clone(), h)],
        )
        .await;
    }
    let letters = read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        2,
        Duration::from_secs(30),
    );
    assert_eq!(letters.len(), 2);
    for l in &letters {
        assert_eq!(header(l, "dlq.stage"), Some("park"));
        assert_eq!(header(l, "dlq.reason"), Some("damaged"));
    }
    // And the pipeline still runs.
    let fresh = events(29, "contact.updated", 3);
    produce(kafka.bootstrap(), "events", &fresh).await;
    wait_until(
        Duration::from_secs(30),
        "new events still delivered",
        || sink.count() == 3,
    )
    .await;
    running
        .shutdown()
        .await
        .expect("a clean shutdown, not a failure");
}
