use super::*;
use crate::embedded::EmbeddedKafka;
use rdkafka::ClientConfig;
use serde_json::json;

const TOPIC: &str = "dispatcher.endpoints";

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap()
}

fn reader(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", "store-test")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20");
    c
}

async fn open(
    kafka: &EmbeddedKafka,
) -> (
    Arc<Store>,
    mpsc::UnboundedReceiver<Change>,
    tokio::sync::watch::Sender<bool>,
) {
    let bad = prometheus::IntCounter::new("bad", "bad").unwrap();
    let (store, changes) = Store::new(TOPIC.into(), producer(kafka.bootstrap()), bad);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    Follower::start(store.clone(), reader(kafka.bootstrap()), stop_rx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), store.caught_up())
        .await
        .expect("caught up");
    (store, changes, stop)
}

fn endpoint(id: &str, url: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"id": id, "url": url, "events": ["*"]})
        .as_object()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_compare_and_set_through_the_log() {
    let kafka = EmbeddedKafka::start(&[TOPIC], 3).unwrap();
    let (store, mut changes, _stop) = open(&kafka).await;
    assert!(store.list().is_empty());

    let v1 = store
        .write(
            "crm",
            0,
            Some((
                endpoint("crm", "https://a.example/"),
                EndpointState::default(),
            )),
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    assert_eq!(
        store.get("crm").unwrap().endpoint["url"],
        "https://a.example/"
    );
    assert!(matches!(changes.recv().await, Some(Change::Upsert { ref id, .. }) if id == "crm"));

    // A writer that read version 0 too comes second: refused, nothing changes.
    let stale = store
        .write(
            "crm",
            0,
            Some((
                endpoint("crm", "https://b.example/"),
                EndpointState::default(),
            )),
        )
        .await;
    assert!(
        matches!(stale, Err(WriteError::Conflict { current: 1 })),
        "{stale:?}"
    );
    assert_eq!(
        store.get("crm").unwrap().endpoint["url"],
        "https://a.example/"
    );

    let paused = EndpointState {
        paused: true,
        disabled: false,
    };
    assert_eq!(
        store
            .write(
                "crm",
                1,
                Some((endpoint("crm", "https://b.example/"), paused))
            )
            .await
            .unwrap(),
        2
    );
    assert!(store.get("crm").unwrap().state.paused);

    // Delete, then create again: versions go on, so a stale writer from
    // before the delete cannot bring the old endpoint back.
    assert_eq!(store.write("crm", 2, None).await.unwrap(), 3);
    assert!(store.get("crm").is_none());
    assert_eq!(store.version("crm"), 3);
    let resurrect = store
        .write(
            "crm",
            1,
            Some((
                endpoint("crm", "https://old.example/"),
                EndpointState::default(),
            )),
        )
        .await;
    assert!(matches!(
        resurrect,
        Err(WriteError::Conflict { current: 3 })
    ));
    assert_eq!(
        store
            .write(
                "crm",
                3,
                Some((
                    endpoint("crm", "https://c.example/"),
                    EndpointState::default()
                ))
            )
            .await
            .unwrap(),
        4
    );
    let mut seen = Vec::new();
    while let Ok(c) = changes.try_recv() {
        seen.push(c);
    }
    assert!(seen
        .iter()
        .any(|c| matches!(c, Change::Delete { id, .. } if id == "crm")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_is_skipped_and_a_new_replica_reads_the_same_table() {
    let kafka = EmbeddedKafka::start(&[TOPIC], 3).unwrap();
    let (store, _changes, _stop) = open(&kafka).await;
    store
        .write(
            "a",
            0,
            Some((
                endpoint("a", "https://a.example/"),
                EndpointState::default(),
            )),
        )
        .await
        .unwrap();
    // Garbage written straight into the topic, a record whose endpoint
    // names another id, and one whose endpoint is not an object.
    let p = producer(kafka.bootstrap());
    for (key, value) in [
        ("a", b"\x00 not json".to_vec()),
        (
            "b",
            serde_json::to_vec(&json!({"version": 1, "endpoint": {"id": "c", "events": ["*"]}}))
                .unwrap(),
        ),
        (
            "e",
            serde_json::to_vec(&json!({"version": 1, "endpoint": ["e", ["*"]]})).unwrap(),
        ),
        // A version 2 of `a` that a full parse refuses (a number out of
        // range), though skipping over the value would not notice.
        (
            "a",
            br#"{"version": 2, "endpoint": {"id": "a", "events": ["*"], "max_in_flight": 1e400}}"#
                .to_vec(),
        ),
    ] {
        p.send(
            FutureRecord::<str, [u8]>::to(TOPIC)
                .key(key)
                .payload(&value),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    store
        .write(
            "d",
            0,
            Some((
                endpoint("d", "https://d.example/"),
                EndpointState::default(),
            )),
        )
        .await
        .unwrap();
    // The garbage lies on other partitions than d's: the follower reads
    // them in its own time, not before d's write comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.bad_records.get() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.bad_records.get(), 4);
    assert_eq!(
        store.get("a").unwrap().version,
        1,
        "the previous version stays"
    );
    assert!(store.get("b").is_none() && store.get("c").is_none() && store.get("e").is_none());

    // A second replica, starting now, catches up to the same endpoints.
    let (other, mut other_changes, _s) = open(&kafka).await;
    let ids = |s: &Store| s.list().into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(&other), vec!["a", "d"]);
    assert_eq!(ids(&store), ids(&other));
    assert_eq!(other.len(), 2);
    let d = other.get("d").unwrap();
    assert_eq!(d.endpoint, endpoint("d", "https://d.example/"));
    assert_eq!(Some(&d), store.get("d").as_ref());
    // What it read while catching up is in its table, for whoever applies
    // endpoints to read then; only later records come as changes.
    assert!(
        other_changes.try_recv().is_err(),
        "records read before the catch-up came as changes too"
    );
    store.write("d", 1, None).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), other_changes.recv()).await;
    assert!(
        matches!(change, Ok(Some(Change::Delete { ref id, version: 2 })) if id == "d"),
        "{change:?}"
    );
}
