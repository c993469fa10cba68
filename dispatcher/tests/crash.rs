//! Kill the dispatcher process mid-stream with SIGKILL and start it again:
//! every (event, endpoint) is delivered at least once, and a duplicate always
//! carries the same delivery id. Then SIGTERM: a clean, zero-status exit.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dispatcher::seed::SeedEvents;
use support::kafka::{committed_total, produce};
use support::sink::{Behaviour, Sink};
use support::{config_yaml, raw_data, wait_until};

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start the dispatcher binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing_and_keeps_delivery_ids() {
    support::init_logging();
    // The broker lives in this process, so it survives the dispatcher's death.
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: everything\n    url: \"{}\"\n    events: [\"*\"]\n  - id: messages\n    url: \"{}\"\n    events: [\"message.*\"]\n",
        sink.url("/everything"),
        sink.url("/messages")
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatcher.yaml");
    std::fs::write(
        &config,
        config_yaml(
            kafka.bootstrap(),
            "crash",
            "  shutdown_grace: 5s\n",
            &endpoints,
        ),
    )
    .unwrap();

    let mut seeds = SeedEvents::new(5);
    let mut expected: HashSet<(String, &str)> = HashSet::new();
    let mut id_by_data: HashMap<String, String> = HashMap::new();
    let mut values = Vec::new();
    for _ in 0..3000 {
        let (ty, id, value) = seeds.next_event(chrono::Utc::now().timestamp_millis());
        expected.insert((id.clone(), "/everything"));
        if ty.starts_with("message.") {
            expected.insert((id.clone(), "/messages"));
        }
        id_by_data.insert(raw_data(&value), id);
        values.push(value);
    }
    produce(kafka.bootstrap(), "events", &values).await;

    let mut first = spawn(&config, &dir.path().join("first.log"));
    wait_until(
        Duration::from_secs(60),
        "the first run delivered some events",
        || sink.count() >= 500,
    )
    .await;
    first.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    first.wait().unwrap();
    let at_kill = sink.count();
    assert!(
        at_kill < expected.len(),
        "the kill must land mid-stream ({at_kill} delivered)"
    );

    let mut second = spawn(&config, &dir.path().join("second.log"));
    let covered = || -> HashSet<(String, &str)> {
        sink.received()
            .iter()
            .map(|r| {
                let id = id_by_data[&raw_data(&r.body)].clone();
                let path = if r.path == "/messages" {
                    "/messages"
                } else {
                    "/everything"
                };
                (id, path)
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(120),
        "every (event, endpoint) delivered after restart",
        || covered().len() == expected.len(),
    )
    .await;
    assert_eq!(covered(), expected);

    // Duplicates are allowed (at least once), but only with the same id.
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in sink.received() {
        let event = id_by_data[&raw_data(&r.body)].clone();
        ids.entry((event, r.path.clone()))
            .or_default()
            .insert(r.header("x-webhook-delivery-id").unwrap().to_owned());
    }
    for (pair, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "{pair:?} was delivered under several ids: {set:?}"
        );
    }
    eprintln!(
        "{} deliveries expected, {} received ({} duplicates after the kill)",
        expected.len(),
        sink.count(),
        sink.count() - expected.len()
    );

    // Graceful stop: SIGTERM drains, commits everything and exits 0.
    let bootstrap = kafka.bootstrap().to_owned();
    wait_until(Duration::from_secs(30), "all offsets committed", || {
        committed_total(&bootstrap, "crash", "events") == values.len() as i64
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || second.wait())
        .await
        .unwrap()
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}; log:\n{log}"
    );
    assert!(log.contains("stopped cleanly"), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_parking_loses_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Status(503)).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n    circuit_breaker: {{ min_requests: 100000 }}\n    retry: {{ schedule: [50ms, 2s, 2s, 2s, 2s, 2s, 2s, 2s, 2s, 2s, 2s], max_age: 10m }}\n",
        sink.url("/")
    );
    let yaml = config_yaml(kafka.bootstrap(), "park-crash", "", &endpoints);
    let mut seeds = SeedEvents::new(31);
    let values: Vec<Vec<u8>> = (0..400)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;

    let dir = tempfile::tempdir().unwrap();
    let first = support::Child::spawn(dir.path(), "first", &yaml, support::free_port());
    let series = "dispatcher_parked_total{endpoint=\"ep\",reason=\"retry\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while support::metric(&first.metrics().await, series) < 50.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first); // SIGKILL, mid-parking

    sink.set(Behaviour::Ok);
    let _second = support::Child::spawn(dir.path(), "second", &yaml, support::free_port());
    let produced: HashSet<String> = values.iter().map(|v| raw_data(v)).collect();
    wait_until(
        Duration::from_secs(120),
        "every event delivered after the crash",
        || {
            sink.received()
                .iter()
                .map(|r| raw_data(&r.body))
                .collect::<HashSet<_>>()
                == produced
        },
    )
    .await;
    support::assert_one_id_per_event(&sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_spilling_and_while_draining_loses_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let fast = Sink::start(Behaviour::Ok).await;
    // About 40 deliveries/s: far behind the source, so its backlog spills.
    let slow = Sink::start(Behaviour::Delay { ms: 50 }).await;
    let endpoints = format!(
        "  - id: fast\n    url: \"{}\"\n    events: [\"*\"]\n\
         \x20 - id: slow\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n    queue_capacity: 50\n",
        fast.url("/fast"),
        slow.url("/slow")
    );
    let yaml = config_yaml(
        kafka.bootstrap(),
        "spill-crash",
        "  spill_after: 300ms\n",
        &endpoints,
    );
    let mut seeds = SeedEvents::new(33);
    let values: Vec<Vec<u8>> = (0..600)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;
    let dir = tempfile::tempdir().unwrap();

    // Killed while it spills the slow endpoint's backlog.
    let first = support::Child::spawn(dir.path(), "first", &yaml, support::free_port());
    let spilled = "dispatcher_spilled_total{endpoint=\"slow\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while support::metric(&first.metrics().await, spilled) < 20.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never spilled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL

    // Killed again while it drains that backlog back from Kafka.
    let second = support::Child::spawn(dir.path(), "second", &yaml, support::free_port());
    let drained = "dispatcher_backlog_drained_total{endpoint=\"slow\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while support::metric(&second.metrics().await, drained) < 20.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second run never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slow.count() < values.len(),
        "the kill must land mid-drain ({} delivered)",
        slow.count()
    );
    drop(second); // SIGKILL

    let _third = support::Child::spawn(dir.path(), "third", &yaml, support::free_port());
    let produced: HashSet<String> = values.iter().map(|v| raw_data(v)).collect();
    let got = |sink: &Sink| -> HashSet<String> {
        sink.received().iter().map(|r| raw_data(&r.body)).collect()
    };
    wait_until(
        Duration::from_secs(120),
        "every event delivered to both endpoints after two crashes",
        || got(&fast) == produced && got(&slow) == produced,
    )
    .await;
    support::assert_one_id_per_event(&fast);
    support::assert_one_id_per_event(&slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_replay_and_replaying_again_loses_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Status(400)).await;
    let endpoints = format!(
        "  - id: ep\n    url: \"{}\"\n    events: [\"*\"]\n",
        sink.url("/")
    );
    let yaml = config_yaml(kafka.bootstrap(), "replay-crash", "", &endpoints);
    let running = support::start(support::config(
        kafka.bootstrap(),
        "replay-crash",
        "",
        &endpoints,
    ))
    .await;
    let mut seeds = SeedEvents::new(32);
    let values: Vec<Vec<u8>> = (0..300)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;
    let letters = support::kafka::read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        300,
        Duration::from_secs(60),
    );
    assert_eq!(letters.len(), 300);
    let dead_ids: HashSet<String> = letters
        .iter()
        .map(|l| {
            support::kafka::header(l, "dlq.delivery_id")
                .unwrap()
                .to_owned()
        })
        .collect();

    sink.set(Behaviour::Ok);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.yaml");
    std::fs::write(&file, yaml).unwrap();
    let replay = || {
        Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .args(["replay", "--config", file.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Killed as soon as it has replayed something (or at once if it is quick).
    let mut first = replay();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while sink.count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = replay();
    let status = tokio::task::spawn_blocking(move || second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    wait_until(
        Duration::from_secs(60),
        "every dead-lettered delivery replayed",
        || {
            sink.received()
                .iter()
                .map(|r| r.header("x-webhook-delivery-id").unwrap().to_owned())
                .collect::<HashSet<_>>()
                == dead_ids
        },
    )
    .await;
    support::assert_one_id_per_event(&sink);
    running.shutdown().await.unwrap();
}
