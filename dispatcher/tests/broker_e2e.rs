//! End to end against a real Kafka-protocol broker process (tansu), started
//! here on 127.0.0.1: the seed event types reach exactly their subscribers,
//! signed, and malformed records (a 10 MB one among them) are dead-lettered
//! while the partition keeps flowing.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use dispatcher::seed::{SeedEvents, EVENT_TYPES};
use rdkafka::message::Message;
use support::kafka::{committed_total, header, produce, read_all};
use support::sink::{Behaviour, Sink};
use support::tansu::{dispatcher_broker as broker, tansu_available, Tansu};
use support::{config, raw_data, start, verify_signature, wait_until, SECRET_A, SECRET_B};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_fan_out_and_dead_letters() {
    support::init_logging();
    let Some(broker) = broker(4).await else {
        return;
    };

    let all = Sink::start(Behaviour::Ok).await;
    let messages = Sink::start(Behaviour::Ok).await;
    let campaigns = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        r#"
  - id: all
    url: "{}"
    secret: "{SECRET_A}"
    events: ["*"]
  - id: messages
    url: "{}"
    secrets: ["{SECRET_B}", "{SECRET_A}"]
    events: ["message.*"]
  - id: campaigns
    url: "{}"
    secret: "{SECRET_B}"
    events: [campaign.completed]
"#,
        all.url("/"),
        messages.url("/"),
        campaigns.url("/")
    );
    let running = start(config(&broker.bootstrap(), "e2e", "", &endpoints)).await;

    let mut seeds = SeedEvents::new(9);
    let mut values = Vec::new();
    for _ in 0..4 {
        for ty in EVENT_TYPES {
            values.push((
                ty.to_string(),
                seeds.event(ty, chrono::Utc::now().timestamp_millis()).1,
            ));
        }
    }
    let garbage = b"\x00\x01 definitely not json".to_vec();
    let ten_mb = format!(
        r#"{{"event":"message.received","data":{{"text":"{}"}}}}"#,
        "z".repeat(10 << 20)
    )
    .into_bytes();
    let mut records: Vec<Vec<u8>> = values.iter().map(|(_, v)| v.clone()).collect();
    records.insert(5, garbage.clone());
    records.insert(20, ten_mb.clone());
    produce(&broker.bootstrap(), "events", &records).await;

    let expect = |pred: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        values
            .iter()
            .filter(|(t, _)| pred(t))
            .map(|(_, v)| raw_data(v))
            .collect()
    };
    let cases = [
        (&all, expect(&|_| true), SECRET_A),
        (&messages, expect(&|t| t.starts_with("message.")), SECRET_B),
        (&campaigns, expect(&|t| t == "campaign.completed"), SECRET_B),
    ];
    let total: usize = cases.iter().map(|c| c.1.len()).sum();
    wait_until(
        Duration::from_secs(90),
        "every delivery on the real broker",
        || cases.iter().map(|c| c.0.count()).sum::<usize>() >= total,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (sink, expected, secret) in &cases {
        let got = sink.received();
        let data: BTreeSet<String> = got.iter().map(|r| raw_data(&r.body)).collect();
        assert_eq!(
            &data, expected,
            "data byte-identical, and exactly the subscribed events"
        );
        assert_eq!(got.len(), expected.len(), "no duplicates in a clean run");
        for r in &got {
            verify_signature(secret, r);
            assert!(r.header("x-webhook-delivery-id").is_some());
        }
    }
    // Rotation: both secrets sign, so receivers on either one verify.
    for r in messages.received() {
        verify_signature(SECRET_A, &r);
        assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    }

    let letters = read_all(
        &broker.bootstrap(),
        "dispatcher.dlq",
        2,
        Duration::from_secs(30),
    );
    let reasons: BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| header(l, "dlq.reason"))
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["not_json", "oversized"]),
        "{} letters",
        letters.len()
    );
    for l in &letters {
        let payload = l.payload().unwrap_or_default();
        let original = if header(l, "dlq.reason") == Some("oversized") {
            &ten_mb
        } else {
            &garbage
        };
        match header(l, "dlq.truncated_from_bytes") {
            Some(size) => {
                assert_eq!(size.parse::<usize>().unwrap(), original.len());
                assert_eq!(payload, &original[..payload.len()]);
            }
            None => assert_eq!(payload, &original[..]),
        }
    }
    let bootstrap = broker.bootstrap();
    wait_until(
        Duration::from_secs(30),
        "offsets committed to the end",
        || committed_total(&bootstrap, "e2e", "events") == records.len() as i64,
    )
    .await;
    running.shutdown().await.unwrap();
}

/// Two dispatchers share a group; one joins mid-stream and the first one
/// leaves later. Revoked partitions commit what is final before they move,
/// so nothing is lost and the group's offsets end exactly at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_hand_partitions_over_without_loss() {
    support::init_logging();
    let Some(broker) = broker(6).await else {
        return;
    };
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: all\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let cfg = config(
        &broker.bootstrap(),
        "rebalance",
        "  max_events_in_flight: 64\n",
        &endpoints,
    );

    let mut seeds = SeedEvents::new(11);
    let values: Vec<Vec<u8>> = (0..6000)
        .map(|_| seeds.next_event(1_700_000_000_000).2)
        .collect();
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    let (before, after) = values.split_at(3000);
    produce(&broker.bootstrap(), "events", before).await;

    let first = start(cfg.clone()).await;
    wait_until(
        Duration::from_secs(60),
        "first dispatcher under way",
        || sink.count() >= 200,
    )
    .await;
    let second = start(cfg).await;
    // The first may have drained its whole backlog by the time the group
    // has rebalanced (seconds on this broker): the second half is written
    // once the second owns partitions, so that both have work.
    wait_until(
        Duration::from_secs(60),
        "the second dispatcher assigned",
        || second.metrics.assigned_partitions.get() > 0,
    )
    .await;
    produce(&broker.bootstrap(), "events", after).await;
    wait_until(
        Duration::from_secs(60),
        "both dispatchers delivering",
        || {
            second
                .metrics
                .events_consumed
                .with_label_values(&["events"])
                .get()
                > 0
        },
    )
    .await;
    first.shutdown().await.unwrap();

    wait_until(Duration::from_secs(120), "every event delivered", || {
        sink.received()
            .iter()
            .map(|r| raw_data(&r.body))
            .collect::<BTreeSet<_>>()
            == produced
    })
    .await;
    let bootstrap = broker.bootstrap();
    wait_until(
        Duration::from_secs(30),
        "the group committed to the end",
        || committed_total(&bootstrap, "rebalance", "events") == values.len() as i64,
    )
    .await;
    eprintln!(
        "{} events, {} deliveries across the rebalances",
        values.len(),
        sink.count()
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_a_slow_and_a_rate_limited_endpoint_do_not_slow_the_fast_ones() {
    support::init_logging();
    let Some(broker) = broker(4).await else {
        return;
    };
    let fast = Sink::start(Behaviour::Ok).await;
    // 20 deliveries/s at best, and a limit of 20/s.
    let slow = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let limited = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: fast-a\n    url: \"{}\"\n    events: [\"*\"]\n\
         \x20 - id: fast-b\n    url: \"{}\"\n    events: [\"*\"]\n\
         \x20 - id: slow\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n\
         \x20 - id: limited\n    url: \"{}\"\n    events: [\"*\"]\n    rate_limit: {{ per_second: 20 }}\n",
        fast.url("/a"),
        fast.url("/b"),
        slow.url("/slow"),
        limited.url("/limited")
    );
    // Fetches answered at once (tansu answers a waiting fetch only when
    // the wait ends).
    let pipeline = "  spill_after: 500ms\n";
    let mut cfg = config(&broker.bootstrap(), "isolation-e2e", pipeline, &endpoints);
    cfg.kafka.options.insert(
        "fetch.wait.max.ms".into(),
        dispatcher::config::Scalar("20".into()),
    );
    let running = start(cfg).await;

    let mut seeds = SeedEvents::new(44);
    let values: Vec<Vec<u8>> = (0..300)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    // Two bursts: by the second, the fast endpoints move on to events newer
    // than what the slow ones hold, so those lag the others and spill.
    produce(&broker.bootstrap(), "events", &values[..150]).await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(&broker.bootstrap(), "events", &values[150..]).await;
    wait_until(
        Duration::from_secs(90),
        "the fast endpoints got every event",
        || fast.data_at("/a") == produced && fast.data_at("/b") == produced,
    )
    .await;
    let fast_done = started.elapsed();
    // The slow and the limited endpoints need 15 s each for 300 events.
    assert!(
        fast_done < Duration::from_secs(10),
        "the fast endpoints took {fast_done:?}"
    );
    assert!(slow.count() < values.len() && limited.count() < values.len());
    wait_until(
        Duration::from_secs(120),
        "the slow and the limited endpoints got every event, later",
        || slow.data_at("/slow") == produced && limited.data_at("/limited") == produced,
    )
    .await;
    for sink in [&fast, &slow, &limited] {
        support::assert_one_id_per_event(sink);
    }
    let m = running.metrics.clone();
    assert!(m.endpoint_counters("slow").map_or(0, |c| c.spilled.get()) > 0);
    assert!(
        m.endpoint_counters("limited")
            .map_or(0, |c| c.spilled.get())
            > 0
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_the_dispatchers_topics_are_created_and_checked() {
    support::init_logging();
    if !tansu_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "TANSU_BIN is required in CI"
        );
        return;
    }
    // A bare broker: only the source topic exists.
    let broker = Tansu::start();
    broker.create_topic("events", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.yaml");
    std::fs::write(
        &file,
        support::config_yaml(
            &broker.bootstrap(),
            "topics",
            "",
            "  - id: a\n    url: \"http://127.0.0.1:9/\"\n    events: [\"*\"]\n",
        ),
    )
    .unwrap();
    let cli = |action: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .args(["topics", action, "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let before = cli("check");
    assert!(!before.status.success(), "missing topics are a failure");
    let text = String::from_utf8_lossy(&before.stdout);
    for topic in [
        "dispatcher.dlq",
        "dispatcher.spill",
        "dispatcher.endpoints",
        "dispatcher.retry.500ms",
        "dispatcher.retry.2s",
    ] {
        assert!(text.contains(topic), "{topic} named as missing: {text}");
    }
    let created = cli("create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let after = cli("check");
    assert!(
        after.status.success(),
        "{}{}",
        String::from_utf8_lossy(&after.stdout),
        String::from_utf8_lossy(&after.stderr)
    );
    // And a dispatcher with kafka.create_topics (the default) starts on a
    // broker that has only its source topic.
    let fresh = Tansu::start();
    fresh.create_topic("events", 2).await;
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: a\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let running = start(config(&fresh.bootstrap(), "fresh", "", &endpoints)).await;
    let mut seeds = SeedEvents::new(45);
    let values: Vec<Vec<u8>> = (0..5)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(&fresh.bootstrap(), "events", &values).await;
    wait_until(Duration::from_secs(60), "delivered", || sink.count() >= 5).await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_two_replicas_apply_store_changes_and_agree_on_pauses() {
    support::init_logging();
    let Some(broker) = broker(4).await else {
        return;
    };
    let sink = Sink::start(Behaviour::Ok).await;
    let pipeline = "";
    let cfg = || {
        let mut c = config(&broker.bootstrap(), "two-replicas", pipeline, "");
        c.kafka.options.insert(
            "fetch.wait.max.ms".into(),
            dispatcher::config::Scalar("20".into()),
        );
        // The broker waits this long (the rebalance timeout) for members
        // of the previous generation before it completes a join.
        c.kafka.options.insert(
            "max.poll.interval.ms".into(),
            dispatcher::config::Scalar("15000".into()),
        );
        c
    };
    // Both join at once: the broker's group join takes long, and longer
    // with a second member arriving.
    let two = || async {
        let a = dispatcher::app::start(cfg()).await.unwrap();
        let b = dispatcher::app::start(cfg()).await.unwrap();
        (a, b)
    };
    let assigned = |r: &dispatcher::app::Running| {
        support::metric(&r.metrics.render(), "dispatcher_assigned_partitions")
    };
    let (a, b) = two().await;
    wait_until(
        Duration::from_secs(120),
        "both replicas own partitions",
        || assigned(&a) > 0.0 && assigned(&b) > 0.0,
    )
    .await;

    // Created through replica a: both apply it, so events from every
    // partition (some are b's) reach it.
    let spec = serde_json::json!({"id": "shared", "url": sink.url("/"), "events": ["*"]})
        .as_object()
        .unwrap()
        .clone();
    let running = dispatcher::store::EndpointState::default();
    a.store
        .write("shared", 0, Some((spec.clone(), running)))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "replica b read the change", || {
        b.store.get("shared").is_some()
    })
    .await;
    let mut seeds = SeedEvents::new(46);
    let mut batch = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
            .collect()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = batch(40);
    produce(&broker.bootstrap(), "events", &first).await;
    let want: BTreeSet<String> = first.iter().map(|v| raw_data(v)).collect();
    let got = |sink: &Sink| -> BTreeSet<String> {
        sink.received().iter().map(|r| raw_data(&r.body)).collect()
    };
    wait_until(
        Duration::from_secs(60),
        "every partition's events arrive",
        || got(&sink) == want,
    )
    .await;

    // Paused through replica b: a honours it too.
    let paused = dispatcher::store::EndpointState {
        paused: true,
        disabled: false,
    };
    b.store
        .write("shared", 1, Some((spec.clone(), paused)))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "replica a read the pause", || {
        a.store.get("shared").is_some_and(|s| s.state.paused)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = batch(20);
    produce(&broker.bootstrap(), "events", &second).await;
    // And the pause survives a restart of both: each reads it back from the
    // store before it starts (its group join, slow on this broker, is not
    // what is tested here, so one member is enough to consume).
    // One at a time, each once the group has settled: this broker keeps a
    // member that leaves in the middle of a rebalance for minutes, which
    // would hold the next join (Kafka would drop it after its session).
    let total = assigned(&a) + assigned(&b);
    a.shutdown().await.unwrap();
    wait_until(
        Duration::from_secs(120),
        "replica b took over every partition",
        || assigned(&b) == total,
    )
    .await;
    b.shutdown().await.unwrap();
    let a = dispatcher::app::start(cfg()).await.unwrap();
    let b = dispatcher::app::start(cfg()).await.unwrap();
    assert!(
        a.store.get("shared").is_some_and(|s| s.state.paused)
            && b.store.get("shared").is_some_and(|s| s.state.paused),
        "both read the pause back from the store at start"
    );
    let ready = |r: &dispatcher::app::Running| r.ready.load(std::sync::atomic::Ordering::Acquire);
    wait_until(Duration::from_secs(120), "a replica joined again", || {
        ready(&a) || ready(&b)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        got(&sink),
        want,
        "nothing is sent while paused, restarts included"
    );

    a.store
        .write("shared", 2, Some((spec, running)))
        .await
        .unwrap();
    let all: BTreeSet<String> = want
        .union(&second.iter().map(|v| raw_data(v)).collect())
        .cloned()
        .collect();
    // 120 s: the second member may join meanwhile, and the broker's
    // rebalance takes long.
    wait_until(
        Duration::from_secs(120),
        "resumed, the paused events arrive",
        || got(&sink) == all,
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Start-up on a real broker, a benchmark (ignored): from `start` to the
/// first delivery, against a bare rdkafka consumer that joins a group of
/// the same shape (the same topics: source, retry tiers, spill) and reads
/// its first record. `SESSION_TIMEOUT_MS` sets both clients'
/// `session.timeout.ms`; unset, each keeps its default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: see docs/benchmarks.md"]
async fn start_up_to_first_delivery_against_a_bare_consumer() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    support::init_logging();
    let Some(broker) = broker(8).await else {
        return;
    };
    let bootstrap = broker.bootstrap();
    let session = std::env::var("SESSION_TIMEOUT_MS")
        .ok()
        .filter(|s| !s.is_empty());
    let mut seeds = SeedEvents::new(9);
    let now = chrono::Utc::now().timestamp_millis();
    produce(&bootstrap, "events", &[seeds.next_event(now).2]).await;

    let mut topics = vec!["events"];
    topics.extend(support::RETRY_TOPICS);
    topics.push(support::SPILL_TOPIC);
    let mut bare = rdkafka::ClientConfig::new();
    bare.set("bootstrap.servers", &bootstrap)
        .set("group.id", "bare-start")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if let Some(s) = &session {
        bare.set("session.timeout.ms", s);
    }
    let started = std::time::Instant::now();
    let consumer: StreamConsumer = bare.create().unwrap();
    consumer.subscribe(&topics).unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), consumer.recv())
            .await
            .expect("the bare consumer read nothing in 120 s")
            .unwrap();
        if m.topic() == "events" {
            break;
        }
    }
    let bare_first = started.elapsed();
    drop(consumer);

    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: all\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let mut cfg = config(&bootstrap, "dispatcher-start", "", &endpoints);
    // The test config's short group timings out: the defaults, or the given one.
    cfg.kafka.options.remove("session.timeout.ms");
    cfg.kafka.options.remove("heartbeat.interval.ms");
    if let Some(s) = &session {
        cfg.kafka.options.insert(
            "session.timeout.ms".into(),
            dispatcher::config::Scalar(s.clone()),
        );
    }
    let started = std::time::Instant::now();
    let running = dispatcher::app::start(cfg)
        .await
        .expect("dispatcher starts");
    wait_until(Duration::from_secs(120), "the first delivery", || {
        sink.count() > 0
    })
    .await;
    let dispatcher_first = started.elapsed();
    println!(
        "start to first record on tansu ({} partitions, session.timeout.ms {}): bare consumer {:.1} s, dispatcher (first delivery) {:.1} s",
        8 + 2 * support::RETRY_TOPICS.len() + support::SPILL_PARTITIONS as usize,
        session.as_deref().unwrap_or("default"),
        bare_first.as_secs_f64(),
        dispatcher_first.as_secs_f64()
    );
    running.shutdown().await.unwrap();
}
