//! `dispatcher replay` of dead letters that are deliveries without being of
//! stage `delivery`: parked deliveries whose endpoint had gone from the
//! config (`unknown_endpoint`), replayed once it is back.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use dispatcher::seed::SeedEvents;
use support::kafka::{committed_total, header, produce, read_all};
use support::sink::{Behaviour, Sink};
use support::{config, config_yaml, start, wait_until};

/// `dispatcher replay --config FILE`, its summary line(s).
fn replay(dir: &Path, name: &str, yaml: &str) -> String {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["replay", "--config", file.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_dead_letters_are_replayed_once_the_endpoint_is_back() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let bootstrap = kafka.bootstrap().to_owned();
    let group = "replay-unknown";
    let sink = Sink::start(Behaviour::Ok).await;
    let with_ep = |paused: bool| {
        format!(
            "  - id: ep\n    url: \"{}\"\n    events: [contact.created]\n    paused: {paused}\n",
            sink.url("/")
        )
    };
    // Subscribed to nothing that is produced: the endpoint `ep` is simply gone.
    let without_ep = format!(
        "  - id: other\n    url: \"{}\"\n    events: [conversation.closed]\n",
        sink.url("/other")
    );

    // 1. `ep` is paused: its deliveries wait in Kafka (the spill topic).
    let running = start(config(&bootstrap, group, "", &with_ep(true))).await;
    let mut seed = SeedEvents::new(61);
    let values: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            seed.event("contact.created", chrono::Utc::now().timestamp_millis())
                .1
        })
        .collect();
    produce(&bootstrap, "events", &values).await;
    let m = running.metrics.clone();
    wait_until(Duration::from_secs(30), "deliveries spilled", || {
        m.endpoint_counters("ep").map_or(0, |c| c.spilled.get()) >= 3
            && committed_total(&bootstrap, group, "events") == 3
    })
    .await;
    running.shutdown().await.unwrap();

    // 2. The config loses `ep`: the waiting deliveries come back to a
    //    dispatcher that does not know it, and are dead-lettered.
    let running = start(config(&bootstrap, group, "", &without_ep)).await;
    let ids_of = |letters: &[rdkafka::message::OwnedMessage]| -> BTreeSet<String> {
        letters
            .iter()
            .map(|l| header(l, "park.delivery_id").unwrap_or_default().to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut letters = Vec::new();
    while ids_of(&letters).len() < 3 && std::time::Instant::now() < deadline {
        letters = read_all(&bootstrap, "dispatcher.dlq", 1000, Duration::from_secs(2));
    }
    running.shutdown().await.unwrap();
    let letters = read_all(&bootstrap, "dispatcher.dlq", 1000, Duration::from_secs(2));
    for l in &letters {
        assert_eq!(header(l, "dlq.stage"), Some("park"));
        assert_eq!(header(l, "dlq.reason"), Some("unknown_endpoint"));
        assert_eq!(header(l, "park.endpoint_id"), Some("ep"));
    }
    let dead_ids = ids_of(&letters);
    assert_eq!(
        dead_ids.len(),
        3,
        "one unknown_endpoint dead letter per delivery at least"
    );
    let n = letters.len();

    let dir = tempfile::tempdir().unwrap();
    // 3. Replayed with a config that still lacks `ep`: nothing is sent, and
    //    the summary says why.
    let out = replay(
        dir.path(),
        "without",
        &config_yaml(&bootstrap, group, "", &without_ep),
    );
    assert!(
        out.contains(&format!("{n} matched, 0 replayed"))
            && out.contains(&format!(
                "{n} left for endpoints that neither the config nor the endpoint store has"
            )),
        "{out}"
    );

    // 4. `ep` is back: replay hands them to it, under their delivery ids.
    let running = start(config(&bootstrap, group, "", &with_ep(false))).await;
    let yaml = config_yaml(&bootstrap, group, "", &with_ep(false));
    let out = replay(dir.path(), "with", &yaml);
    assert!(out.contains(&format!("{n} matched, {n} replayed")), "{out}");
    assert!(out.contains(&format!("ep: {n}")), "{out}");
    wait_until(
        Duration::from_secs(30),
        "replayed deliveries arrive",
        || sink.count() >= 3,
    )
    .await;
    let ids: BTreeSet<String> = sink
        .received()
        .iter()
        .map(|r| r.header("x-webhook-delivery-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, dead_ids, "replay keeps the delivery ids");
    let data: BTreeSet<String> = sink
        .received()
        .iter()
        .map(|r| support::raw_data(&r.body))
        .collect();
    let produced: BTreeSet<String> = values.iter().map(|v| support::raw_data(v)).collect();
    assert_eq!(data, produced, "each event arrives as it was produced");
    running.shutdown().await.unwrap();
}
