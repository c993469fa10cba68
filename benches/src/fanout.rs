//! The real dispatcher under load: an embedded Kafka pre-filled with seed
//! events, every endpoint subscribed to everything, all pointing at one sink.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dispatcher::config::{Config, EndpointConfig, KafkaConfig};
use dispatcher::embedded::EmbeddedKafka;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde::Serialize;

use crate::sink::Sink;
use crate::workload::{Record, SECRET};

/// The topic the dispatcher reads.
pub const SOURCE_TOPIC: &str = "bench.events";

/// `sink-0`, `sink-1`, …: one id per endpoint.
pub fn endpoint_ids(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("sink-{k}")).collect()
}

/// The path of an endpoint's URL on the sink.
pub fn endpoint_path(id: &str) -> String {
    format!("/webhooks/{id}")
}

/// An embedded Kafka with the source topic and the topics the dispatcher
/// writes to, each of `partitions` partitions.
pub fn start_kafka(partitions: i32) -> anyhow::Result<EmbeddedKafka> {
    let defaults = KafkaConfig::default();
    let tiers = dispatcher::park::Tiers::new(
        &defaults.retry_topic,
        &defaults.retry_tiers,
        &defaults.spill_topic,
    );
    let mut topics = vec![
        SOURCE_TOPIC,
        defaults.dead_letter_topic.as_str(),
        defaults.endpoints_topic.as_str(),
    ];
    topics.extend(tiers.internal_topics());
    EmbeddedKafka::start(&topics, partitions)
}

/// Produce `records` round-robin over `partitions` partitions of the source
/// topic, wait until all are acknowledged, and check that the broker holds
/// exactly them (the embedded Kafka drops old data past its per-partition
/// limits). Blocks: call it from a blocking thread.
pub fn prefill(
    bootstrap: &str,
    partitions: i32,
    records: &[Record],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("creating the pre-fill producer")?;
    for (record, partition) in records.iter().zip((0..partitions).cycle()) {
        let mut pending = BaseRecord::<str, [u8]>::to(SOURCE_TOPIC)
            .partition(partition)
            .key(record.key.as_str())
            .payload(&record.value[..]);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() > deadline {
                        bail!("pre-filling {SOURCE_TOPIC}: the producer queue stayed full until the timeout");
                    }
                    pending = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).context("pre-filling the source topic"),
            }
        }
    }
    producer
        .flush(deadline.saturating_duration_since(Instant::now()))
        .context("waiting for the pre-filled records to be acknowledged")?;

    let mut stored = 0i64;
    for partition in 0..partitions {
        let (low, high) = producer
            .client()
            .fetch_watermarks(SOURCE_TOPIC, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of partition {partition}"))?;
        if low > 0 {
            bail!(
                "the embedded Kafka dropped the oldest records of partition {partition} \
                 (it keeps about 5 MiB / 100k records per partition): use more partitions or fewer events"
            );
        }
        stored += high - low;
    }
    if usize::try_from(stored).ok() != Some(records.len()) {
        bail!(
            "the source topic holds {stored} records, {} were produced",
            records.len()
        );
    }
    Ok(())
}

/// A dispatcher configuration: one endpoint per id, all subscribed to `*`,
/// signing with a `whsec_` secret, `max_in_flight` each, all on `sink`.
pub fn config(bootstrap: &str, sink: &Sink, ids: &[String], max_in_flight: usize) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = Some(bootstrap.to_owned());
    config.kafka.topics = vec![SOURCE_TOPIC.to_owned()];
    config.kafka.group_id = "fanout-vs-bare".to_owned();
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.allowed_networks = vec!["127.0.0.0/8".into()];
    config.endpoints = ids
        .iter()
        .map(|id| EndpointConfig {
            id: id.clone(),
            settings: serde_json::json!({ "url": sink.url(&endpoint_path(id)), "secret": SECRET })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            events: vec!["*".to_owned()],
            timeout: Duration::from_secs(10),
            max_in_flight,
            ..Default::default()
        })
        .collect();
    config
}

/// Timings of one dispatcher run.
#[derive(Debug, Clone, Copy)]
pub struct DispatcherRun {
    /// From `app::start` until every expected delivery was delivered.
    pub elapsed: Duration,
    /// From `app::start` until the first delivery (group join, first fetch).
    pub first_delivery: Duration,
    pub occupancy: Occupancy,
}

/// How full the pipeline was, from the dispatcher's gauges sampled every
/// couple of milliseconds between the first and the last delivery. Lanes
/// that are not full while work is queued, or queues that run dry, point at
/// where the pipeline starves.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Occupancy {
    pub samples: u64,
    /// Mean sends in flight over all lanes ÷ their summed `max_in_flight`.
    pub lanes_busy: f64,
    /// Share of samples in which some lane had an empty queue.
    pub queue_empty: f64,
    /// Mean deliveries waiting in the lanes' queues, all lanes together.
    pub mean_queued: f64,
    /// Mean events read and not yet final.
    pub mean_events_in_flight: f64,
    /// Share of samples in which the memory budget held the source back.
    pub source_paused: f64,
}

/// Running sums behind [`Occupancy`].
#[derive(Default)]
struct OccupancySums {
    samples: u64,
    in_flight: i64,
    empty: u64,
    queued: i64,
    events: i64,
    paused: u64,
}

impl OccupancySums {
    fn finish(&self, capacity: usize) -> Occupancy {
        if self.samples == 0 {
            return Occupancy::default();
        }
        let n = self.samples as f64;
        Occupancy {
            samples: self.samples,
            lanes_busy: self.in_flight as f64 / n / capacity.max(1) as f64,
            queue_empty: self.empty as f64 / n,
            mean_queued: self.queued as f64 / n,
            mean_events_in_flight: self.events as f64 / n,
            source_paused: self.paused as f64 / n,
        }
    }
}

/// Start the dispatcher with `config`, wait until its endpoints have
/// `expected` deliveries in all, then shut it down. `delivered` follows
/// the count while it runs. Fails if anything is dead-lettered.
pub async fn run(
    config: Config,
    expected: u64,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<DispatcherRun> {
    let ids: Vec<String> = config.endpoints.iter().map(|e| e.id.clone()).collect();
    let capacity: usize = config.endpoints.iter().map(|e| e.max_in_flight).sum();
    let started = Instant::now();
    let running = dispatcher::app::start(config)
        .await
        .context("starting the dispatcher")?;
    let metrics = running.metrics.clone();
    let lanes: Vec<_> = ids
        .iter()
        .map(|id| {
            metrics
                .endpoint_counters(id)
                .with_context(|| format!("endpoint {id} has no lane"))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut first_delivery = None;
    let mut sums = OccupancySums::default();
    let elapsed = loop {
        let n: u64 = lanes.iter().map(|c| c.delivered.get()).sum();
        delivered.store(n, Ordering::Relaxed);
        if n > 0 && first_delivery.is_none() {
            first_delivery = Some(started.elapsed());
        }
        if n >= expected {
            break started.elapsed();
        }
        if n > 0 {
            sums.samples += 1;
            let mut any_empty = false;
            for lane in &lanes {
                sums.in_flight += lane.in_flight.get();
                let q = lane.queue_depth.get();
                sums.queued += q;
                any_empty |= q <= 0;
            }
            sums.empty += u64::from(any_empty);
            sums.events += metrics.events_in_flight.get();
            sums.paused += u64::from(metrics.source_paused.get() > 0);
        }
        let lost: u64 = lanes.iter().map(|c| c.dead_lettered.get()).sum();
        if lost > 0 {
            bail!("{lost} deliveries were dead-lettered; the sink accepts everything, so something is wrong (run with RUST_LOG=warn)");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    running
        .shutdown()
        .await
        .context("shutting the dispatcher down")?;
    Ok(DispatcherRun {
        elapsed,
        first_delivery: first_delivery.unwrap_or(elapsed),
        occupancy: sums.finish(capacity),
    })
}
