//! The Kafka transport against real Kafka-protocol brokers: librdkafka's
//! mock cluster (in process, with outages on demand) and, when `TANSU_BIN`
//! is set, the tansu broker. Records are read back with a real consumer.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use support::{seed, Ctx};
use transports::{Delivery, Outcome, Registry, Transport};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// One record as read back.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Read `topic` from the beginning until `expected` records arrived (and a
/// moment more, to see duplicates), or `within` passed.
async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Record> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "transport-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .expect("partition");
            }
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut done_at: Option<Instant> = None;
        while Instant::now() < deadline && done_at.is_none_or(|t| Instant::now() < t) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_owned(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            if out.len() >= expected && done_at.is_none() {
                done_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        out
    })
    .await
    .expect("reader")
}

fn kafka(ctx: &Ctx, settings: serde_json::Value) -> Arc<dyn Transport> {
    Registry::builtin()
        .get("kafka")
        .expect("kafka is built in")
        .build(&settings, &ctx.get())
        .expect("valid settings")
}

/// One delivery of every seed type, one of them with a trace context.
fn seed_deliveries(endpoint: &str) -> Vec<Delivery> {
    seed::EVENT_TYPES
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let mut event = seed::event(ty, i as u64);
            if i == 0 {
                event.traceparent = Some(Bytes::from_static(TRACEPARENT.as_bytes()));
            }
            seed::delivery(event, endpoint)
        })
        .collect()
}

/// What each delivery's record must look like.
fn check_records(deliveries: &[Delivery], records: &[Record]) {
    let by_id: HashMap<&str, &Record> = records
        .iter()
        .map(|r| (r.headers["x-webhook-delivery-id"].as_str(), r))
        .collect();
    assert_eq!(by_id.len(), deliveries.len(), "{records:#?}");
    for d in deliveries {
        let id = d.id.to_string();
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(r.value, d.body.to_vec(), "value is the envelope");
        let data: serde_json::Value = serde_json::from_slice(d.event.data()).unwrap();
        let want_key = match data.get("contact_id").and_then(|v| v.as_str()) {
            Some(contact) => contact.to_owned(),
            None => id.clone(),
        };
        assert_eq!(
            String::from_utf8_lossy(&r.key),
            want_key,
            "{}",
            d.event.event_type()
        );
        assert_eq!(r.headers["x-webhook-event"], d.event.event_type());
        assert_eq!(r.headers["x-webhook-id"], &*d.endpoint_id);
        match &d.event.traceparent {
            Some(tp) => assert_eq!(r.headers["traceparent"].as_bytes(), &tp[..]),
            None => assert!(!r.headers.contains_key("traceparent")),
        }
    }
}

#[tokio::test]
async fn records_arrive_with_the_key_and_headers() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("crm.events", 3, 1).unwrap();
    let ctx = Ctx::new(&mock.bootstrap_servers(), false);
    let transport = kafka(
        &ctx,
        json!({"topic": "crm.events", "key": "data.contact_id"}),
    );
    assert_eq!(transport.kind(), "kafka");

    let deliveries = seed_deliveries("crm-stream");
    for d in &deliveries {
        let outcome = transport.send(d).await;
        assert_eq!(
            outcome,
            Outcome::Delivered { status: None },
            "{}",
            d.event.event_type()
        );
    }
    let records = read_topic(
        &mock.bootstrap_servers(),
        "crm.events",
        deliveries.len(),
        Duration::from_secs(20),
    )
    .await;
    check_records(&deliveries, &records);
}

#[tokio::test]
async fn per_key_order_holds_over_concurrent_sends() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ordered", 4, 1).unwrap();
    let ctx = Ctx::new(&mock.bootstrap_servers(), false);
    // No linger: many small batches in flight at once, the harder case.
    let transport = kafka(
        &ctx,
        json!({"topic": "ordered", "key": "data.contact_id", "options": {"linger.ms": 0}}),
    );

    const N: u64 = 200;
    let deliveries: Vec<Delivery> = (0..N)
        .map(|i| {
            let data = json!({"contact_id": format!("contact-{}", i % 7), "seq": i});
            seed::delivery(seed::event_with("contact.updated", i, data), "ordered-ep")
        })
        .collect();
    // Issued in order, all in flight together, as a lane with a high
    // max_in_flight would.
    let outcomes = join_all(deliveries.iter().map(|d| transport.send(d))).await;
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(*o, Outcome::Delivered { status: None }, "send {i}");
    }

    let records = read_topic(
        &mock.bootstrap_servers(),
        "ordered",
        N as usize,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), N as usize);
    let mut per_key: BTreeMap<Vec<u8>, (i32, Vec<u64>)> = BTreeMap::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let seq = v["data"]["seq"].as_u64().unwrap();
        let entry = per_key
            .entry(r.key.clone())
            .or_insert((r.partition, Vec::new()));
        assert_eq!(entry.0, r.partition, "one key, one partition");
        entry.1.push(seq);
    }
    assert_eq!(per_key.len(), 7);
    for (key, (_, seqs)) in per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: out of order: {seqs:?}",
            String::from_utf8_lossy(&key)
        );
    }
}

/// Drive one delivery the way a lane does: retry on `Retry` (after
/// `retry_after`, or a short backoff), until it is delivered.
async fn until_delivered(
    transport: &dyn Transport,
    d: &Delivery,
    retries: &AtomicUsize,
) -> Duration {
    let started = Instant::now();
    for _ in 0..200 {
        match transport.send(d).await {
            Outcome::Delivered { .. } => return started.elapsed(),
            Outcome::Retry { retry_after, .. } => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(retry_after.unwrap_or(Duration::from_millis(200))).await;
            }
            other => panic!("unexpected outcome during an outage: {other:?}"),
        }
    }
    panic!("not delivered after 200 attempts");
}

#[tokio::test]
async fn a_broker_outage_is_retried_and_nothing_is_lost() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("outage", 2, 1).unwrap();
    let mut ctx = Ctx::new(&mock.bootstrap_servers(), false);
    // Short, so that the outage outlasts librdkafka's own attempts and the
    // transport answers Retry, as it would to a lane.
    ctx.timeout = Duration::from_millis(1500);
    let transport = kafka(&ctx, json!({"topic": "outage", "key": "data.contact_id"}));

    let deliveries: Vec<Delivery> = (0..60)
        .map(|i| {
            let data = json!({"contact_id": format!("c-{}", i % 5), "seq": i});
            seed::delivery(seed::event_with("contact.updated", i, data), "outage-ep")
        })
        .collect();
    let (before, during) = deliveries.split_at(20);
    let retries = AtomicUsize::new(0);
    for d in before {
        until_delivered(&*transport, d, &retries).await;
    }
    assert_eq!(
        retries.load(Ordering::Relaxed),
        0,
        "no retries while the broker is up"
    );

    mock.broker_down(1).unwrap();
    let outage = Duration::from_secs(4);
    let sends = join_all(
        during
            .iter()
            .map(|d| until_delivered(&*transport, d, &retries)),
    );
    let restore = async {
        tokio::time::sleep(outage).await;
        mock.broker_up(1).unwrap();
    };
    let (latencies, ()) = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(sends, restore)
    })
    .await
    .expect("everything delivered after the broker came back");

    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "the outage must surface as Retry outcomes"
    );
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest >= outage - Duration::from_millis(500),
        "slowest {slowest:?}"
    );

    // Nothing lost: every delivery id is in the topic (a retry after a
    // timeout may add a duplicate: at-least-once).
    let records = read_topic(
        &mock.bootstrap_servers(),
        "outage",
        deliveries.len(),
        Duration::from_secs(30),
    )
    .await;
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .map(|r| r.headers["x-webhook-delivery-id"].as_str())
        .collect();
    for d in &deliveries {
        assert!(ids.contains(d.id.to_string().as_str()), "{} lost", d.id);
    }
    eprintln!(
        "outage: {} retries, {} records for {} deliveries, slowest {slowest:?}",
        retries.load(Ordering::Relaxed),
        records.len(),
        deliveries.len()
    );
}

#[tokio::test]
async fn refusals_that_cannot_change_are_permanent() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("small", 1, 1).unwrap();
    mock.create_topic("forbidden", 1, 1).unwrap();
    let ctx = Ctx::new(&mock.bootstrap_servers(), false);

    // Larger than the producer may send: refused locally, at once.
    let small = kafka(
        &ctx,
        json!({"topic": "small", "options": {"message.max.bytes": 1000}}),
    );
    let big = seed::delivery(
        seed::event_with("contact.updated", 1, json!({"blob": "x".repeat(5000)})),
        "small-ep",
    );
    match small.send(&big).await {
        Outcome::Permanent {
            reason,
            disable_endpoint: false,
            ..
        } => {
            assert!(
                reason.contains("too large") || reason.contains("MessageSizeTooLarge"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The same transport still delivers what fits.
    let fits = seed::delivery(seed::event("contact.created", 2), "small-ep");
    assert_eq!(small.send(&fits).await, Outcome::Delivered { status: None });

    // An ACL refusal on the topic.
    mock.topic_error(
        "forbidden",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let forbidden = kafka(&ctx, json!({"topic": "forbidden"}));
    let d = seed::delivery(seed::event("contact.created", 3), "forbidden-ep");
    match forbidden.send(&d).await {
        Outcome::Permanent { reason, .. } => assert!(reason.contains("uthoriz"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn on_a_real_broker_records_arrive_with_the_key_and_headers() {
    let Some(bin) = support::tansu::bin() else {
        eprintln!("skipped: TANSU_BIN is not set (scripts/test sets it)");
        return;
    };
    let broker = support::tansu::Tansu::start(&bin);
    broker.create_topic("crm.events", 3).await;
    let ctx = Ctx::new(&broker.bootstrap(), false);
    let transport = kafka(
        &ctx,
        json!({"topic": "crm.events", "key": "data.contact_id"}),
    );

    let deliveries = seed_deliveries("crm-stream");
    for d in &deliveries {
        let outcome = transport.send(d).await;
        assert_eq!(
            outcome,
            Outcome::Delivered { status: None },
            "{}: {}",
            d.event.event_type(),
            broker.log()
        );
    }
    let records = read_topic(
        &broker.bootstrap(),
        "crm.events",
        deliveries.len(),
        Duration::from_secs(30),
    )
    .await;
    check_records(&deliveries, &records);
}
