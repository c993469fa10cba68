//! Follows the endpoints topic from its beginning, every partition, with a
//! consumer of its own in no group: each replica reads all of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Store, VERSION_HEADER};
use crate::kafka::header_str;

pub struct Follower;

impl Follower {
    /// Assign every partition of the store's topic from the beginning and
    /// follow it until `stop`; the store is caught up once every partition
    /// was read to where it ended at start.
    pub async fn start(
        store: Arc<Store>,
        config: ClientConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let consumer: StreamConsumer = config
            .create()
            .context("creating the endpoint store's consumer")?;
        let topic = store.topic().to_owned();
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(15))
                .with_context(|| format!("reading the metadata of the endpoints topic `{topic}`"))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if partitions.is_empty() {
                anyhow::bail!(
                    "kafka.endpoints_topic: topic `{topic}` does not exist (create it, or let kafka.create_topics do it)"
                );
            }
            let mut ends = HashMap::new();
            let mut list = TopicPartitionList::new();
            for p in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(15))
                    .with_context(|| format!("reading the end of {topic}/{p}"))?;
                if high > low {
                    ends.insert(p, high);
                }
                list.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
            Ok::<_, anyhow::Error>((consumer, ends))
        })
        .await??;
        if ends.is_empty() {
            store.mark_caught_up();
        }
        Ok(tokio::spawn(async move {
            let mut behind = ends;
            loop {
                let msg = tokio::select! {
                    _ = stop.changed() => return,
                    m = tokio::time::timeout(Duration::from_millis(200), consumer.recv()) => m,
                };
                match msg {
                    Ok(Ok(m)) => {
                        let version = header_str(&m, VERSION_HEADER).and_then(|v| v.parse().ok());
                        store.apply(m.partition(), m.offset(), m.key(), m.payload(), version);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "endpoint store consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => {}
                }
                if !behind.is_empty() {
                    // Compaction leaves gaps: the position says how far the
                    // reading got, whatever records remain.
                    if let Ok(positions) = consumer.position() {
                        for e in positions.elements() {
                            if let (Offset::Offset(at), Some(&end)) =
                                (e.offset(), behind.get(&e.partition()))
                            {
                                if at >= end {
                                    behind.remove(&e.partition());
                                }
                            }
                        }
                    }
                    if behind.is_empty() {
                        store.mark_caught_up();
                        tracing::info!(topic = %store.topic(), endpoints = store.len(), "endpoint store caught up");
                    }
                }
            }
        }))
    }
}
