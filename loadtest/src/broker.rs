//! The Kafka side of a run: the broker (the embedded one, or brokers given
//! on the command line), the run's own topics, and checks of what the broker
//! kept.
//!
//! Every run uses fresh topic and group names, so that runs against a shared
//! broker never read each other's records or offsets.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dispatcher::embedded::EmbeddedKafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Serialize;
use transports::DeliveryId;

/// The OS name of the mock cluster's thread (librdkafka names it so).
const EMBEDDED_THREAD: &str = "rdk:mock";

/// The topics of one run.
#[derive(Debug, Clone)]
pub struct Topics {
    pub source: String,
    pub dead_letter: String,
    pub retry: String,
}

impl Topics {
    /// `loadtest.<run>`, `loadtest.<run>.dlq`, `loadtest.<run>.retry`.
    pub fn for_run(run_id: &str) -> Topics {
        Topics {
            source: format!("loadtest.{run_id}"),
            dead_letter: format!("loadtest.{run_id}.dlq"),
            retry: format!("loadtest.{run_id}.retry"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.source, &self.dead_letter, &self.retry]
    }
}

/// A broker the run can use. The embedded one lives as long as this value:
/// in the load tester's process, so it survives the dispatcher's death.
pub struct Broker {
    embedded: Option<EmbeddedKafka>,
    bootstrap: String,
}

impl Broker {
    /// Start the embedded Kafka with the run's topics, or create them on
    /// `brokers`.
    pub async fn start(
        brokers: Option<&str>,
        topics: &Topics,
        partitions: i32,
    ) -> anyhow::Result<Broker> {
        match brokers {
            None => {
                let embedded = EmbeddedKafka::start(&topics.all(), partitions)?;
                let bootstrap = embedded.bootstrap().to_owned();
                Ok(Broker {
                    embedded: Some(embedded),
                    bootstrap,
                })
            }
            Some(b) => {
                create_topics(b, &topics.all(), partitions).await?;
                Ok(Broker {
                    embedded: None,
                    bootstrap: b.to_owned(),
                })
            }
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The embedded broker's CPU time so far (`None` for a broker given on
    /// the command line, whose process is not ours to read): librdkafka's
    /// mock cluster serves every request on one thread, `rdk:mock`, in this
    /// process, so its time is the broker's and not the load tester's own.
    pub fn embedded_cpu(embedded: bool) -> Option<Duration> {
        if !embedded {
            return None;
        }
        crate::procstat::threads_named(EMBEDDED_THREAD)
    }

    /// Create more topics (the dispatcher's retry tiers, known once its
    /// config is): in the embedded Kafka directly, else with the admin API.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        match &self.embedded {
            Some(e) => topics
                .iter()
                .try_for_each(|t| e.create_topic(t, partitions)),
            None => create_topics(&self.bootstrap, topics, partitions).await,
        }
    }
}

/// Create `topics` with `partitions` each; topics that exist are left alone.
pub async fn create_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .with_context(|| format!("creating topics on {bootstrap}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic} on {bootstrap}: {code}"),
        }
    }
    Ok(())
}

/// Partitions of `topic`, from the broker's metadata. Blocking.
pub fn partitions_of(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a metadata client")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => bail!("topic {topic} does not exist on {bootstrap}"),
    }
}

/// Records the broker no longer holds at the start of `topic`'s partitions
/// (the sum of the low watermarks). The embedded Kafka silently drops a
/// partition's oldest records past about 5 MiB or 100,000 records: anything
/// above zero there means deliveries can be missing through no fault of the
/// dispatcher. Blocking.
pub fn dropped_records(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a watermark client")?;
    let mut dropped = 0;
    for p in 0..partitions {
        let (low, _) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic}/{p}"))?;
        dropped += low;
    }
    Ok(dropped)
}

/// What a dispatcher wrote to one of its internal topics (the spill topic),
/// read back record by record after the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Written {
    /// Records read.
    pub records: u64,
    /// Distinct delivery ids among them (`park.delivery_id`).
    pub deliveries: u64,
    /// Records the broker no longer held (low watermarks): the embedded
    /// Kafka drops a partition's oldest data past about 5 MiB.
    pub dropped: i64,
    /// Per endpoint (`park.endpoint_id`): (records, distinct deliveries).
    pub by_endpoint: BTreeMap<String, (u64, u64)>,
}

/// Read all of `topic` from the start and count its records and the
/// distinct deliveries they carry. Stops when every partition was read to
/// the high watermark it had when the read began and nothing more came for
/// a second, or when nothing came for 10 s (a broker whose watermarks lag),
/// or after `bound`. Blocking.
pub fn read_written(bootstrap: &str, topic: &str, bound: Duration) -> anyhow::Result<Written> {
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};

    let partitions = partitions_of(bootstrap, topic)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.loadtest-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating a reader of the spill topic")?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = vec![0i64; partitions as usize];
    let mut out = Written::default();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic}/{p}"))?;
        out.dropped += low;
        ends[p as usize] = high;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut positions = vec![-1i64; partitions as usize];
    let mut seen: HashSet<DeliveryId> = HashSet::new();
    let started = Instant::now();
    let mut last_message = Instant::now();
    loop {
        let at_end = positions
            .iter()
            .zip(&ends)
            .all(|(pos, end)| *pos + 1 >= *end);
        let idle = last_message.elapsed();
        if (at_end && idle >= Duration::from_secs(1))
            || idle >= Duration::from_secs(10)
            || started.elapsed() >= bound
        {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(msg) = msg else { continue };
        last_message = Instant::now();
        if let Some(p) = positions.get_mut(msg.partition() as usize) {
            *p = (*p).max(msg.offset());
        }
        out.records += 1;
        let (mut id, mut endpoint) = (None, None);
        if let Some(headers) = msg.headers() {
            for h in headers.iter() {
                match (h.key, h.value) {
                    ("park.delivery_id", Some(v)) => {
                        id = std::str::from_utf8(v).ok().and_then(DeliveryId::parse)
                    }
                    ("park.endpoint_id", Some(v)) => {
                        endpoint = std::str::from_utf8(v).ok().map(str::to_owned)
                    }
                    _ => {}
                }
            }
        }
        let entry = out
            .by_endpoint
            .entry(endpoint.unwrap_or_else(|| "?".into()))
            .or_default();
        entry.0 += 1;
        if let Some(id) = id {
            if seen.insert(id) {
                entry.1 += 1;
                out.deliveries += 1;
            }
        }
    }
    Ok(out)
}
