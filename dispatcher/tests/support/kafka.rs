//! Producing to and reading back from a Kafka-protocol broker in tests.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Produce `values` (with optional headers), waiting for each acknowledgement.
pub async fn produce(bootstrap: &str, topic: &str, values: &[Vec<u8>]) {
    produce_with_headers(
        bootstrap,
        topic,
        values.iter().map(|v| (v.clone(), vec![])).collect(),
    )
    .await
}

/// Records with their keys, each key's records in the given order on its
/// partition (the default partitioner hashes the key).
pub async fn produce_keyed(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer");
    let producer = &producer;
    let sends = records.iter().map(|(key, value)| async move {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(&value[..]),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    });
    futures::future::join_all(sends).await;
}

/// A record value with its headers.
pub type Record<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>);

pub async fn produce_with_headers(bootstrap: &str, topic: &str, records: Vec<Record<'_>>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "20000000")
        .set("linger.ms", "2")
        .create()
        .expect("test producer");
    let sends = records.iter().enumerate().map(|(i, (value, headers))| {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let key = format!("k{i}");
        let producer = &producer;
        async move {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value[..])
                .headers(h);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    futures::future::join_all(sends).await;
}

/// Read every record of `topic` from the beginning until `n` have been seen
/// (or `timeout` passes), without a consumer group.
pub fn read_all(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "20000000")
        .create()
        .expect("test consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        list.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

pub fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The offsets a group has committed on `topic`, summed over partitions.
pub fn committed_total(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("test consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}
